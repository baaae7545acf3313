"""`--push-to-hub REPO_ID`: upload a finished model folder, with its card, to the Hugging Face Hub.

The token comes from where huggingface_hub looks (HF_TOKEN, or the file `hf auth login` writes) and is
handed to the Hub client only: it is never written into a run folder or a card (they are redacted
anyway). Repositories are created private unless asked otherwise. `check_can_push` runs before any
training, so a missing token or an offline setting is one line at once rather than after the run; the
upload itself happens only after the folder was written whole.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from mox_unlearn.errors import MoxError, first_line

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def check_can_push(repo_id: str) -> None:
    """A valid repo id, the Hub allowed (not offline) and a token present; else a one-line error."""
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id:
        raise MoxError(f"--push-to-hub {repo_id!r} is not a Hub repo id (NAME or OWNER/NAME)")
    offline = [v for v in _OFFLINE if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise MoxError(
            f"--push-to-hub: {offline[0]} is set, so nothing can be uploaded; unset it or drop --push-to-hub"
        )
    if not _token():
        raise MoxError(
            "--push-to-hub needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN"
        )


def upload_files(folder: Path) -> list[str]:
    """What an upload of `folder` sends: every file in it, relative, sorted; nothing hidden (temporary
    folders of an interrupted write start with a dot) and no lock file."""
    folder = Path(folder)
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def push_folder(folder: Path, repo_id: str, *, private: bool = True, api=None) -> str:
    """Create `repo_id` (private unless `private` is False; kept as it is if it exists) and upload `folder`.
    Returns the repo's URL. `api` is an HfApi (tests pass a stand-in)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=_token())
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MoxError(f"{folder} is not a model folder (no config.json): nothing pushed")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=upload_files(folder),
            commit_message=f"Upload {folder.name} with mox-unlearn",
        )
    except Exception as e:  # network, permissions, quota: the model stays where it is
        raise MoxError(
            f"pushing {folder} to {repo_id} failed ({type(e).__name__}: {first_line(e)}); the model is kept there: "
            f"upload it later with `{shlex.join(['hf', 'upload', repo_id, str(folder)])}{' --private' if private else ''}`"
        ) from None
    return str(url)
