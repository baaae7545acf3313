"""Writing weights: shard sizes ("2GB"), the shard layout of a model (which safetensors file each tensor goes
in, and where), and a model folder written to that layout piece by piece.

The layout depends only on names, dtypes and shapes, so it is fixed before any value is computed. Each file
gets its header first, and every tensor's bytes go straight to their place (`os.pwrite`) as soon as they
exist, a chunk at a time and from any thread: nothing holds a shard in memory, and computing overlaps
writing without a queue of shard buffers. safetensors' own `save_file` needs all tensors of a file in
memory at once, which is why this writer is ours. The files are ordinary safetensors (8-byte header
length, JSON header padded with spaces to 8 bytes, data without holes); the tests read them back with
safetensors and transformers.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.folders import INDEX_NAME, SINGLE_NAME

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


# safetensors' dtype code of each torch dtype it stores
ST_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True)
class Slot:
    """Where one tensor's bytes go: a file of the folder and the absolute byte range in it."""

    file: str
    start: int
    nbytes: int


@dataclass(frozen=True)
class ShardLayout:
    """The weight files of one model folder: each file's header bytes, each tensor's slot, and the index
    (None for a single `model.safetensors`)."""

    headers: dict[str, bytes]
    slots: dict[str, Slot]
    index: dict | None


def plan_shards(tensors: Sequence[tuple[str, str, Sequence[int], int]], cap: str | int) -> ShardLayout:
    """Lay out `(name, safetensors dtype code, shape, nbytes)` tensors, in the given order, in files of at
    most `cap` bytes of data: a file is closed when the next tensor would push it over the cap, and a tensor
    of cap bytes or more gets a file of its own (Hugging Face's rule). One file is `model.safetensors`,
    several are `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`."""
    cap = parse_size(cap)
    groups: list[list[tuple[str, str, Sequence[int], int]]] = []
    filled = cap  # bytes in the last group; starts "full" so the first tensor opens one
    for t in tensors:
        if filled + t[3] > cap or filled >= cap:
            groups.append([])
            filled = 0
        groups[-1].append(t)
        filled += t[3]
    if not groups:
        groups = [[]]  # nothing to write: still a valid (empty) checkpoint
    n = len(groups)
    names = [SINGLE_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    headers, slots = {}, {}
    for fname, group in zip(names, groups):
        entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, code, shape, nbytes in group:
            entries[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as safetensors writes it
        headers[fname] = len(text).to_bytes(8, "little") + text
        base = len(headers[fname])
        for name, *_ in group:
            begin, end = entries[name]["data_offsets"]  # type: ignore[index]
            slots[name] = Slot(fname, base + begin, end - begin)
    index = None
    if n > 1:
        total = sum(slot.nbytes for slot in slots.values())
        weight_map = {name: slot.file for name, slot in sorted(slots.items())}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return ShardLayout(headers, slots, index)


def layout_for(tensors: dict[str, torch.Tensor], cap: str | int) -> ShardLayout:
    """The layout of in-memory tensors, in the dict's order."""
    return plan_shards(
        [(n, ST_CODES[t.dtype], tuple(t.shape), t.numel() * t.element_size()) for n, t in tensors.items()], cap
    )


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (copied only if it is not contiguous), as safetensors stores them."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class ShardedFolder:
    """A model folder's weight files, created to `layout` and open for writing from any thread.

    `write(name, data, at)` puts bytes at their place in a tensor's slot; `close()` checks that every slot
    was filled exactly, closes the files and writes the index. Files get the umask's ordinary mode. Use as
    a context manager so the files are always closed (an error leaves them for the caller's temp folder).
    """

    def __init__(self, folder: Path, layout: ShardLayout) -> None:
        self.folder, self.layout = Path(folder), layout
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}
        self._written = dict.fromkeys(layout.slots, 0)
        self._lock = threading.Lock()
        for fname, header in layout.headers.items():
            fd = os.open(self.folder / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            self._fds[fname] = fd
            _pwrite_all(fd, memoryview(header), 0)

    def write(self, name: str, data: memoryview | torch.Tensor, at: int = 0) -> None:
        """Write `data` (bytes, or a tensor's bytes) at byte `at` of tensor `name`'s slot."""
        if isinstance(data, torch.Tensor):
            data = tensor_bytes(data)
        slot = self.layout.slots[name]
        if at < 0 or at + data.nbytes > slot.nbytes:
            raise ValueError(f"{name}: bytes {at}..{at + data.nbytes} fall outside its {slot.nbytes}-byte slot")
        _pwrite_all(self._fds[slot.file], data, slot.start + at)
        with self._lock:
            self._written[name] += data.nbytes

    def close(self) -> None:
        """Close the files, refuse a slot written short or twice, and write the index."""
        self._close_files()
        wrong = [n for n, done in self._written.items() if done != self.layout.slots[n].nbytes]
        if wrong:
            n = wrong[0]
            raise RuntimeError(f"{n}: {self._written[n]} of {self.layout.slots[n].nbytes} bytes written")
        if self.layout.index is not None:
            (self.folder / INDEX_NAME).write_text(json.dumps(self.layout.index, indent=2) + "\n")

    def _close_files(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> ShardedFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_files()


def save_sharded(tensors: dict[str, torch.Tensor], folder: Path, cap: str | int = "2GB") -> list[Path]:
    """Write in-memory tensors as a model folder's safetensors files (sharded at `cap`); the files written."""
    layout = layout_for(tensors, cap)
    with ShardedFolder(folder, layout) as out:
        for name, t in tensors.items():
            out.write(name, t)
    return [Path(folder) / f for f in layout.headers]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """os.pwrite until every byte is written (a write may be short)."""
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
