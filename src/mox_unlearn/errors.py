"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class MoxError(Exception):
    """A user-facing error: bad input, missing file, mismatched models, unknown name.

    The message must fit on one line and say what is wrong and where (file, line, key).
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (its type name when it has none), for a one-line message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException) -> str:
    """An exception's whole (possibly multi-line) text collapsed onto one line, after its type."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
