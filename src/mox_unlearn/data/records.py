"""Reading and validating forget / retain / evaluation records.

Every set the library trains or evaluates on goes through `load_records`, so a malformed record
fails here, before any model is loaded, with a one-line message that names the file and the
line (JSON Lines, 1-based: ``forget.jsonl:7``) or the index (JSON / Hugging Face, 0-based:
``retain.json[3]``).

Two record kinds exist:

* ``qa``: objects with non-empty string ``question`` and ``answer`` (extra keys, such as TOFU's
  ``paraphrased_answer`` or ``perturbed_answer`` lists, are kept untouched);
* ``text``: raw documents, given as objects with a ``text`` key or as plain strings
  (a plain string ``s`` becomes ``{"text": s}``). Blank documents are kept with a warning
  (real corpora have them); a set of only blank documents is empty.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MoxError, one_line

logger = logging.getLogger(__name__)

KINDS = ("qa", "text")
REQUIRED_KEYS = {"qa": ("question", "answer"), "text": ("text",)}
ACCEPTED_SPECS = ".jsonl, .json, .txt or hf:<id>[:<config>][:<split>]"

# (location, raw item): the location is the prefix of every message about that item.
Located = list[tuple[str, Any]]


@dataclass(frozen=True)
class RecordSet:
    """A validated list of records of one kind, with the spec it came from (for messages)."""

    kind: str
    records: list[dict]
    source: str

    def __len__(self) -> int:
        return len(self.records)


def load_records(spec: str, *, name: str = "data", kind: str | None = None) -> RecordSet:
    """Read `spec` (a .jsonl / .json / .txt file or ``hf:<id>[:<config>][:<split>]``) and validate it.

    `name` ("forget", "retain", ...) only appears in messages. `kind` forces "qa" or "text";
    without it the kind is detected from the first record and every record must agree.
    """
    if kind is not None and kind not in KINDS:
        raise MoxError(f"unknown record kind {kind!r} for the {name} set; expected one of {', '.join(KINDS)}")
    spec = str(spec)
    located = _read_hf(spec) if spec.startswith("hf:") else _read_file(spec, name)
    if not located:
        raise MoxError(f"{name} set is empty: {spec}")
    kind = kind or _detect_kind(*located[0])
    records = [_validate(loc, item, kind) for loc, item in located]
    if kind == "text":
        _check_blank_texts(located, records, name, spec)
    return RecordSet(kind=kind, records=records, source=spec)


def _check_blank_texts(located: Located, records: list[dict], name: str, spec: str) -> None:
    """Blank documents are kept (with a warning) rather than rejected.

    Public corpora contain them (MUSE-News raw/forget.json has one empty string among 889), and
    keeping them preserves the source's indices; they yield no training chunk in `encode_texts`.
    A set with nothing but blank documents is still an empty set.
    """
    blank = [loc for (loc, _), r in zip(located, records) if not r["text"].strip()]
    if len(blank) == len(records):
        raise MoxError(f"{name} set is empty: {spec} (every text is blank)")
    if blank:
        logger.warning("%s: %d blank text record(s) kept, they train nothing (first: %s)", spec, len(blank), blank[0])


# ---------------------------------------------------------------------------------------------
# Readers: each returns [(location, raw item)] and raises MoxError on unreadable input.


def _read_file(spec: str, name: str) -> Located:
    """Dispatch on the extension; a missing file is reported with the set's name."""
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        raise MoxError(
            f"{name} file {spec} has an unknown extension {suffix or '(none)'!r}; accepted: {ACCEPTED_SPECS}"
        )
    content = read_text(spec, name)
    if suffix == ".jsonl":
        return _parse_jsonl(content, spec)
    if suffix == ".json":
        return _parse_json(content, spec)
    # .txt: the whole file is one document; whitespace only means an empty set.
    return [(spec, content)] if content.strip() else []


def read_text(spec: str | Path, name: str) -> str:
    """A text file's content; a missing, non-file or unreadable path is a one-line MoxError naming `name`."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise MoxError(f"{name} file not found: {spec}")
    if not path.is_file():
        raise MoxError(f"{name} path is not a file: {spec}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MoxError(f"cannot read {name} file {spec}: {one_line(e)}") from e
    try:
        # utf-8-sig: tolerate a byte-order mark written by some editors.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise MoxError(f"{spec}:{line}: {name} file is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None


def read_json(spec: str | Path, name: str) -> Any:
    """A JSON file's value (result files, MUSE files); invalid JSON names the file and line."""
    return _loads(read_text(spec, name), spec)


