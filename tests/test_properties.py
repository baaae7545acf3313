"""Property tests (hypothesis): the record parsers on random valid and invalid files, and the
extrapolation arithmetic on random shapes, dtypes, alphas and shard layouts.

Parsers: a valid file reads back exactly; a broken line or record is a one-line MoxError at the right
line (1-based, blank lines counted) or index; any bytes at all give a RecordSet or a MoxError, never
another exception. Arithmetic: every output equals (1+α)·ref − α·mem computed in fp32 and cast once,
whatever the chunking, and a folder's result does not depend on how either input is sharded.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mox_unlearn import extrapolation as ex
from mox_unlearn.data import load_records
from mox_unlearn.errors import MoxError
from mox_unlearn.io.reading import open_weights
from mox_unlearn.io.shards import save_sharded

# modest budgets: the whole file runs in seconds on 2 cores; no example database written into the repo
FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW = settings(FAST, max_examples=12)

text = st.text(min_size=1, max_size=30).filter(lambda s: s.strip())
qa_record = st.fixed_dictionaries(
    {"question": text, "answer": text}, optional={"paraphrased_answer": text, "id": st.integers()}
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _jsonl(records: list, blanks: list[int], ensure_ascii: bool, crlf: bool) -> tuple[str, list[int]]:
    """JSONL text with blank lines inserted before the records at `blanks`; returns (text, line of each record)."""
    lines, where = [], []
    for i, record in enumerate(records):
        lines += [""] * blanks.count(i)
        where.append(len(lines) + 1)
        lines.append(json.dumps(record, ensure_ascii=ensure_ascii))
    return ("\r\n" if crlf else "\n").join(lines) + "\n", where


# ----------------------------------------------------------------------------- parsers


@FAST
@given(
    records=st.lists(qa_record, min_size=1, max_size=6),
    blanks=st.lists(st.integers(0, 6), max_size=4),
    ensure_ascii=st.booleans(),
    crlf=st.booleans(),
)
def test_valid_jsonl_reads_back_exactly(tmp_path, records, blanks, ensure_ascii, crlf):
    content, _ = _jsonl(records, blanks, ensure_ascii, crlf)
    rs = load_records(str(_write(tmp_path, "f.jsonl", content)), name="forget")
    assert rs.kind == "qa" and rs.records == records


def test_line_separators_inside_strings_do_not_split_records(tmp_path):
    """JSON strings may hold U+2028, U+0085, form feeds unescaped: only "\\n" ends a JSONL line."""
    records = [{"question": "a\u2028b", "answer": "c\x85d\x0ce"}, {"question": "q", "answer": "r"}]
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "{broken\n"
    with pytest.raises(MoxError, match=r"f.jsonl:3: invalid JSON"):
        load_records(str(_write(tmp_path, "f.jsonl", content)), name="forget")
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    assert load_records(str(_write(tmp_path, "f.jsonl", content)), name="forget").records == records


@FAST
@given(
    records=st.lists(qa_record, min_size=1, max_size=6),
    blanks=st.lists(st.integers(0, 6), max_size=4),
    bad=st.data(),
    garbage=st.text(min_size=1, max_size=20).filter(
        lambda s: "\n" not in s and s.strip() and not s.startswith("\ufeff")
    ),
)  # a leading BOM is allowed
def test_a_broken_jsonl_line_is_named_by_its_line_number(tmp_path, records, blanks, bad, garbage):
    try:
        json.loads(garbage)
        assume(False)  # it is valid JSON after all
    except (ValueError, RecursionError):
        pass
    content, where = _jsonl(records, blanks, True, False)
    k = bad.draw(st.integers(0, len(records) - 1))
    lines = content.split("\n")
    lines[where[k] - 1] = garbage
    path = _write(tmp_path, "f.jsonl", "\n".join(lines))
    with pytest.raises(MoxError) as err:
        load_records(str(path), name="forget")
    assert f"{path}:{where[k]}: invalid JSON" in str(err.value) and "\n" not in str(err.value)


@FAST
@given(
    records=st.lists(qa_record, min_size=2, max_size=6),
    bad=st.data(),
    key=st.sampled_from(["question", "answer"]),
    value=json_value | st.just("   ") | st.just(""),
    as_jsonl=st.booleans(),
)
def test_a_bad_field_is_named_by_line_or_index(tmp_path, records, bad, key, value, as_jsonl):
    assume(not (isinstance(value, str) and value.strip()))
    k = bad.draw(st.integers(1, len(records) - 1))  # the first record decides the kind: keep it good
    records = [dict(r) for r in records]
    if bad.draw(st.booleans()):
        records[k][key] = value
    else:
        del records[k][key]
    if as_jsonl:
        content, where = _jsonl(records, [], True, False)
        path, loc = _write(tmp_path, "f.jsonl", content), f":{where[k]}:"
    else:
        path, loc = _write(tmp_path, "f.json", json.dumps(records, indent=1)), f"[{k}]:"
    with pytest.raises(MoxError) as err:
        load_records(str(path), name="retain")
    message = str(err.value)
    assert message.startswith(f"{path}{loc}") and f'"{key}"' in message and "\n" not in message


@FAST
@given(
    content=st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    suffix=st.sampled_from([".jsonl", ".json", ".txt"]),
)
def test_any_bytes_give_records_or_one_line_error(tmp_path, content, suffix):
    path = _write(tmp_path, "any" + suffix, content)
    try:
        rs = load_records(str(path), name="forget")
    except MoxError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert len(rs) >= 1 and rs.kind in ("qa", "text")


@FAST
@given(items=st.lists(json_value, min_size=1, max_size=5), suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_json_values_never_crash(tmp_path, items, suffix):
    content = "".join(json.dumps(v) + "\n" for v in items) if suffix == ".jsonl" else json.dumps(items)
    try:
        load_records(str(_write(tmp_path, "v" + suffix, content)), name="forget")
    except MoxError as e:
        assert "\n" not in str(e)


# ----------------------------------------------------------------------------- arithmetic

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
alphas = st.lists(st.floats(-8, 16, allow_nan=False).filter(lambda a: a != 0), min_size=1, max_size=3, unique=True)


def reference(ref: torch.Tensor, mem: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 8 written plainly: fp32, then one cast to the inputs' dtype."""
    return (ref.float() * (1.0 + alpha) - mem.float() * alpha).to(ref.dtype)


