"""A folder of images in class subfolders — the layout ``keras.utils.image_dataset_from_directory``
reads — as a pipeline of decoded images, which :mod:`memtune.data.decoded` decodes once
(into memory, or into memtune's cache on disk), or which streams, one decode per image per
epoch, where neither is possible.

Every file's header is read when the folder is read (in Python: no TensorFlow in the
planning process), so a file that is no image, an empty class or images of several sizes
fail there, in one line naming the file; a file damaged past its header fails when decoded. Images
stay uint8 (1 B a value) until the model casts them, as ``Rescaling`` does.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memtune.core.errors import MemtuneError
from memtune.data.scan import ColumnInfo, DataInfo
from memtune.data.sources import Shard, Source
from memtune.proc import tf as _tf

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
DECODERS = 2  # images decoded at once, in order: a core's worth of decoding beside training
ORDER_SEED = 1337  # the files' fixed, shuffled order: classes mixed in every batch


@dataclass(frozen=True)
class ImageFolder:
    """The folder as the user named it, with the options that shape its images."""

    path: Path
    image_size: tuple[int, int] | None
    color_mode: str | None


def is_image_folder(data: Any) -> bool:
    """A folder whose subfolders hold images, and no CSV / Parquet shards of its own."""
    if not isinstance(data, str | os.PathLike) or not Path(data).is_dir():
        return False
    path = Path(data)
    if any(p.suffix.lower() in (".csv", ".parquet", ".pq") for p in path.iterdir()):
        return False
    return any(image_files(d) for d in class_folders(path))


def class_folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
    )


def read_folder(
    folder: ImageFolder, input_name: str, declared: tuple[int | None, ...], target: str
) -> DataInfo:
    """Read every image's header (refusing what cannot train) and describe the folder as a
    pipeline of ``(image, class id)``, built when first read; ``declared``: the model
    input's shape."""
    classes = class_folders(folder.path)
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = image_files(cls)
        if not found:
            raise MemtuneError(
                f"{cls}: class folder holds no images ({' '.join(SUFFIXES)}); remove it or "
                "add its images"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    channels = _channels(folder.color_mode, declared)
    sizes = _header_sizes(files)
    height, width = _size(folder, declared, files, sizes)
    order = np.random.default_rng(ORDER_SEED).permutation(len(files))
    paths = [str(files[i]) for i in order]
    ids = np.asarray(labels, np.int32)[order]
    resize = any(s != (height, width) for s in sizes)

    def build() -> Any:  # TensorFlow is loaded only when the images are read for training
        tf = _tf.tensorflow()

        def load(path: Any, label: Any) -> Any:
            image = tf.io.decode_image(tf.io.read_file(path), channels, expand_animations=False)
            if resize:
                image = tf.image.resize(image, (height, width))
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            return tf.ensure_shape(image, (height, width, channels)), label

        slices = tf.data.Dataset.from_tensor_slices((paths, ids))
        return slices.map(load, num_parallel_calls=DECODERS, deterministic=True)

    where = str(folder.path)
    shard = Shard(where, "dataset", path=folder.path, build=build)  # path: a folder's
    source = Source(where, "dataset", (shard,))
    shape = (height, width, channels)
    columns = {
        input_name: ColumnInfo(input_name, False, True, 1, shape=shape, item="uint8"),
        target: ColumnInfo(target, False, True, 1),
    }
    notes = [
        f"{where}: {len(files):,} images in {len(classes)} classes "
        f"({', '.join(c.name for c in classes[:6])}{', …' if len(classes) > 6 else ''}), "
        f"decoded as uint8 {height}×{width}×{channels}" + (" (resized)" if resize else ""),
    ]
    return DataInfo(source, columns, len(files), (len(files),), notes)


def folder_of(info: DataInfo) -> Path | None:
    """The image folder ``info`` reads (its pipeline memtune builds), or None: any other
    data, the caller's own pipeline included."""
    shard = info.source.shards[0]
    return shard.path if info.source.kind == "dataset" and shard.path is not None else None


def unreadable(folder: Path) -> tuple[Path, str] | None:
    """The first image of ``folder`` TensorFlow cannot decode, and why: a file damaged past
    its header, found after a decode failed (the pipeline's error names no file)."""
    tf = _tf.tensorflow()
    for cls in class_folders(folder):
        for path in image_files(cls):
            try:
                tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
            except tf.errors.InvalidArgumentError as exc:
                why = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\bname:\s*$", "", exc.message).strip()
                return path, why.splitlines()[0] if why else type(exc).__name__
    return None


def _channels(mode: str | None, declared: tuple[int | None, ...]) -> int:
    if mode is not None:
        return CHANNELS[mode]
    last = declared[-1] if len(declared) == 4 else None
    return last if last in (1, 3, 4) else 3


def _header_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """Each image's (height, width) from its header, read in Python: checking a folder
    loads no TensorFlow into the planning process (its ~250 MiB would sit beside the
    trials). A file with no PNG, JPEG, BMP or GIF header is named."""
    sizes = []
    for path in files:
        try:
            sizes.append(header_size(path.read_bytes()))
        except (OSError, ValueError, struct.error) as exc:
            raise MemtuneError(f"{path}: not a readable image ({exc})") from None
    return sizes


def header_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a PNG, JPEG, BMP or GIF from its first bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM":
        width, height = struct.unpack("<ii", data[18:26])
    elif data[:2] == b"\xff\xd8":
        height, width = _jpeg_size(data)
    else:
        raise ValueError("no PNG, JPEG, BMP or GIF header")
    if width == 0 or height == 0:
        raise ValueError("an image of no pixels")
    return abs(int(height)), abs(int(width))


def _jpeg_size(data: bytes) -> tuple[int, int]:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            raise ValueError("a damaged JPEG header")
        marker = data[at + 1]
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(height), int(width)
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    raise ValueError("a JPEG header without a frame")


def _size(
    folder: ImageFolder,
    declared: tuple[int | None, ...],
    files: list[Path],
    sizes: list[tuple[int, int]],
) -> tuple[int, int]:
    """--image-size, else the model's declared size, else the one size every image has."""
    if folder.image_size is not None:
        return folder.image_size
    if len(declared) == 4 and declared[1] is not None and declared[2] is not None:
        return declared[1], declared[2]
    odd = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
    if odd is not None:
        (h0, w0), (h1, w1) = sizes[0], sizes[odd]
        raise MemtuneError(
            f"images differ in size ({files[0]}: {h0}×{w0}, {files[odd]}: {h1}×{w1}) and the "
            "model does not fix one; give --image-size H,W"
        )
    return sizes[0]