def _loads(text: str, where: str, lineno: int | None = None) -> Any:
    """json.loads with every failure as a one-line MoxError at `where`:line (the given line, for JSONL).

    Nesting deep enough to exhaust the parser's recursion is reported like any other invalid JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MoxError(f"{where}:{lineno or e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise MoxError(f"{where}:{lineno or 1}: invalid JSON: nested too deeply") from None


def _parse_jsonl(content: str, spec: str) -> Located:
    """One JSON value a line; blank lines are skipped but still counted for line numbers."""
    out: Located = []
    # "\n" only: str.splitlines() also splits at U+2028, U+0085, ... which JSON strings may hold
    # unescaped, and would then break a valid record and shift every line number after it.
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        out.append((f"{spec}:{lineno}", _loads(line, spec, lineno)))
    return out


def _parse_json(content: str, spec: str) -> Located:
    """A list of records, or an object holding exactly one list (``{"data": [...]}``)."""
    data = _loads(content, spec)
    prefix = spec
    if isinstance(data, dict):
        record_keys = sorted({k for keys in REQUIRED_KEYS.values() for k in keys} & data.keys())
        if record_keys:  # e.g. one TOFU record, whose perturbed_answer list would otherwise become the set
            raise MoxError(
                f"{spec}: one record (keys {', '.join(record_keys)}), not a set of records; wrap it in a JSON "
                "list, or write one record per line as JSONL"
            )
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise MoxError(
                f"{spec}: a JSON object must hold exactly one list of records, "
                f"found {len(lists)} list-valued keys{(' (' + ', '.join(map(repr, lists)) + ')') if lists else ''}"
            )
        prefix = f"{spec}[{json.dumps(lists[0])}]"
        data = data[lists[0]]
    if not isinstance(data, list):
        raise MoxError(f"{spec}: expected a JSON list of records, got {_type_name(data)}")
    return [(f"{prefix}[{i}]", item) for i, item in enumerate(data)]


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split ``hf:<id>[:<config>][:<split>]`` into (id, config or None, split, default "train")."""
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise MoxError(f"bad dataset spec {spec!r}; expected hf:<id>[:<config>][:<split>]")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return parts[0], config, split


def _read_hf(spec: str) -> Located:
    """Load one split with `datasets`; any failure becomes a one-line MoxError naming the spec."""
    from ..io.loading import check_hub_reachable

    dataset_id, config, split = parse_hf_spec(spec)
    if not _local_dataset(dataset_id):
        check_hub_reachable(dataset_id, repo_type="dataset")
    try:
        import datasets

        rows = datasets.load_dataset(dataset_id, config, split=split).to_list()
    except Exception as e:  # datasets raises many types; the user needs the spec and the reason
        raise MoxError(f"cannot load dataset {spec}: {one_line(e)}") from e
    return [(f"{spec}[{i}]", row) for i, row in enumerate(rows)]


def _local_dataset(dataset_id: str) -> bool:
    """A folder or file of data, or a name without a namespace (datasets' own builders: json, csv, parquet...):
    not asked of the hub first."""
    return "/" not in dataset_id or Path(dataset_id).expanduser().exists()


# ---------------------------------------------------------------------------------------------
# Validation


def _detect_kind(loc: str, item: Any) -> str:
    """Kind from the first record; a "question" or "answer" key means QA (so a missing pair is named)."""
    if isinstance(item, str):
        return "text"
    if isinstance(item, dict):
        if "question" in item or "answer" in item:
            return "qa"
        if "text" in item:
            return "text"
        keys = ", ".join(map(repr, list(item)[:8])) or "none"
        raise MoxError(
            f'{loc}: cannot tell the record kind: expected "question" and "answer" keys (QA) '
            f'or a "text" key (raw text), got keys {keys}'
        )
    raise MoxError(f"{loc}: record must be a JSON object or a string, got {_type_name(item)}")


def _validate(loc: str, item: Any, kind: str) -> dict:
    """Check one record of `kind` and return it as a dict (a copy; extra keys kept)."""
    if kind == "text" and isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        expected = "a JSON object" if kind == "qa" else "a JSON object or a string"
        raise MoxError(f"{loc}: record must be {expected}, got {_type_name(item)}")
    for key in REQUIRED_KEYS[kind]:
        if key not in item:
            raise MoxError(f'{loc}: record has no "{key}" key')
        check_text(loc, key, item[key], allow_blank=(kind == "text"))
    return dict(item)


def check_text(loc: str, key: str, value: Any, *, allow_blank: bool = False) -> None:
    """Raise unless `value` is a string with something besides whitespace (or any string if allowed)."""
    if not isinstance(value, str):
        raise MoxError(f'{loc}: "{key}" must be a non-empty string, got {_type_name(value)}')
    if not allow_blank and not value.strip():
        raise MoxError(f'{loc}: "{key}" must be a non-empty string, got an empty string')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800" escapes decode to lone surrogates; tokenizers reject them
        raise MoxError(f'{loc}: "{key}" is not valid Unicode (lone surrogate at character {e.start})') from None


def _type_name(value: Any) -> str:
    """JSON-flavoured type names for messages (object, list, null rather than dict, NoneType)."""
    names = {dict: "object", list: "list", type(None): "null", bool: "bool", str: "str"}
    return names.get(type(value), type(value).__name__)


def record_key(record: dict, kind: str) -> tuple:
    """What makes two records the same item: (question, answer) for QA, the text for raw text."""
    return tuple(" ".join(record[k].split()) for k in REQUIRED_KEYS[kind])


def check_overlap(forget: RecordSet, retain: RecordSet | None) -> str | None:
    """Warn (and return the message) when forget records also appear in the retain set.

    Training then pulls the same items both ways (forget them, keep them), which is almost always a
    mistake in the data specs, e.g. the same file given twice; the run still continues.
    """
    if retain is None or retain.kind != forget.kind:
        return None
    kept = {record_key(r, retain.kind) for r in retain.records}
    shared = sum(record_key(r, forget.kind) in kept for r in forget.records)
    if not shared:
        return None
    scope = "every forget record is" if shared == len(forget) else f"{shared} of {len(forget)} forget records are"
    message = (
        f"{scope} also in the retain set {retain.source} (forget set {forget.source}): training pulls them both ways"
    )
    logger.warning(message)
    return message


def texts_of(rs: RecordSet) -> list[str]:
    """The raw documents of a text RecordSet."""
    return [r["text"] for r in rs.records]


__all__ = [
    "RecordSet",
    "load_records",
    "parse_hf_spec",
    "check_text",
    "check_overlap",
    "texts_of",
    "read_text",
    "read_json",
]
