"""An image folder decoded once: into memory when the images fit beside training
(:func:`decode_all`), else into uint8 ``.npy`` files in memtune's cache, memory-mapped
(:func:`decode_to_cache`).

Decoding a batch at a time every epoch costs the cores training needs (a PNG or JPEG
decode is far slower than a copy of its pixels). Decoded once to disk, every later epoch
and run reads rows as ``.npy`` shards are read: mapped file pages, the kernel's to drop,
so a folder larger than the budget still trains and the budget still holds. The cache entry
is keyed by every file's name, size and modification time and by the decoded shape, so a
changed folder is decoded again, and the entry it replaces is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from memtune.core.constants import BLOCK_ROWS
from memtune.core.errors import MemtuneError
from memtune.core.paths import cache_dir
from memtune.data.arrays import arrays_info
from memtune.data.images import ORDER_SEED, class_folders, folder_of, image_files, unreadable
from memtune.data.npy import MappedRows
from memtune.data.scan import DataInfo
from memtune.data.sources import shard_dataset
from memtune.data.tfdata import DatasetBatches
from memtune.proc import failpoints, progress

FORMAT = 1  # the cache entry's layout; a change decodes every folder again
DISK_RESERVE = 1 << 30  # free disk a decoded cache never takes
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "hugetlbfs"}  # their files are memory, not disk


def decode_all(info: DataInfo, fp: Any) -> DataInfo:
    """The folder decoded once into arrays (an in-memory plan): each feed's array filled a
    block at a time, so decoding holds the images plus one block."""
    n = info.num_samples
    kind = "images" if folder_of(info) is not None else "samples of the pipeline"
    progress.report("stage", what=f"decoding {n:,} {kind} once into memory")
    out = {f.columns[0]: np.empty((n, *f.shape), f.dtype) for f in fp.feeds}
    at = 0
    for rows in _decoded(info, fp, BLOCK_ROWS):
        for column, values in rows.items():
            out[column][at : at + len(values)] = values
        at += len(next(iter(rows.values())))
    return replace(arrays_info(out, allow_nonfinite=True), warnings=info.warnings)


def decode_to_cache(info: DataInfo, fp: Any, batch_size: int) -> DataInfo | None:
    """The folder as memory-mapped arrays of its decoded images (a streaming plan), decoded
    now unless the cache holds them; ``batch_size`` rows are decoded at a time, as training
    would hold them. None where the cache's disk lacks room or keeps files in memory."""
    folder = folder_of(info)
    assert folder is not None, "decode_to_cache takes an image folder"
    types = {f.columns[0]: _stored_type(info, f) for f in fp.feeds}
    shapes = {f.columns[0]: (info.num_samples, *f.shape) for f in fp.feeds}
    need = sum(int(np.prod(s)) * types[c].itemsize for c, s in shapes.items())
    root = cache_dir() / "decoded"
    root.mkdir(parents=True, exist_ok=True)
    if not has_room(root, need):
        return None
    entry = root / f"{_digest(str(folder.resolve()))[:12]}-{_key(folder, shapes, types)}"
    if not _complete(entry, shapes, types):
        what = f"decoding {info.num_samples:,} images once into {root}"
        progress.report("stage", what=what)
        _write(entry, info, fp, batch_size, shapes, types)
    _drop_older(entry)
    columns = {c: MappedRows([np.load(entry / f"{c}.npy", mmap_mode="r")]) for c in shapes}
    decoded = arrays_info(columns, allow_nonfinite=True)  # type: ignore[arg-type]
    return replace(decoded, warnings=info.warnings)


def has_room(root: Path, need: int, mounts: str | None = None) -> bool:
    """Whether ``need`` bytes fit on ``root``'s disk beside :data:`DISK_RESERVE`, on a
    filesystem that is disk; ``mounts``: ``/proc/self/mounts``'s text (read when None)."""
    if shutil.disk_usage(root).free < need + DISK_RESERVE:
        return False
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return True  # off Linux: no tmpfs to tell apart
    return filesystem(root.resolve(), mounts) not in MEMORY_FILESYSTEMS


