"""Small helpers for ordinary Hugging Face model folders: weights, aux files, cards, safe output.

Every model that `mox` reads or writes is a plain HF folder (config.json, safetensors shards with an
index, tokenizer files, README card), so other tools can load it without knowing about this package.
Nothing here loads a whole model: weights are handled tensor by tensor so memory stays near one shard.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


# ----------------------------------------------------------------------------- model card


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


# ----------------------------------------------------------------------------- safe output


def check_output_dir(out: Path, *, overwrite: bool = False, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output path that would clobber an input or existing work; writes nothing.

    Separate from `atomic_output_dir` so callers can run every check before starting slow work.
    """
    out_r = Path(out).resolve()
    for inp in inputs:
        inp_r = Path(inp).resolve()
        if out_r == inp_r:
            raise MoxError(f"output folder {out} is the same as input {inp}; choose another --out")
        if out_r.is_relative_to(inp_r):
            raise MoxError(f"output folder {out} is inside input {inp}; choose another --out")
        if inp_r.is_relative_to(out_r):
            raise MoxError(f"output folder {out} contains input {inp}; choose another --out")
    if out_r.exists():
        if not out_r.is_dir():
            raise MoxError(f"output path {out} exists and is not a folder")
        if any(out_r.iterdir()) and not overwrite:
            raise MoxError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


@contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a temp folder beside `out` that becomes `out` only if the block finishes.

    A crash or Ctrl-C therefore never leaves a half-written model that looks complete; the temp
    folder sits in the same parent so the final step is a cheap rename on one file system.
    """
    out = Path(out)
    check_output_dir(out, overwrite=overwrite, inputs=inputs)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes it 0700; the result should be an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out.resolve())


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, first moving an old `out` aside so it is removed only after success."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file (JSON results, logs) via a temp file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- loading

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, *, auto: bool = False) -> torch.dtype | str:
    """A dtype by name; "auto" (the checkpoint's own dtype) only where `auto` allows it."""
    valid = ["auto", *DTYPES] if auto else list(DTYPES)
    if name not in valid:
        raise MoxError(f"unknown dtype {name!r}; valid: {', '.join(valid)}")
    return "auto" if name == "auto" else DTYPES[name]


@dataclass
class LoadPolicy:
    """What model loading may do with files it did not write: set once per command from its flags.

    Pickle checkpoints (pytorch_model*.bin) can run code when unpickled and a model's own Python code
    (`trust_remote_code`) always does, so both stay off unless the user passes --allow-pickle or
    --trust-remote-code. A process-wide setting, so that every load in the command (the training loop,
    the evaluation) obeys the command line without each caller passing the flags along.
    """

    allow_pickle: bool = False
    trust_remote_code: bool = False


_POLICY = LoadPolicy()


@contextmanager
def load_policy(*, allow_pickle: bool = False, trust_remote_code: bool = False) -> Iterator[LoadPolicy]:
    """Set the `LoadPolicy` for the duration of a command; the safe defaults come back afterwards."""
    global _POLICY
    before = _POLICY
    _POLICY = LoadPolicy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        yield _POLICY
    finally:
        _POLICY = before


def looks_like_path(name: str) -> bool:
    """True when `name` can only be a local path (not a hub id such as "org/model")."""
    return (
        Path(name).expanduser().exists()
        or name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or "\\" in name
    )


def check_model_folder(folder: Path, *, allow_pickle: bool | None = None) -> None:
    """Refuse a model folder `from_pretrained` would fail on, or fail on late, before any work starts.

    Checks: it is a folder; config.json is a JSON object with a model_type; the weights are complete
    safetensors (every header readable and the file as long as the header says, so a truncated copy is
    caught here rather than by a deserialisation error mid-run), or pickle weights only when allowed.
    """
    folder = Path(folder)
    allow_pickle = _POLICY.allow_pickle if allow_pickle is None else allow_pickle
    if not folder.exists():
        raise MoxError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise MoxError(f"model path {folder} is not a folder; expected a Hugging Face model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise MoxError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise MoxError(f"cannot read {config}: {e}") from None
    except json.JSONDecodeError as e:
        raise MoxError(f"{config}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise MoxError(f'{config} has no "model_type"; expected the config of a Hugging Face model')
    if not _has_safetensors(folder) and any(folder.glob("pytorch_model*.bin")):
        if allow_pickle:
            return  # transformers reads them with torch.load(weights_only=True)
        raise MoxError(
            f"model folder {folder} has only pickle weights (pytorch_model*.bin), which can run code when "
            "loaded; pass --allow-pickle to load them anyway (with torch.load(weights_only=True)) or re-save "
            "them as safetensors"
        )
    read_tensor_infos(folder)


def _has_safetensors(folder: Path) -> bool:
    return (folder / SINGLE_NAME).is_file() or (folder / INDEX_NAME).is_file()


# config.json keys that decide a model's tensors and how they are used: equal in two models we combine.
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def check_same_model_kind(ref: Path, mem: Path) -> None:
    """Refuse two folders whose configs name different architectures, sizes or vocabularies.

    Tensor names and shapes are compared elsewhere; this catches what they cannot (two architectures
    with the same tensor layout, e.g. Llama and Mistral) and says which setting differs, naming both folders.
    """
    configs = {}
    for role, folder in (("--ref", ref), ("--mem", mem)):
        try:
            configs[role] = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return  # a missing or unreadable config is reported by the folder checks
    a, b = configs["--ref"], configs["--mem"]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return
    for key in ARCHITECTURE_KEYS:  # only keys both have: configs of other transformers versions omit defaults
        if key in a and key in b and a[key] != b[key]:
            what = "vocabularies" if key == "vocab_size" else "architectures"
            raise MoxError(
                f"--ref {ref} and --mem {mem} have different {what} ({key} {a[key]!r} vs {b[key]!r}); "
                "extrapolation needs the same model"
            )


def load_model(
    name: str, dtype: torch.dtype | str, *, allow_pickle: bool | None = None, trust_remote_code: bool | None = None
):
    """`AutoModelForCausalLM` from a folder or hub id; a failure is one line naming the model.

    Safetensors only unless pickle weights are allowed (then read with torch.load(weights_only=True));
    the model's own code only with trust_remote_code. Both default to the command's `LoadPolicy`.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    allow_pickle = _POLICY.allow_pickle if allow_pickle is None else allow_pickle
    trust_remote_code = _POLICY.trust_remote_code if trust_remote_code is None else trust_remote_code
    if looks_like_path(str(name)):
        check_model_folder(Path(name).expanduser(), allow_pickle=allow_pickle)
    hf_logging.disable_progress_bar()  # our own bars report progress; per-load weight bars are noise
    try:
        return AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            weights_only=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise MoxError(f"cannot load model {name!r}: {_first_line(e)}{_not_local(name)}") from None
    except SafetensorError as e:
        raise MoxError(f"cannot load model {name!r}: corrupted safetensors weights: {_first_line(e)}") from None


def load_tokenizer(name: str, *, trust_remote_code: bool | None = None):
    """The model's tokenizer, given a pad token if it has none (see `ensure_pad_token`)."""
    from transformers import AutoTokenizer

    from mox_unlearn.data.formatting import ensure_pad_token

    trust_remote_code = _POLICY.trust_remote_code if trust_remote_code is None else trust_remote_code
    if looks_like_path(str(name)) and not Path(name).expanduser().is_dir():
        raise MoxError(f"model folder not found: {name}")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MoxError(f"cannot load tokenizer of {name!r}: {_first_line(e)}{_not_local(name)}") from None
    ensure_pad_token(tok)
    return tok


def _not_local(name: str) -> str:
    """A hint for a name that was taken for a hub id: often a local folder that does not exist (a typo)."""
    return "" if Path(name).expanduser().exists() else " (and there is no local folder of that name)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- sizes

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(s: str | int) -> int:
    """Bytes in "2GB", "256MB", "1.5GB", "512MiB" or an int; decimal units as Hugging Face uses them."""
    if isinstance(s, bool):
        raise MoxError(f"invalid size {s!r}; use e.g. 2GB, 256MB, 512MiB or a byte count")
    if isinstance(s, int):
        value = s
    else:
        m = _SIZE_RE.match(str(s))
        if m is None or m.group(2).lower() not in _UNITS:
            raise MoxError(f"invalid size {s!r}; use e.g. 2GB, 256MB, 512MiB or a byte count")
        value = round(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise MoxError(f"invalid size {s!r}; it must be positive")
    return value


# ----------------------------------------------------------------------------- reading weights


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from a safetensors header without loading data."""

    file: Path
    dtype: str  # safetensors dtype code, e.g. "F32", "BF16", "I64"
    shape: tuple[int, ...]
    offset: int  # start of the data within the file's data section; orders sequential reads
    nbytes: int


# bytes per element of each safetensors dtype code
_ST_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header (8-byte length + JSON) so checks never touch the weights.

    The header is also checked against the file: a truncated or byte-corrupted shard fails here,
    with its path, instead of deep inside a run that has already written outputs.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise MoxError(
                    f"corrupted or truncated safetensors file {path}: header length {n} exceeds the file size {size}"
                )
            header = json.loads(fh.read(n))
    except MoxError:
        raise
    except OSError as exc:
        raise MoxError(f"cannot read safetensors file {path}: {exc.strerror or exc}") from None
    except (struct.error, ValueError, RecursionError) as exc:  # too short, or a header that is not JSON
        raise MoxError(f"corrupted or truncated safetensors file {path}: unreadable header ({exc})") from None
    try:
        out = _tensor_infos(Path(path), header)
    except (KeyError, TypeError, ValueError) as exc:
        raise MoxError(f"corrupted safetensors header in {path}: {exc!r}") from None
    end = max((i.offset + i.nbytes for i in out.values()), default=0)
    if 8 + n + end != size:
        raise MoxError(
            f"corrupted or truncated safetensors file {path}: {size} bytes, the header describes {8 + n + end}"
        )
    return out


def _tensor_infos(path: Path, header: Any) -> dict[str, TensorInfo]:
    """TensorInfo per tensor of a parsed header; raises KeyError / TypeError / ValueError when malformed."""
    if not isinstance(header, dict):
        raise TypeError("the header is not a JSON object")
    out: dict[str, TensorInfo] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, stop = spec["data_offsets"]
        shape = tuple(spec["shape"])
        if not all(isinstance(v, int) and v >= 0 for v in (start, stop, *shape)) or stop < start:
            raise ValueError(f"tensor {name}: bad offsets {spec['data_offsets']} or shape {spec['shape']}")
        size = _ST_SIZES.get(spec["dtype"])  # sub-byte and newer codes: not checked
        if size is not None and (stop - start) != math.prod(shape) * size:
            raise ValueError(f"tensor {name}: {stop - start} bytes do not hold {spec['dtype']} {list(shape)}")
        out[name] = TensorInfo(path, spec["dtype"], shape, start, stop - start)
    return out


def list_weight_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from the shard index if there is one.

    Only safetensors are supported: they can be opened lazily one tensor at a time.
    """
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MoxError(f"bad shard index {index}: {exc}") from None
        files = {name: model_dir / fname for name, fname in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise MoxError(f"shard {path.name} listed in {index} is missing")
        return files
    single = model_dir / SINGLE_NAME
    if single.is_file():
        return {name: single for name in read_safetensors_header(single)}
    if any(model_dir.glob("pytorch_model*.bin")):
        raise MoxError(
            f"{model_dir} has only pytorch_model*.bin weights; safetensors are needed "
            "(re-save with model.save_pretrained(dir, safe_serialization=True))"
        )
    raise MoxError(f"no {SINGLE_NAME} or {INDEX_NAME} in {model_dir}; safetensors weights are needed")


def read_tensor_infos(model_dir: Path) -> dict[str, TensorInfo]:
    """Name -> TensorInfo for every tensor of a folder, checking the index against the shard headers."""
    files = list_weight_files(model_dir)
    infos: dict[str, TensorInfo] = {}
    for path in sorted(set(files.values())):
        for name, info in read_safetensors_header(path).items():
            if files.get(name) == path:
                infos[name] = info
    missing = [n for n in files if n not in infos]
    if missing:
        raise MoxError(f"tensor {missing[0]} listed in the index of {model_dir} is not in {files[missing[0]].name}")
    return infos


class FolderWeights(Mapping[str, torch.Tensor]):
    """A model folder's tensors by name, each read from its safetensors file only when asked for.

    Iterates in file and offset order so reads are sequential; `infos` holds the headers (names,
    shapes) so checks need not read any data. Open with `open_weights`, which closes the files.
    """

    def __init__(self, folder: Path, stack: ExitStack, infos: Mapping[str, TensorInfo] | None = None):
        self.folder, self.stack = Path(folder), stack
        self.infos = dict(infos if infos is not None else read_tensor_infos(self.folder))
        self._order = sorted(self.infos, key=lambda n: (str(self.infos[n].file), self.infos[n].offset))
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.infos[name].file
        if path not in self._handles:
            self._handles[path] = self.stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path].get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self.infos  # without reading the tensor, as Mapping's default would

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


@contextmanager
def open_weights(folders: Mapping[str, Path]) -> Iterator[dict[str, FolderWeights]]:
    """Lazy weights of several folders at once; every file handle is closed on exit."""
    with ExitStack() as stack:
        yield {name: FolderWeights(Path(f), stack) for name, f in folders.items()}


# ----------------------------------------------------------------------------- writing weights


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask (read without a lasting change)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    Freed shard tensors of a few MB stay in malloc's heap otherwise, and the resident set grows to
    about twice the shard size by fragmentation; trimming after each shard keeps it near one shard.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class _Arena:
    """One shard's worth of memory that output tensors are carved from, front to back."""

    ALIGN = 64  # bytes; keeps every tensor aligned for vectorised kernels

    def __init__(self, nbytes: int) -> None:
        self.buf = torch.empty(nbytes, dtype=torch.uint8)  # [nbytes]; pages appear on first touch
        self._view = memoryview(self.buf.numpy())
        self.used = 0

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor inside the arena, or None when it does not fit."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        start = -(-self.used // self.ALIGN) * self.ALIGN
        if nbytes == 0 or start + nbytes > len(self._view):
            return None
        self.used = start + nbytes
        # each tensor gets its own storage object over its slice, so save_file sees no sharing
        return torch.frombuffer(self._view[start : start + nbytes], dtype=dtype).view(tuple(shape))


class ArenaPool:
    """A few reusable shard-sized buffers for ShardWriter.empty(), shared by all writers of one run.

    Fresh memory costs a page fault per 4 KiB page on first touch, which is most of the CPU time of
    writing a model besides the disk write itself (more so in VMs). Cycling `count` buffers means
    each page is faulted once per run, and the resident set is at most count x shard size.
    With one buffer per writer plus one for the shard being saved, a writer never waits for one.
    """

    def __init__(self, count: int, nbytes: int) -> None:
        self.count, self.nbytes = count, nbytes
        self._free: list[_Arena] = []
        self._made = 0
        self._lock = threading.Lock()

    def acquire(self) -> _Arena | None:
        """A free buffer (made on first need), or None when all are in use: the caller allocates."""
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._made < self.count:
                self._made += 1
                return _Arena(self.nbytes)
        return None

    def release(self, arena: _Arena) -> None:
        """Return a buffer once the shard carved from it is on disk."""
        arena.used = 0
        with self._lock:
            self._free.append(arena)


def _save_shard(
    tensors: dict[str, torch.Tensor], path: Path, arena: _Arena | None = None, pool: ArenaPool | None = None
) -> None:
    """Write one shard, make it readable like any file the user creates, and free its memory."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, _umask_mode(0o666))  # save_file creates files 0600
    tensors.clear()
    if arena is not None and pool is not None:
        pool.release(arena)
    _release_freed_memory()


class ShardSaver:
    """Writes one shard at a time in a worker thread, shared by any number of ShardWriters.

    The next shard is computed while the previous one goes to disk (save_file releases the GIL), and
    since at most one shard is in flight, memory grows by at most one shard. Errors surface on the
    next `submit` or on `wait`. Use as a context manager so the thread is always joined.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mox-shard-saver")
        self._last = None

    def submit(self, job) -> None:
        """Wait for the shard in flight, then start `job()` in the background."""
        self.wait()
        self._last = self._pool.submit(job)

    def wait(self) -> None:
        """Block until the shard in flight is written; re-raise its error if it failed."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def __enter__(self) -> ShardSaver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._last is not None:
                self._last.exception()  # join quietly: the error already propagating wins
        finally:
            self._pool.shutdown(wait=True)


class ShardWriter:
    """Write tensors into size-capped safetensors shards, holding at most one shard in memory.

    The shard count is known only at the end, so shards get temp names and are renamed by `close()`
    to HF's `model-0000i-of-0000N.safetensors` (+ index), or to `model.safetensors` if one shard.
    A shard is started when adding a tensor would exceed the cap (as Hugging Face does); a tensor
    bigger than the cap gets a shard of its own. With a `saver`, shards are written in the background.
    """

    def __init__(
        self,
        out_dir: Path,
        max_shard_size: str | int = "2GB",
        *,
        saver: ShardSaver | None = None,
        arenas: ArenaPool | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cap = parse_size(max_shard_size)
        self.saver = saver
        self.arenas = arenas
        self._arena: _Arena | None = None  # the buffer this shard's empty() tensors come from
        self._unadded = 0  # tensors handed out by empty() and not yet added
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []  # (temp file, tensor names)
        self._seen: set[str] = set()
        self.total_size = 0
        self._closed = False

    def reserve(self, nbytes: int) -> None:
        """Flush now if a tensor of `nbytes` would not fit in the current shard.

        `add` makes the same decision, so shard contents do not change; calling it *before* computing
        the tensor keeps memory at one shard per writer instead of one shard plus the new tensor.
        """
        if self._pending and self._pending_bytes + nbytes > self.cap:
            self.flush()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor to fill and then `add` (before anything else is added).

        It comes from this writer's arena buffer when there is one, so no fresh memory is touched.
        Any flush this tensor causes happens now, so the tensor always lands in the current shard.
        """
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        self.reserve(nbytes)
        out = None
        if self.arenas is not None and nbytes < self.cap:
            if self._arena is None:
                self._arena = self.arenas.acquire()
            if self._arena is not None:
                out = self._arena.take(shape, dtype)
        self._unadded += 1
        return out if out is not None else torch.empty(tuple(shape), dtype=dtype)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flush the current shard first if this tensor would push it over the cap."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        if name in self._seen:
            raise ValueError(f"tensor {name} added twice")
        size = _nbytes(tensor)
        self.reserve(size)
        self._seen.add(name)
        self._unadded = max(0, self._unadded - 1)
        self._pending[name] = tensor.detach().contiguous()
        self._pending_bytes += size
        self.total_size += size
        if self._pending_bytes >= self.cap:
            self.flush()  # full (or one oversized tensor): any further add would flush anyway

    def flush(self) -> None:
        """Write the queued tensors as one shard file (now, or in the saver's thread) and let them go."""
        if not self._pending:
            return
        if self._unadded and self._arena is not None:
            # its arena is about to be recycled under it: that would corrupt the tensor
            raise RuntimeError("ShardWriter.flush() while a tensor from empty() has not been added")
        tensors, self._pending, self._pending_bytes = self._pending, {}, 0
        arena, self._arena = self._arena, None
        path = self.out_dir / f".shard-{len(self._shards) + 1:05d}.safetensors.tmp"
        self._shards.append((path, list(tensors)))
        if self.saver is None:
            _save_shard(tensors, path, arena, self.arenas)
        else:
            self.saver.submit(lambda: _save_shard(tensors, path, arena, self.arenas))

    def close(self) -> list[Path]:
        """Flush, give shards their final names and write the index; returns the shard paths."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        self.flush()
        if self.saver is not None:
            self.saver.wait()
        self._closed = True
        if not self._shards:  # nothing added: still leave a valid (empty) checkpoint
            _save_shard({}, self.out_dir / SINGLE_NAME)
            return [self.out_dir / SINGLE_NAME]
        if len(self._shards) == 1:
            final = self.out_dir / SINGLE_NAME
            os.replace(self._shards[0][0], final)
            return [final]
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        finals = []
        for i, (tmp, names) in enumerate(self._shards, start=1):
            final = self.out_dir / f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, final)
            finals.append(final)
            weight_map.update({name: final.name for name in names})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return finals

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Only a clean exit finalises; on error the caller's atomic_output_dir removes the pieces.
        if exc_type is None and not self._closed:
            self.close()
