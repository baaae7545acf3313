"""Tables (Markdown, CSV, JSON) and plots (PNG) from result rows: the demo's or any `mox eval` files.

A row is one evaluated model: name, method, alpha (or None) and the TOFU summary numbers
forget_quality, model_utility, forget_rouge, retain_rouge (any may be None when not measured).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mox_unlearn.data import read_json
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.benchmarks import BENCHMARKS, METRICS
from mox_unlearn.io.atomic import staged_files, write_text_atomic

COLUMNS = ("name", "method", "alpha", *BENCHMARKS["tofu"].columns)
HEADERS = {
    "name": "Model",
    "method": "Method",
    "alpha": "α",
    **{key: metric.header for key, metric in METRICS.items()},
    "rule": "Rule",
    "picked": "Picked setting",
}


def row_from_eval(result: dict, name: str, method: str | None = None, alpha: float | None = None) -> dict:
    """A row from a `mox eval --benchmark tofu` result."""
    s = result.get("summary", {})
    return {"name": name, "method": method or name, "alpha": alpha, **{k: s.get(k) for k in COLUMNS[3:]}}


def card_method(model: Any) -> tuple[str | None, float | None]:
    """(method, α) of an evaluated model as its mox model card records them (`| method | ... |`, `| alpha | ...
    |`), or None where the folder has no such card (a hub id, a model made elsewhere)."""
    card = Path(str(model)) / "README.md" if model else None
    if card is None or not card.is_file():
        return None, None
    fields = {}
    for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] in ("method", "alpha"):
            fields[cells[0]] = cells[1]
    method = fields.get("method")
    if method and method.startswith("MOX extrapolation"):  # a `mox extrapolate` output
        method = "mox"
    try:
        alpha = float(fields["alpha"]) if "alpha" in fields else None
    except ValueError:
        alpha = None
    return method, alpha


def row_notes(rows: Sequence[dict]) -> list[str]:
    """What a reader of the table must know: rows evaluated on part of the data, rows the FQ/MU plot leaves
    out (no FQ: evaluated without --retain-result)."""
    notes = []
    limited = [f"{r['name']} (first {r['limit']})" for r in rows if r.get("limit")]
    if limited:
        notes.append(f"Evaluated with --limit, on the first items of each split only: {', '.join(limited)}.")
    if limited and len(limited) < len(rows):
        notes.append("Rows evaluated on different amounts of data are not comparable.")
    missing = [r["name"] for r in rows if r.get("forget_quality") is None or r.get("model_utility") is None]
    if missing:
        notes.append(f"Not in the FQ/MU plot (no FQ or MU: evaluate with --retain-result): {', '.join(missing)}.")
    return notes


def load_rows(files: Sequence[str | Path], harness: list | None = None) -> list[dict]:
    """Rows from demo results.json files (a list of rows under "rows") and/or `mox eval` result files.
    With a `harness` list, `mox eval --benchmark lm-eval` results go there as (name, result) instead (their
    columns are tasks, see harness_table), and no TOFU row at all is then not an error."""
    rows: list[dict] = []
    for f in files:
        p = Path(f)
        data = read_json(p, "result")
        if harness is not None and is_harness_result(data):
            harness.append((p.stem, data))
        elif is_frontier_result(data):
            raise MoxError(f"{p}: a frontier.json, which `mox report` merges only with other frontier.json files")
        elif isinstance(data, dict) and isinstance(data.get("rows"), list):
            rows.extend(check_row(row, f"{p}: rows[{i}]") for i, row in enumerate(data["rows"]))
        elif isinstance(data, dict) and data.get("benchmark") == "tofu" and isinstance(data.get("summary"), dict):
            method, alpha = card_method(data.get("model"))
            row = row_from_eval(data, name=p.stem, method=method, alpha=alpha)
            if method is None:
                row["method"] = None  # not known: "–" rather than the file name
            rows.append(check_row({**row, "limit": data.get("limit")}, f"{p}: summary"))
        else:
            raise MoxError(f"{p}: neither a demo results.json nor a `mox eval --benchmark tofu` result")
    if not rows and not harness:
        raise MoxError("no result rows to report")
    return rows


def check_row(row: Any, where: str) -> dict:
    """A result row as the tables and plots need it: an object with a text name (and method), and a number
    or null for α and every metric column. A row of another shape is one line naming it, not a table of
    text where numbers belong."""
    if not isinstance(row, dict):
        raise MoxError(f"{where}: a row must be an object, got {type(row).__name__}")
    if not isinstance(row.get("name"), str):
        raise MoxError(f'{where}: "name" must be text, got {row.get("name")!r}')
    if row.get("method") is not None and not isinstance(row["method"], str):
        raise MoxError(f'{where}: "method" must be text, got {row["method"]!r}')
    for key in COLUMNS[2:]:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise MoxError(f'{where}: "{key}" must be a number or null, got {value!r}')
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[dict], extra: Sequence[str] = ()) -> str:
    """The rows under COLUMNS (plus the `extra` columns, e.g. the tuned table's rule and picked setting)."""
    columns = (*COLUMNS, *extra)
    lines = ["| " + " | ".join(HEADERS[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: Sequence[dict], extra: Sequence[str] = ()) -> str:
    columns = (*COLUMNS, *extra)
    cells = [[HEADERS[c] for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells)


SECTION_COLUMNS = ("rule", "picked")  # the extra columns of a results.md section (tuned table)


def report_files(out: Path) -> list[Path]:
    """Every file `write_report` may write into `out`."""
    return [out / name for name in ("results.json", "results.csv", "results.md", "fq_mu.png", "alpha_sweep.png")]


def write_report(
    rows: Sequence[dict],
    out: Path,
    *,
    title: str = "Results",
    extra: dict | None = None,
    note: str = "",
    sections: Sequence[tuple[str, str, Sequence[dict]]] = (),
) -> list[Path]:
    """results.json / results.csv / results.md (with `note` under the title) plus fq_mu.png and (with MOX α
    rows) alpha_sweep.png. Each (heading, note, rows) of `sections` follows the main table in results.md
    (the rows with their rule and picked setting; a note alone where there are no rows)."""
    with staged_files(out) as stage:  # all of them or none (a stop or a full disk mid-way)
        stage.joinpath("results.json").write_text(
            json.dumps({"rows": list(rows), **(extra or {})}, indent=1) + "\n", encoding="utf-8"
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        stage.joinpath("results.csv").write_text(buf.getvalue(), encoding="utf-8")
        notes = "".join(f"\n{n}\n" for n in row_notes(rows))
        md = f"# {title}\n\n" + (f"{note}\n\n" if note else "") + f"{markdown_table(rows)}\n{notes}"
        for heading, text, section in sections:
            md += f"\n## {heading}\n\n{text}\n" + (f"\n{markdown_table(section, SECTION_COLUMNS)}\n" if section else "")
        stage.joinpath("results.md").write_text(md, encoding="utf-8")
        plot_fq_mu(rows, stage / "fq_mu.png")
        plot_alpha_sweep(rows, stage / "alpha_sweep.png")
        names = {f.name for f in stage.iterdir()}
    return [p for p in report_files(out) if p.name in names]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fq_mu(rows: Sequence[dict], path: Path) -> Path:
    """FQ (log scale) against MU, one labelled marker per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    colors, seen = {}, set()
    shown = [r for r in rows if r.get("forget_quality") is not None and r.get("model_utility") is not None]
    for i, r in enumerate(sorted(shown, key=lambda r: (r["model_utility"], r["forget_quality"]))):
        fq, mu = max(r["forget_quality"], 1e-300), r["model_utility"]  # FQ 0 still gets a place on the log axis
        group = r.get("method") or r["name"]
        color = colors.setdefault(group, f"C{len(colors) % 10}")
        marker = "*" if group == "mox" else ("s" if r["name"] in ("original", "retrained") else "o")
        ax.scatter(
            mu, fq, marker=marker, s=90 if marker == "*" else 45, color=color, label=None if group in seen else group
        )
        seen.add(group)
        # neighbours in MU order get their labels above and below in turn, so close points do not overprint
        ax.annotate(r["name"], (mu, fq), textcoords="offset points", xytext=(5, 4 if i % 2 else -10), fontsize=7)
    if seen:
        ax.legend(fontsize=7, loc="best", title="method", title_fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("Model Utility (↑)")
    ax.set_ylabel("Forget Quality, KS p-value (↑, log)")
    ax.set_title("Forget Quality vs Model Utility")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_alpha_sweep(rows: Sequence[dict], path: Path) -> Path | None:
    """FQ and MU of the MOX rows against α (None when there are fewer than two α values)."""
    pts = sorted(
        (r["alpha"], r)
        for r in rows
        if r.get("method") == "mox"
        and isinstance(r.get("alpha"), (int, float))
        and r.get("name", "").startswith("mox-a")
    )
    if len(pts) < 2:
        return None
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(6, 4))
    alphas = [a for a, _ in pts]
    fq = [max(r.get("forget_quality") or math.nan, 1e-300) for _, r in pts]
    mu = [r.get("model_utility") for _, r in pts]
    ax1.plot(alphas, fq, "o-", color="tab:blue", label="FQ")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("α (extrapolation strength)")
    ax1.set_ylabel("Forget Quality (log)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(alphas, mu, "s--", color="tab:red", label="MU")
    ax2.set_ylabel("Model Utility", color="tab:red")
    ax1.set_title("MOX: α sweep from one θ_mem")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- generic tables (experiments)


def write_table(
    rows: Sequence[dict], folder: Path, stem: str, *, title: str, extra: dict | None = None, note: str = ""
) -> list[Path]:
    """`stem`.json (rows + extra), `stem`.csv and `stem`.md; columns are the rows' keys in first-seen order."""
    folder.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    write_text_atomic(
        folder / f"{stem}.json", json.dumps({"rows": list(rows), **(extra or {})}, indent=1, default=str) + "\n"
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(folder / f"{stem}.csv", buf.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns) + " |" for r in rows
    ]
    md = f"# {title}\n\n" + (f"{note}\n\n" if note else "") + "\n".join(lines) + "\n"
    write_text_atomic(folder / f"{stem}.md", md)
    return [folder / f"{stem}.json", folder / f"{stem}.csv", folder / f"{stem}.md"]


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] | None = None):
    """A matplotlib (figure, axes) pair on the non-interactive backend; axes always a 2-D array."""
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=size or (4.2 * ncols, 3.4 * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    """Save as PNG (tight layout, 120 dpi) and free the figure."""
    plt = _plt()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def fq_mu_axes(ax, title: str, *, legend: int | None = None) -> None:
    """The axes every FQ-vs-MU plot shares: FQ on a log scale against MU, a grid, the title, and a legend
    in font size `legend` where one is wanted."""
    ax.set_yscale("log")
    ax.set_xlabel("Model Utility (↑)")
    ax.set_ylabel("Forget Quality (↑, log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=legend)


def log_value(x: float | None) -> float:
    """A p-value for a log axis: None → NaN, 0 → 1e-300 (still drawn)."""
    return math.nan if x is None else max(float(x), 1e-300)


def is_frontier_result(data: Any) -> bool:
    """A frontier.json as `mox experiment frontier` writes it (records, picks, references, config)."""
    return isinstance(data, dict) and all(k in data for k in ("records", "selected", "reference", "config"))


def is_harness_result(data: Any) -> bool:
    return isinstance(data, dict) and data.get("benchmark") == "lm-eval" and isinstance(data.get("summary"), dict)


def harness_table(results: Sequence[tuple[str, dict]]) -> str:
    """`mox eval --benchmark lm-eval` results side by side: one row per result file, one column per task
    (its summary number, accuracy where the task has one), "–" where a file lacks the task."""
    tasks: list[str] = []
    for _, result in results:
        tasks += [t for t in result["summary"] if t not in tasks]
    lines = [
        "| result | " + " | ".join(_harness_column(t, results) for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for name, result in results:
        lines.append(f"| {name} | " + " | ".join(_fmt(result["summary"].get(t)) for t in tasks) + " |")
    limited = [name for name, r in results if r.get("limit")]
    if limited:
        lines += ["", f"Only the first --limit items of each task: {', '.join(limited)}."]
    missing = sorted({t for _, r in results for t in r.get("not_reported") or {}})
    if missing:
        lines += ["", f"No aggregate from lm-eval (a tag, or a group without one): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def _harness_column(task: str, results: Sequence[tuple[str, dict]]) -> str:
    """A task's column head: the task and the metric its summary number is (from the first result that
    says), marked where lower is better (perplexity)."""
    for _, result in results:
        picked = (result.get("summary_metric") or {}).get(task)
        if picked:
            metric = picked["metric"].removesuffix(",none")
            return f"{task} ({metric}{', lower is better' if picked.get('higher_is_better') is False else ''})"
    return task