def filesystem(path: Path, mounts: str) -> str:
    """The type of the filesystem ``path`` lies on: the longest mount point above it."""
    best, kind = -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def _stored_type(info: DataInfo, feed: Any) -> np.dtype:
    """A column's own type (uint8 pixels), not the feed's: the model casts per batch."""
    item = info.columns[feed.columns[0]].item
    return np.dtype(item) if item else np.dtype(feed.dtype)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _key(folder: Path, shapes: dict[str, tuple[int, ...]], types: dict[str, np.dtype]) -> str:
    """Every file's path, size and modification time, and what it decodes to."""
    files = []
    for cls in class_folders(folder):
        for path in image_files(cls):
            stat = path.stat()
            files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    decoded = {c: [list(shapes[c]), types[c].str] for c in shapes}
    return _digest(json.dumps([FORMAT, ORDER_SEED, decoded, files]))[:20]


def _complete(entry: Path, shapes: dict[str, tuple[int, ...]], types: dict[str, Any]) -> bool:
    try:
        arrays = {c: np.load(entry / f"{c}.npy", mmap_mode="r") for c in shapes}
    except (OSError, ValueError):
        return False
    return all(a.shape == shapes[c] and a.dtype == types[c] for c, a in arrays.items())


def _write(
    entry: Path,
    info: DataInfo,
    fp: Any,
    batch_size: int,
    shapes: dict[str, tuple[int, ...]],
    types: dict[str, np.dtype],
) -> None:
    """Decode into a folder of this process's own, then rename it into place (a killed run
    leaves no half entry)."""
    _prune(entry.parent)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "source").write_text(str(Path(folder_of(info) or "").resolve()))
    files = {c: open(tmp / f"{c}.npy", "wb") for c in shapes}  # noqa: SIM115
    try:
        for c, f in files.items():
            header = {"descr": types[c].str, "fortran_order": False, "shape": shapes[c]}
            np.lib.format.write_array_header_2_0(f, header)
        for rows in _decoded(info, fp, batch_size):
            for c, values in rows.items():
                files[c].write(np.ascontiguousarray(values, types[c]).tobytes())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for f in files.values():
            f.close()
    failpoints.hit("decode-written", cut=tmp / f"{next(iter(shapes))}.npy")
    if _complete(entry, shapes, types):  # another run wrote it meanwhile (and may map it)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    failpoints.hit("decode-landed")


def _drop_older(entry: Path) -> None:
    """The entries of the same folder's earlier contents (a run killed after writing the new
    one may have left them)."""
    prefix = entry.name.split("-")[0] + "-"
    for old in entry.parent.iterdir():
        if old != entry and old.name.startswith(prefix):
            shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path) -> None:
    """Drop the entries of folders that are gone, and what killed runs left half written."""
    for old in root.iterdir():
        if old.name.startswith("."):
            pid = old.name.rsplit(".", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
            continue
        try:
            source = (old / "source").read_text()
        except OSError:
            continue
        if not Path(source).is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _decoded(info: DataInfo, fp: Any, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The folder's decoded rows, ``rows`` at a time, keyed by column."""
    column = {f.name: f.columns[0] for f in fp.feeds}
    source = DatasetBatches(
        shard_dataset(info.source.shards[0]), fp, rows, num_samples=info.num_samples, batched=False
    )
    try:
        for inputs, targets in source.numpy():
            yield {column[name]: values for name, values in {**inputs, **targets}.items()}
    except Exception as exc:
        named = decode_failure(exc, info)
        if named is None:
            raise
        raise named from None


def decode_failure(exc: BaseException, info: DataInfo) -> MemtuneError | None:
    """TensorFlow's decode error, which names the op, as one line naming the image folder's
    file it could not decode; None for any other error."""
    folder = folder_of(info)
    causes: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in causes:  # training wraps it (TrainingFailed)
        causes.append(at)
        at = at.__cause__ or at.__context__
    if folder is None or all(type(c).__name__ != "InvalidArgumentError" for c in causes):
        return None
    bad = unreadable(folder)
    return MemtuneError(f"{bad[0]}: not a readable image ({bad[1]})") if bad else None