def _pair(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=g) * 3
    mem = ref + 0.01 * torch.randn(shape, generator=g)  # close to ref, as a memorized model is
    return ref.to(dtype), mem.to(dtype)


@FAST
@given(shape=shapes, dtype=st.sampled_from(DTYPES), alphas=alphas, seed=st.integers(0, 2**16), chunk=st.integers(1, 64))
def test_extrapolate_tensors_is_eq8_in_fp32_whatever_the_chunking(shape, dtype, alphas, seed, chunk):
    ref, mem = _pair(shape, dtype, seed)
    before = (ref.clone(), mem.clone())
    with mock.patch.object(ex, "CHUNK_ELEMS", chunk):  # chunk boundaries anywhere in the tensor
        outs = ex.extrapolate_tensors(ref, mem, alphas)
    assert torch.equal(ref, before[0]) and torch.equal(mem, before[1])  # inputs untouched
    for alpha, out in zip(alphas, outs):
        assert out.dtype == dtype and out.shape == ref.shape
        assert torch.equal(out, reference(ref, mem, alpha)), alpha


@FAST
@given(shape=shapes, alphas=alphas, dtype=st.sampled_from([torch.int64, torch.bool]))
def test_integer_and_bool_tensors_are_copied_from_ref(shape, alphas, dtype):
    ref, mem = torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)
    assert all(torch.equal(o, ref) for o in ex.extrapolate_tensors(ref, mem, alphas))


layouts = st.sampled_from([64, 200, 1000, 10**6])  # shard caps in bytes: many shards ... one file


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor], cap: int) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_sharded(tensors, folder, cap)


@SLOW
@given(
    specs=st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), min_size=1, max_size=5),
    alphas=alphas,
    seed=st.integers(0, 2**16),
    ref_cap=layouts,
    mem_cap=layouts,
    out_cap=layouts,
    order=st.randoms(),
)
def test_extrapolate_folders_is_eq8_whatever_the_shard_layout(
    tmp_path_factory, specs, alphas, seed, ref_cap, mem_cap, out_cap, order
):
    root = tmp_path_factory.mktemp("layout")
    ref, mem = {}, {}
    for i, (shape, dtype) in enumerate(specs):
        ref[f"t{i}"], mem[f"t{i}"] = _pair(shape, dtype, seed + i)
    names = list(mem)
    order.shuffle(names)  # mem written in another order than ref: its shards hold other groupings
    _write_folder(root / "ref", ref, ref_cap)
    _write_folder(root / "mem", {n: mem[n] for n in names}, mem_cap)
    outs = ex.extrapolate_folders(
        root / "ref", root / "mem", alphas, root / "out", shard_size=out_cap, allow_negative=True, progress=False
    )
    for alpha, folder in zip(alphas, outs):
        with open_weights({"out": folder}) as w:
            got = w["out"]
            assert sorted(got) == sorted(ref)
            for name in ref:
                assert got[name].dtype == ref[name].dtype
                assert torch.equal(got[name], reference(ref[name], mem[name], alpha)), (name, alpha)
    shutil.rmtree(root)


