"""Writing weights: shard sizes ("2GB"), and a shard writer that fills one shard-sized arena at a time and
saves it in the background (safetensors shards with their index).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.atomic import umask_mode
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


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


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
    os.chmod(path, umask_mode(0o666))  # save_file creates files 0600
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
