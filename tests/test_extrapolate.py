"""MOX extrapolation (Eq. 8) over tensors, state dicts and HF folders, plus the model-folder helpers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mox_unlearn.errors import MoxError
from mox_unlearn.extrapolation import (
    all_finite,
    alpha_label,
    extrapolate_folders,
    extrapolate_state_dict,
    extrapolate_tensor,
    extrapolate_tensors,
)
from mox_unlearn.io.atomic import WriteError, atomic_output_dir
from mox_unlearn.io.reading import list_weight_files, read_safetensors_header
from mox_unlearn.io.shards import ShardedFolder, layout_for, parse_size, plan_shards, save_sharded
from mox_unlearn.tiny import build_tiny_llama

THREE_SHARDS = "64KB"  # the tiny fp32 Llama is ~159 KB: 64 KB shards give exactly 3 files


# ----------------------------------------------------------------------------- helpers


def load_sd(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors folder, copied into memory."""
    sd = {}
    for name, path in list_weight_files(model_dir).items():
        with safe_open(str(path), framework="pt") as f:
            sd[name] = f.get_tensor(name).clone()
    return sd


def expected_sd(ref: dict, mem: dict, alpha: float) -> dict[str, torch.Tensor]:
    """Eq. 8 written out plainly: fp32 math on whole tensors, one cast back."""
    out = {}
    for k, r in ref.items():
        if r.is_floating_point():
            out[k] = ((1 + alpha) * r.float() - alpha * mem[k].float()).to(r.dtype)
        else:
            out[k] = r
    return out


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
    )


def assert_sd_bytes_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    bad = [k for k in want if not same_bytes(got[k], want[k])]
    assert not bad, f"tensors differ: {bad[:5]}"


def n_shards(model_dir: Path) -> int:
    return len(list(Path(model_dir).glob("*.safetensors")))


