"""Keep secrets out of the files a run leaves behind (config.yaml, command.txt, run.json, model cards).

Run folders and model cards get shared, uploaded with the model, pasted into issues. A Hugging Face
token passed on the command line, or a config value that happens to contain one, must not travel with
them. Pure functions: the caller passes what to write and (for tests) the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

# Environment variable names whose values are secrets: a name part (split on "_") that says so.
SECRET_NAME_PARTS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "KEY", "CREDENTIALS", "AUTH"}
# Values shorter than this are not treated as secrets (e.g. FOO_TOKEN=1): redacting "true" or a digit
# everywhere would mangle the files and protect nothing.
MIN_SECRET_LENGTH = 8

# Token formats recognised wherever they appear, whatever variable (if any) they came from.
TOKEN_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),  # Hugging Face access tokens
    re.compile(r"\bapi_org_[A-Za-z0-9]{16,}"),  # Hugging Face organisation API tokens (legacy)
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),  # OpenAI-style API keys
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
]
# user:password@ in URLs (a hub mirror or a proxy given as a data spec or model id)
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def is_secret_name(name: str) -> bool:
    parts = name.upper().split("_")
    joined = {a + b for a, b in zip(parts, parts[1:])}  # API_KEY -> APIKEY
    return bool(SECRET_NAME_PARTS & (set(parts) | joined))


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """value -> variable name, for every environment variable that holds a secret."""
    environ = os.environ if environ is None else environ
    return {
        value: name
        for name, value in environ.items()
        if is_secret_name(name) and len(value.strip()) >= MIN_SECRET_LENGTH
    }


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with secret environment values, known token formats and URL passwords replaced.

    A value from the environment becomes `<redacted:NAME>` so a reader knows which variable it was."""
    # longest first, so a secret that contains another is replaced whole
    for value, name in sorted(secret_values(environ).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, f"<redacted:{name}>")
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", text)


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`redact_text` on every string inside nested dicts, lists and tuples (keys included); other
    values unchanged. Returns a new object; the input is not modified."""
    if isinstance(obj, str):
        return redact_text(obj, environ)
    if isinstance(obj, Mapping):
        return {redact(k, environ) if isinstance(k, str) else k: redact(v, environ) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, environ) for v in obj)
    return obj
