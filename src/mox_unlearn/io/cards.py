"""Model cards (README.md with a YAML header and a table of the run's settings) for every folder written."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path


def _cell(value: object) -> str:
    """Render a value for one markdown table cell (pipes and newlines would break the table)."""
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_model_card(out_dir: Path, *, title: str, fields: Mapping[str, object], body: str = "") -> None:
    """Write `out_dir/README.md` recording how the model was made, so the folder explains itself.

    `fields` become a key/value table (method, alpha, source models, data, ...); the package version
    and the UTC date are added unless the caller already gave them.
    """
    from mox_unlearn import __version__
    from mox_unlearn.redact import redact

    rows = redact(dict(fields))  # cards travel with the model: no tokens from paths or settings
    rows.setdefault("mox-unlearn version", __version__)
    rows.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- mox-unlearn",
        "- unlearning",
        "---",
        "",
        f"# {title}",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows.items()),
        "",
    ]
    if body:
        lines += [body.rstrip(), ""]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "README.md").write_text("\n".join(lines), encoding="utf-8")
