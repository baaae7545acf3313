"""Model cards (README.md) for every folder written: Hub metadata in the YAML header, the run's settings below.

The header is `huggingface_hub.ModelCardData`: `library_name`, `pipeline_tag: text-generation`, tags,
and where known `base_model` (+ `base_model_relation`), `license` and `datasets` (see `source_metadata`),
plus a `model-index` with the TOFU / MUSE summary once `mox report --card` attaches `mox eval` results.
Local paths never appear as such: the callers write them relative to the run folder (io/portable.py),
and a `base_model` is only ever a hub id.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mox_unlearn.errors import MoxError
from mox_unlearn.io.portable import HUB_ID

TAGS = ["mox-unlearn", "unlearning"]


def _cell(value: object) -> str:
    """Render a value for one markdown table cell (pipes and newlines would break the table)."""
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def is_hub_id(name: str | None) -> bool:
    """A hub repo id (HUB_ID), never a path that exists here."""
    return bool(name) and not Path(name).expanduser().exists() and bool(HUB_ID.match(name))


def hub_datasets(specs: Sequence[str | None]) -> list[str]:
    """The hub dataset ids of `hf:<id>[:<config>][:<split>]` data specs, in order, once each."""
    out: list[str] = []
    for spec in specs:
        if isinstance(spec, str) and spec.startswith("hf:"):
            repo = spec[3:].split(":")[0]
            if repo and repo not in out:
                out.append(repo)
    return out


def source_metadata(source: str | None) -> dict[str, Any]:
    """`base_model` and `license` for a model made from `source`: a hub id is the base model itself; a local
    folder passes on what its own card (or config.json) records. Empty where nothing is known."""
    if not source:
        return {}
    if is_hub_id(source):
        return {"base_model": source}
    folder = Path(source).expanduser()
    meta: dict[str, Any] = {}
    card = folder / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(card).data
        except Exception:  # a README that is not a card (no or broken YAML header): nothing recorded
            data = None
        if data is not None:
            base = getattr(data, "base_model", None)
            if isinstance(base, str) and is_hub_id(base):
                meta["base_model"] = base
            if getattr(data, "license", None):
                meta["license"] = data.license
    config = folder / "config.json"
    if "license" not in meta and config.is_file():
        try:
            license_ = json.loads(config.read_text()).get("license")
        except (OSError, ValueError, AttributeError):
            license_ = None
        if isinstance(license_, str) and license_:
            meta["license"] = license_
    return meta


def write_model_card(
    out_dir: Path,
    *,
    title: str,
    fields: Mapping[str, object],
    body: str = "",
    source: str | None = None,
    relation: str = "finetune",
    datasets: Sequence[str | None] = (),
    tags: Sequence[str] = (),
    library: str = "transformers",
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write `out_dir/README.md` recording how the model was made, so the folder explains itself.

    Args:
        out_dir: the folder (written into as it is: callers pass their temporary folder).
        title: the heading.
        fields: a key/value table (method, alpha, source models, data, ...); the package version and the UTC
            date are added unless given. Secrets are redacted; paths must already be portable.
        body: text after the table.
        source: the model this one was made from (hub id or local folder), for `base_model` / `license`.
        relation: `base_model_relation` (finetune, adapter, merge, quantized) where a base model is known.
        datasets: data specs; the `hf:` ones become the card's `datasets`.
        tags: tags besides mox-unlearn and unlearning (e.g. the method).
        library: `library_name` (transformers, or peft for an adapter folder).
        metadata: header fields that win over the derived ones (e.g. `base_model` of an imported model).
    """
    from huggingface_hub import ModelCardData

    from mox_unlearn import __version__
    from mox_unlearn.redact import redact

    rows = redact(dict(fields))  # cards travel with the model: no tokens from paths or settings
    rows.setdefault("mox-unlearn version", __version__)
    rows.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    meta: dict[str, Any] = {**source_metadata(source), **(metadata or {})}
    if meta.get("base_model"):
        meta.setdefault("base_model_relation", relation)
    if hub_datasets(datasets):
        meta["datasets"] = hub_datasets(datasets)
    data = ModelCardData(
        library_name=library,
        pipeline_tag="text-generation",
        tags=[*TAGS, *(t for t in tags if t not in TAGS)],
        **redact(meta),
    )
    lines = [
        "---",
        data.to_yaml(),
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


# `mox eval` summary keys and how the Hub's model-index names them (metric type, display name)
_INDEX_METRICS = {
    "tofu": {
        "forget_quality": "Forget Quality",
        "model_utility": "Model Utility",
        "forget_rouge": "Forget ROUGE-L recall",
        "retain_rouge": "Retain ROUGE-L recall",
        "privleak": "PrivLeak",
    },
    "muse": {
        "verbmem_f": "VerbMem forget",
        "knowmem_f": "KnowMem forget",
        "knowmem_r": "KnowMem retain",
        "privleak": "PrivLeak",
    },
}
_DATASETS = {
    "tofu": ("locuslab/TOFU", "TOFU"),
    "muse": ("muse-bench/MUSE-News", "MUSE-News"),
    "muse-books": ("muse-bench/MUSE-Books", "MUSE-Books"),
}
_INDEX_METRICS["muse-books"] = _INDEX_METRICS["muse"]


def eval_results(results: Sequence[Mapping[str, Any]]) -> list:
    """huggingface_hub EvalResults (the card's model-index) from `mox eval` result dicts: one per summary
    metric that has a value; the dataset is the benchmark's hub id, its name says split and --limit."""
    from huggingface_hub import EvalResult

    out = []
    for result in results:
        bench = result.get("benchmark")
        if bench not in _INDEX_METRICS or not isinstance(result.get("summary"), dict):
            raise MoxError("not a `mox eval` result (TOFU or MUSE): no benchmark / summary")
        dataset, name = _DATASETS[bench]
        split = result.get("forget_split")
        name = f"{name} {split}" if split else name
        if result.get("limit"):
            name += f" (first {result['limit']} items)"
        for key, label in _INDEX_METRICS[bench].items():
            value = result["summary"].get(key)
            if isinstance(value, (int, float)):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        dataset_type=dataset,
                        dataset_name=name,
                        dataset_split=split,
                        metric_type=key,
                        metric_name=label,
                        metric_value=float(value),
                    )
                )
    return out


def attach_results(model_dir: Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Rewrite `model_dir/README.md` (atomically) with a model-index of `results`; the rest of the card stays."""
    from huggingface_hub import ModelCard

    from mox_unlearn.io.atomic import write_text_atomic

    card_path = Path(model_dir) / "README.md"
    if not card_path.is_file():
        raise MoxError(f"{card_path} not found: --card takes a model folder that mox wrote (it has a card)")
    card = ModelCard.load(card_path)
    card.data.eval_results = eval_results(results)
    card.data.model_name = card.data.model_name or Path(model_dir).resolve().name
    write_text_atomic(card_path, str(card))
    return card_path