def test_the_reference_formula_is_the_papers():
    """θ_for = θ_ref + α(θ_ref − θ_mem) (Eq. 8): the two written forms agree on exact values."""
    ref, mem = torch.tensor([1.0, 2.0, -3.0]), torch.tensor([0.5, 2.5, -3.0])
    assert torch.equal(reference(ref, mem, 4.0), ref + 4.0 * (ref - mem))
    assert math.isclose(float(reference(torch.tensor(1.0), torch.tensor(0.0), 2.0)), 3.0)


# ----------------------------------------------------------------------------- damaged shards


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("shard") / "m"
    _write_folder(folder, {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16)}, 10**6)
    return (folder / "model.safetensors").read_bytes()


@FAST
@given(
    cut=st.data(),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    truncate=st.booleans(),
)
def test_a_truncated_or_header_damaged_shard_is_a_one_line_error(tmp_path, shard_bytes, cut, flips, truncate):
    """Cut anywhere, or bytes of the length field / JSON header overwritten: a MoxError naming the file or,
    when the header happens to stay valid and consistent, a readable shard; never another exception."""
    from mox_unlearn.io.reading import read_safetensors_header

    n = int.from_bytes(shard_bytes[:8], "little")
    data = bytearray(shard_bytes)
    if truncate:
        data = data[: cut.draw(st.integers(0, len(data) - 1))]
    else:
        for pos, value in flips:
            data[pos % (8 + n)] = value
    path = _write(tmp_path, "model.safetensors", bytes(data))
    try:
        infos = read_safetensors_header(path)
    except MoxError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        assert not truncate and sum(i.nbytes for i in infos.values()) == len(data) - 8 - int.from_bytes(
            data[:8], "little"
        )


# ----------------------------------------------------------------------------- the command line's settings


def _setting_keys() -> list[str]:
    import dataclasses

    from mox_unlearn.config import UnlearnConfig
    from mox_unlearn.data.formatting import PromptFormat

    keys = [f.name for f in dataclasses.fields(UnlearnConfig)]
    keys += [f"prompt.{f.name}" for f in dataclasses.fields(PromptFormat)]
    return keys + ["loss.beta", "loss.lambda_kl", "loss.nope", "nope", "lr.x", "prompt", "loss", ""]


_VALUE_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            "null",
            "~",
            "true",
            "no",
            "1e-5",
            "-1",
            "0",
            "nan",
            "inf",
            "1e400",
            "[1, 2]",
            "{a: 1}",
            "auto",
            "2GB",
            "512MiB",
            "User: {question}",
            "{question",
            "{0}",
            "a: b: c",
            "'quoted",
            "- item",
            "[",
            "&anchor",
            "*ref",
            "!!python/object:os.system",
            "\x00",
            "é",
            "9" * 40,
        ]
    ),  # fmt: skip
    st.text(max_size=30),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(_setting_keys()), _VALUE_TEXT), max_size=4))
@example(pairs=[("extrapolation", "{0}")])  # a mapping keyed by a number (found by this test in CI)
@example(pairs=[("loss", "null")])  # null for a setting that cannot be unset (found by this test in CI)
def test_any_key_value_settings_get_exit_2_and_one_line_never_a_traceback(pairs, tmp_path_factory, capsys):
    """Issue 16: random `key=value` settings through the real parser and config checks. The forget file
    does not exist, so a run that gets past every setting stops there: every outcome is exit 2 with one
    `mox: error:` line (warnings aside), never a traceback or an 'unexpected' error."""
    from mox_unlearn.cli import main

    where = tmp_path_factory.mktemp("kv")
    overrides = [f"{k}={v}" for k, v in pairs if "\x00" not in v]
    argv = ["unlearn", "--model", str(where / "m"), "--forget", str(where / "missing.jsonl"), "--out", str(where / "o")]
    code = main([*argv, *overrides])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mox: error:")]
    assert code == 2 and len(errors) == 1, (overrides, err)
    assert "Traceback" not in err and "unexpected" not in errors[0], (overrides, err)
    assert not (where / "o").exists()
