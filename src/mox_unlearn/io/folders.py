"""Ordinary Hugging Face model folders: the file names, the auxiliary files (config, tokenizer, ...) and
their copy, refusing links that point outside the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mox_unlearn.errors import MoxError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# Files that make an HF folder loadable and usable besides the weights; copied when present.
AUX_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_aux_files(src: Path, dst: Path) -> None:
    """Copy the config, generation config and tokenizer files that exist in `src` into `dst`.

    Weights and the model card are deliberately not copied: the caller writes new ones. A file that
    is a symlink to somewhere outside `src` is refused (see `_check_link`), so a planted link cannot
    make us copy e.g. ~/.ssh/id_rsa into a model folder that gets shared.
    """
    check_aux_files(src)  # all of them before the first copy: a refusal leaves nothing half-copied
    dst.mkdir(parents=True, exist_ok=True)
    for name in AUX_FILES:
        path = Path(src) / name
        if path.is_file():
            shutil.copy2(path, dst / name)


def check_aux_files(src: Path) -> None:
    """Refuse the folder if any file `copy_aux_files` would copy is a symlink out of it (see `_check_link`).

    Callers run it before slow work, so the refusal comes first rather than after an extrapolation.
    """
    for name in AUX_FILES:
        path = Path(src) / name
        if path.is_symlink():
            _check_link(path, Path(src))


def _check_link(path: Path, folder: Path) -> None:
    """Refuse a symlink whose target lies outside `folder`.

    The one exception is the Hugging Face cache layout, where `snapshots/<rev>/config.json` links to
    `../../blobs/<hash>` of the same repository: those links are how every cached model looks.
    """
    target = path.resolve()
    root = folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    if not any(target.is_relative_to(a) for a in allowed):
        raise MoxError(f"{path} is a symlink to {target}, outside the model folder {folder}; refusing to copy it")
