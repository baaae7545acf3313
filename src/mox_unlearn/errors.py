"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class MoxError(Exception):
    """A user-facing error: bad input, missing file, mismatched models, unknown name.

    The message must fit on one line and say what is wrong and where (file, line, key).
    """