def leftovers(parent: Path) -> list[str]:
    """Temp or backup folders that atomic_output_dir must never leave behind."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def run(ref, mem, alphas, out, **kw):
    kw.setdefault("progress", False)
    return extrapolate_folders(ref, mem, alphas, out, **kw)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer, tiny_model_dir) -> dict[str, Path]:
    """Reference/memorization pairs with the same config, in several layouts and dtypes."""
    root = tmp_path_factory.mktemp("extrap-models")
    m = {"ref": tiny_model_dir, "mem": build_tiny_llama(root / "mem", tokenizer, seed=1)}
    m["ref3"] = build_tiny_llama(root / "ref3", tokenizer, seed=0, max_shard_size=THREE_SHARDS)
    m["mem3"] = build_tiny_llama(root / "mem3", tokenizer, seed=1, max_shard_size=THREE_SHARDS)
    m["tied_ref"] = build_tiny_llama(root / "tied_ref", tokenizer, seed=0, tie_word_embeddings=True)
    m["tied_mem"] = build_tiny_llama(root / "tied_mem", tokenizer, seed=1, tie_word_embeddings=True)
    m["bf16_ref"] = build_tiny_llama(root / "bf16_ref", tokenizer, seed=0, dtype=torch.bfloat16)
    m["bf16_mem"] = build_tiny_llama(root / "bf16_mem", tokenizer, seed=1, dtype=torch.bfloat16)
    m["wide_mem"] = build_tiny_llama(root / "wide_mem", tokenizer, seed=1, intermediate_size=48)
    return m


# ----------------------------------------------------------------------------- tensor math


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [4.0, 0.5, 1 / 3])
def test_extrapolate_tensor_is_eq8_in_fp32(dtype, alpha):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(600, 700, generator=g).to(dtype)  # > one work chunk, not a multiple of it
    mem = torch.randn(600, 700, generator=g).to(dtype)
    got = extrapolate_tensor(ref, mem, alpha)
    want = ((1 + alpha) * ref.float() - alpha * mem.float()).to(dtype)
    assert same_bytes(got, want)
    assert same_bytes(ref, torch.randn(600, 700, generator=torch.Generator().manual_seed(0)).to(dtype))  # untouched


def test_extrapolate_tensor_by_hand_and_special_alphas():
    ref, mem = torch.tensor([1.0, 2.0, -3.0]), torch.tensor([0.5, 2.0, -1.0])
    assert torch.equal(extrapolate_tensor(ref, mem, 4.0), torch.tensor([3.0, 2.0, -11.0]))
    assert torch.equal(extrapolate_tensor(ref, mem, 0.0), ref)
    assert torch.equal(extrapolate_tensor(ref, mem, -1.0), mem)
    ids = torch.tensor([1, 2, 3])
    assert extrapolate_tensor(ids, ids + 7, 4.0) is ids  # integer buffers are copied from ref
    flags = torch.tensor([True, False])
    assert extrapolate_tensor(flags, ~flags, 4.0) is flags
    a, b = extrapolate_tensors(ref, mem, [4.0, 1.0])
    assert torch.equal(a, torch.tensor([3.0, 2.0, -11.0])) and torch.equal(b, 2 * ref - mem)
    with pytest.raises(ValueError):
        extrapolate_tensor(torch.zeros(3), torch.zeros(1), 1.0)  # no silent broadcasting


def test_extrapolate_state_dict(models):
    ref, mem = load_sd(models["ref"]), load_sd(models["mem"])
    assert_sd_bytes_equal(extrapolate_state_dict(ref, mem, 4.0), expected_sd(ref, mem, 4.0))
    del mem["lm_head.weight"]
    with pytest.raises(MoxError, match="lm_head.weight"):
        extrapolate_state_dict(ref, mem, 4.0)


# ----------------------------------------------------------------------------- folders: results


def test_single_file_equals_in_memory_eq8(models, tmp_path):
    out = tmp_path / "out"
    assert run(models["ref"], models["mem"], [4.0], out) == [out]
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    want = expected_sd(load_sd(models["ref"]), load_sd(models["mem"]), 4.0)
    assert_sd_bytes_equal(load_sd(out), want)
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    for path in (out, out / "model.safetensors"):  # ordinary permissions, not mkdtemp's/save_file's 0700/0600
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask


def test_three_shard_inputs(models, tmp_path):
    assert n_shards(models["ref3"]) == 3 and n_shards(models["mem3"]) == 3
    want = expected_sd(load_sd(models["ref"]), load_sd(models["mem"]), 2.5)
    run(models["ref3"], models["mem3"], [2.5], tmp_path / "both")
    assert_sd_bytes_equal(load_sd(tmp_path / "both"), want)
    run(models["ref3"], models["mem"], [2.5], tmp_path / "mixed")  # ref sharded, mem one file
    assert_sd_bytes_equal(load_sd(tmp_path / "mixed"), want)


def test_alpha_zero_copies_ref_and_minus_one_gives_mem(models, tmp_path):
    outs = run(models["ref"], models["mem"], [0.0, -1.0], tmp_path / "o", allow_negative=True)
    assert [p.name for p in outs] == ["alpha-0", "alpha--1"]
    ref, mem = load_sd(models["ref"]), load_sd(models["mem"])
    for got, want in ((load_sd(outs[0]), ref), (load_sd(outs[1]), mem)):
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_multi_alpha_equals_separate_runs(models, tmp_path):
    alphas = [4.0, 0.5, 1.0]
    outs = run(models["ref3"], models["mem"], alphas, tmp_path / "multi", shard_size="50KB")
    assert [p.name for p in outs] == ["alpha-4", "alpha-0.5", "alpha-1"]
    for alpha, multi in zip(alphas, outs):
        single = run(models["ref3"], models["mem"], [alpha], tmp_path / f"single-{alpha}", shard_size="50KB")[0]
        assert sorted(p.name for p in multi.iterdir() if p.name != "README.md") == sorted(
            p.name for p in single.iterdir() if p.name != "README.md"
        )
        assert_sd_bytes_equal(load_sd(multi), load_sd(single))
        for shard in multi.glob("*.safetensors"):
            assert shard.read_bytes() == (single / shard.name).read_bytes()


def test_output_is_a_loadable_hf_folder(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run(models["ref"], models["mem"], [4.0], tmp_path / "out", card_fields={"data": "forget.jsonl"})[0]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    want = expected_sd(load_sd(models["ref"]), load_sd(models["mem"]), 4.0)
    key = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(model.state_dict()[key], want[key])
    ids = tok("Where was Alia Vorn born?", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tok)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (models["ref"] / name).read_bytes()
    card = (out / "README.md").read_text()
    for text in (
        "MOX extrapolation (Eq. 8)",
        "| alpha | 4 |",
        # the inputs, named relative to the output folder (no absolute path of the machine in a card)
        f"| reference model (theta_ref) | {os.path.relpath(models['ref'].resolve(), out.resolve())} |",
        f"| memorization model (theta_mem) | {os.path.relpath(models['mem'].resolve(), out.resolve())} |",
        "forget.jsonl",
        "mox-unlearn version",
        "date",
    ):
        assert text in card


def test_tied_embeddings(models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = run(models["tied_ref"], models["tied_mem"], [4.0], tmp_path / "tied")[0]
    got = load_sd(out)
    assert "lm_head.weight" not in got
    assert_sd_bytes_equal(got, expected_sd(load_sd(models["tied_ref"]), load_sd(models["tied_mem"]), 4.0))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, got["model.embed_tokens.weight"])


def test_bf16_stays_bf16(models, tmp_path):
    out = run(models["bf16_ref"], models["bf16_mem"], [4.0], tmp_path / "bf16")[0]
    header = read_safetensors_header(out / "model.safetensors")
    assert {info.dtype for info in header.values()} == {"BF16"}
    assert_sd_bytes_equal(load_sd(out), expected_sd(load_sd(models["bf16_ref"]), load_sd(models["bf16_mem"]), 4.0))


def test_non_float_tensors_come_from_ref(models, tmp_path):
    ref, mem = tmp_path / "ref", tmp_path / "mem"
    for d, seed in ((ref, 0), (mem, 1)):
        d.mkdir()
        (d / "config.json").write_text("{}")
        g = torch.Generator().manual_seed(seed)
        save_file(
            {
                "w": torch.randn(4, 4, generator=g),
                "steps": torch.tensor([seed + 10]),
                "mask": torch.tensor([bool(seed), True]),
            },
            str(d / "model.safetensors"),
        )
    got = load_sd(run(ref, mem, [4.0], tmp_path / "out")[0])
    assert torch.equal(got["steps"], torch.tensor([10])) and torch.equal(got["mask"], torch.tensor([False, True]))


def test_overwrite_replaces_and_empty_dir_is_fine(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run(models["ref"], models["mem"], [4.0], out)  # existing empty folder: allowed
    (out / "stale.txt").write_text("old")
    run(models["ref"], models["mem"], [0.5, 1.0], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["alpha-0.5", "alpha-1"]
    assert leftovers(tmp_path) == []


def test_output_shards_respect_cap(models, tmp_path):
    cap = parse_size("30KB")  # smaller than the 38.4 KB embedding matrices
    out = run(models["ref"], models["mem"], [4.0], tmp_path / "out", shard_size="30KB")[0]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(index["weight_map"]) == sorted(load_sd(models["ref"]))
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    total = 0
    for shard in shards:
        header = read_safetensors_header(shard)
        data = sum(info.nbytes for info in header.values())
        total += data
        assert data <= cap or len(header) == 1, (shard.name, data)
    assert index["metadata"]["total_size"] == total
    assert any(
        len(read_safetensors_header(s)) == 1 and sum(i.nbytes for i in read_safetensors_header(s).values()) > cap
        for s in shards
    )  # the oversized embedding got a shard of its own


# ----------------------------------------------------------------------------- folders: refusals


def _no_bin_model(tmp_path: Path) -> Path:
    d = tmp_path / "binonly"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"x")
    return d


REFUSALS = {
    "different keys": (lambda m, t: (m["ref"], m["tied_mem"], [4.0], {}), "lm_head.weight"),
    "shape": (lambda m, t: (m["ref"], m["wide_mem"], [4.0], {}), "shape"),
    "dtype": (lambda m, t: (m["ref"], m["bf16_mem"], [4.0], {}), "dtype"),
    "alpha zero": (lambda m, t: (m["ref"], m["mem"], [0.0], {}), "allow-negative"),
    "alpha negative": (lambda m, t: (m["ref"], m["mem"], [4.0, -1.0], {}), "allow-negative"),
    "alpha nan": (lambda m, t: (m["ref"], m["mem"], [float("nan")], {}), "finite"),
    "no alpha": (lambda m, t: (m["ref"], m["mem"], [], {}), "alpha"),
    "duplicate alpha": (lambda m, t: (m["ref"], m["mem"], [4.0, 2.0, 4], {}), "duplicate"),
    "missing folder": (lambda m, t: (t / "nope", m["mem"], [4.0], {}), "--ref folder not found"),
    "missing config": (lambda m, t: (m["ref"], t / "noconfig", [4.0], {}), "config.json"),
    "bin only": (lambda m, t: (_no_bin_model(t), m["mem"], [4.0], {}), "safetensors"),
    "bad shard size": (lambda m, t: (m["ref"], m["mem"], [4.0], {"shard_size": "2 parsecs"}), "size"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_write_nothing(case, models, tmp_path):
    (tmp_path / "noconfig").mkdir()
    make, pattern = REFUSALS[case]
    ref, mem, alphas, kw = make(models, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MoxError, match=pattern) as info:
        run(ref, mem, alphas, tmp_path / "out", **kw)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out, no temp folder


def test_refuses_non_empty_out_without_overwrite(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MoxError, match="not empty"):
        run(models["ref"], models["mem"], [4.0], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["ref itself", "inside ref", "mem itself", "parent of mem"])
def test_refuses_out_overlapping_an_input(where, models, tmp_path, tokenizer):
    ref = tmp_path / "models" / "ref"
    shutil.copytree(models["ref"], ref)
    mem = shutil.copytree(models["mem"], tmp_path / "models" / "mem")
    out = {"ref itself": ref, "inside ref": ref / "sub", "mem itself": mem, "parent of mem": mem.parent}[where]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(MoxError, match="input"):
        run(ref, mem, [4.0], out, overwrite=True)  # even --overwrite must not touch an input
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_failure_of_a_write_in_a_worker_leaves_nothing(models, tmp_path, monkeypatch):
    import errno

    import mox_unlearn.io.shards as mio

    real, calls = mio._pwrite_all, []

    def flaky(fd, data, offset):
        calls.append(offset)
        if len(calls) == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(mio, "_pwrite_all", flaky)
    with pytest.raises(WriteError, match="No space left on device; nothing was written there"):
        run(models["ref"], models["mem"], [4.0, 2.0], tmp_path / "out", shard_size="30KB")
    assert len(calls) >= 20 and sorted(p.name for p in tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_nothing(models, tmp_path, monkeypatch):
    import mox_unlearn.extrapolation as ex

    real, calls = ex.eq8_chunk, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 12:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(ex, "eq8_chunk", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(models["ref3"], models["mem3"], [4.0, 2.0], tmp_path / "out", shard_size="30KB")
    assert len(calls) == 12 and sorted(p.name for p in tmp_path.iterdir()) == []

    out = tmp_path / "old"  # with --overwrite, a failure keeps the old output intact
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    calls.clear()
    with pytest.raises(RuntimeError):
        run(models["ref"], models["mem"], [4.0], out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- io helpers (mox_unlearn.io)


@pytest.mark.parametrize(
    "text, value",
    [
        ("2GB", 2 * 10**9),
        ("256MB", 256 * 10**6),
        ("500KB", 500_000),
        ("1.5GB", 1_500_000_000),
        ("512MiB", 512 * 2**20),
        ("1GiB", 2**30),
        ("100", 100),
        (4096, 4096),
        (" 2 gb ", 2 * 10**9),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "GB", "2XB", "-1GB", "0", 0, -5, "1.2.3MB", True])
def test_parse_size_rejects(bad):
    with pytest.raises(MoxError):
        parse_size(bad)


def test_alpha_label():
    assert [alpha_label(a) for a in (4, 4.0, 0.5, -1, 0.125, 1e-5)] == ["4", "4", "0.5", "-1", "0.125", "1e-05"]


def test_shard_layout_single_and_many(tmp_path):
    t = {f"t{i}": torch.full((250,), float(i)) for i in range(5)}  # 1000 bytes each
    save_sharded(t, tmp_path / "one", "10KB")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.safetensors"]

    paths = save_sharded(t, tmp_path / "many", 2000)
    assert [p.name for p in paths] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5000
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    assert list_weight_files(tmp_path / "many")["t2"] == tmp_path / "many" / "model-00002-of-00003.safetensors"
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(
        [p.name for p in paths] + ["model.safetensors.index.json"]
    )
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert all(torch.equal(v, load_sd(tmp_path / "many")[k]) for k, v in t.items())


def test_plan_shards_is_hugging_faces_rule():
    """A file closes when the next tensor would push it over the cap; a tensor of cap bytes or more gets a
    file of its own; zero-byte tensors and an empty model still make valid files."""
    plan = plan_shards(
        [
            ("a", "F32", (100,), 400),
            ("b", "F32", (100,), 400),
            ("c", "F32", (300,), 1200),
            ("d", "U8", (0,), 0),
            ("e", "U8", (700,), 700),
            ("f", "U8", (300,), 300),
        ],
        1000,
    )
    files = {name: slot.file for name, slot in plan.slots.items()}
    assert files == {
        "a": "model-00001-of-00003.safetensors",
        "b": "model-00001-of-00003.safetensors",
        "c": "model-00002-of-00003.safetensors",  # oversized: alone
        "d": "model-00003-of-00003.safetensors",  # the file holding c is full
        "e": "model-00003-of-00003.safetensors",
        "f": "model-00003-of-00003.safetensors",  # 0 + 700 + 300 = 1000: fits exactly
    }
    assert plan.index["metadata"]["total_size"] == 3000
    header = plan.headers["model-00001-of-00003.safetensors"]
    assert len(header) % 8 == 0 and int.from_bytes(header[:8], "little") == len(header) - 8
    assert plan.slots["b"].start - plan.slots["a"].start == 400  # data without holes, in the given order
    assert plan.slots["b"].start + plan.slots["b"].nbytes == len(header) + 800  # the file ends with b
    empty = plan_shards([], "1GB")
    assert list(empty.headers) == ["model.safetensors"] and empty.index is None


def test_sharded_folder_writes_pieces_from_threads_and_refuses_gaps(tmp_path):
    """Chunks of one tensor written out of order from several threads give the same file safetensors
    would read back; a slot left short, or a write outside its slot, is refused."""
    from concurrent.futures import ThreadPoolExecutor

    t = {"x": torch.randn(1000, dtype=torch.bfloat16), "y": torch.arange(7, dtype=torch.int64), "z": torch.tensor(True)}
    layout = layout_for(t, 1500)
    with ShardedFolder(tmp_path / "w", layout) as out:
        raw = t["x"].view(torch.int16).numpy().tobytes()
        pieces = [(at, memoryview(raw)[at : at + 256]) for at in range(0, len(raw), 256)][::-1]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda p: out.write("x", p[1], at=p[0]), pieces))
        out.write("y", t["y"])
        out.write("z", t["z"])
    got = load_sd(tmp_path / "w")
    assert all(torch.equal(got[k], v) for k, v in t.items())
    with pytest.raises(ValueError, match="outside"):
        with ShardedFolder(tmp_path / "bad", layout) as out:
            out.write("y", t["x"])
    with pytest.raises(RuntimeError, match="of 2000 bytes written"):
        with ShardedFolder(tmp_path / "short", layout) as out:
            out.write("y", t["y"])
            out.write("z", t["z"])


def test_extrapolate_tensors_into_out():
    ref, mem = torch.randn(3, 4), torch.randn(3, 4)
    out = [torch.empty(3, 4), torch.empty(3, 4)]
    got = extrapolate_tensors(ref, mem, [4.0, 0.5], out=out)
    assert got[0] is out[0] and torch.equal(out[1], 1.5 * ref - 0.5 * mem)
    with pytest.raises(ValueError, match="out"):
        extrapolate_tensors(ref, mem, [4.0], out=[torch.empty(4, 3)])


def test_list_weight_files_errors(tmp_path):
    with pytest.raises(MoxError, match="safetensors"):
        list_weight_files(_no_bin_model(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoxError, match="safetensors"):
        list_weight_files(tmp_path / "empty")
    d = tmp_path / "lost"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(MoxError, match="gone.safetensors"):
        list_weight_files(d)


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "deep" / "out"  # parent created on demand
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.tmp-")
        (tmp / "f.txt").write_text("x")
        assert not out.exists()
    assert (out / "f.txt").read_text() == "x"
    with pytest.raises(KeyError):
        with atomic_output_dir(tmp_path / "b") as tmp:
            (tmp / "f.txt").write_text("x")
            raise KeyError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite_wherever_the_bad_entry_is(dtype):
    """all_finite's one aminmax pass finds a single inf, -inf or NaN anywhere: in the vectorised body, in
    the scalar tail, first or last; and empty and integer tensors count as finite."""
    n = 1000 + 37  # not a multiple of any vector width
    for pos in (0, 1, 15, 16, 511, n - 2, n - 1):
        for bad in (float("inf"), float("-inf"), float("nan")):
            t = torch.randn(n, dtype=torch.float64).to(dtype)
            assert all_finite(t) and bool(torch.isfinite(t).all())
            t[pos] = bad
            assert not all_finite(t), (dtype, pos, bad)
    assert all_finite(torch.empty(0, dtype=dtype))
    assert all_finite(torch.tensor([2**31 - 1], dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cannot_overflow_is_sound_and_falls_back_on_bad_inputs(dtype):
    """Whenever the input bound says every alpha is finite, every output is; near the limit it says no
    (and the writer then checks each output exactly); inf or NaN inputs always say no."""
    from mox_unlearn.extrapolation import cannot_overflow

    top = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(0)
    said_yes = said_no = 0
    for scale in (1e-3, 0.01, 0.1, 0.2, 0.3, 0.5, 0.9):
        r = ((torch.rand(4096, generator=g) * 2 - 1) * top * scale).to(dtype)
        m = ((torch.rand(4096, generator=g) * 2 - 1) * top * scale).to(dtype)
        for alphas in ([0.5], [1.0, 4.0], [-0.5], [2.0**-3, 0.3]):
            if cannot_overflow(r, m, alphas, dtype):
                said_yes += 1
                assert all(all_finite(o) for o in extrapolate_tensors(r, m, alphas)), (dtype, scale, alphas)
            else:
                said_no += 1
    assert said_yes and said_no  # both branches were exercised
    ok = torch.ones(8, dtype=dtype)
    for bad in (float("inf"), float("nan")):
        spoiled = ok.clone()
        spoiled[3] = bad
        assert not cannot_overflow(spoiled, ok, [0.5], dtype) and not cannot_overflow(ok, spoiled, [0.5], dtype)
    assert cannot_overflow(ok[:0], ok[:0], [1e30], dtype)  # nothing to overflow


@pytest.mark.slow
def test_mox_extrapolate_does_not_import_transformers(tiny_model_dir, tmp_path):
    """`mox extrapolate` is safetensors in, safetensors out: importing transformers (seconds, and a few
    hundred MB) is not on its path (issue 18 item 2)."""
    import subprocess
    import sys

    code = (
        "import sys; from mox_unlearn.cli import main; "
        f"rc = main(['extrapolate', '--ref', {str(tiny_model_dir)!r}, '--mem', {str(tiny_model_dir)!r}, "
        f"'--alpha', '2', '--out', {str(tmp_path / 'out')!r}]); "
        "print(sorted(m for m in ('transformers', 'accelerate', 'peft', 'datasets') if m in sys.modules), rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "[] 0", res.stdout + res.stderr
    assert (tmp_path / "out" / "config.json").is_file()
