"""Reading weights tensor by tensor: safetensors headers, the weight files of a folder, and a lazy mapping
of name -> tensor over every shard, so nothing holds a whole model.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.folders import INDEX_NAME, SINGLE_NAME


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from a safetensors header without loading data."""

    file: Path
    dtype: str  # safetensors dtype code, e.g. "F32", "BF16", "I64"
    shape: tuple[int, ...]
    offset: int  # start of the data within the file's data section; orders sequential reads
    nbytes: int

    @property
    def floating(self) -> bool:
        """A floating-point tensor (F64, F32, F16, BF16, F8_*): the ones extrapolation moves."""
        return self.dtype.startswith(("F", "BF"))


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
            if files.get(name) != path:  # the index is a claim about the shards: they must agree both ways
                where = "does not list it" if name not in files else f"places it in {files[name].name}"
                raise MoxError(
                    f"{path} holds tensor {name} but the index of {model_dir} {where}: a stale or edited "
                    f"{INDEX_NAME}; re-save the model"
                )
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


def _shape(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def check_same_tensors(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    names: tuple[str, str] = ("ref", "mem"),
    where: str | None = None,
    dtypes: bool = True,
) -> None:
    """Refuse, in one line, two models whose tensors differ: the names (a few listed, with a hint where only
    lm_head differs), then each shape, then each dtype. Values are tensors, TensorInfo headers, or shapes
    (None: not known yet, not compared). Combining such models (extrapolating, comparing deltas) is
    meaningless, so every tool that does checks here first."""
    first, second = names
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing or extra:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        parts = [f"{len(missing)} in {first} but not {second} ({few(missing)})"] if missing else []
        parts += [f"{len(extra)} in {second} but not {first} ({few(extra)})"] if extra else []
        hint = " (tie_word_embeddings differs?)" if "lm_head.weight" in missing + extra else ""
        raise MoxError(f"{where or f'{first} and {second}'}: different tensor names: {'; '.join(parts)}{hint}")
    for name, x in a.items():
        y = b[name]
        sx, sy = _shape(x), _shape(y)
        if sx is not None and sy is not None and sx != sy:
            raise MoxError(f"tensor {name}: shape {list(sx)} in {first} but {list(sy)} in {second}")
        dx, dy = getattr(x, "dtype", None), getattr(y, "dtype", None)
        if dtypes and dx is not None and dy is not None and dx != dy:
            raise MoxError(f"tensor {name}: dtype {dx} in {first} but {dy} in {second}")
