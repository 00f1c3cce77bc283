"""Images and other N-D samples: the caller's numpy arrays, tf.data pipelines of N-D
elements, and folders of images in class subfolders — planned, fed and trained for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import memtune
from memtune.app.demo import png
from memtune.core.errors import MemtuneError
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.arrays import array_sources, arrays_info, write_array_rows
from memtune.data.footprint import footprint
from tests.conftest import write_factory

SIDE = 12
CONVNET = f"""
image = keras.Input(({SIDE}, {SIDE}, 3), dtype="uint8", name="image")
x = keras.layers.Rescaling(1 / 255)(image)
x = keras.layers.RandomFlip("horizontal")(x)  # augmentation runs in trials and in fit
x = keras.layers.Conv2D(8, 3, activation="relu")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
m = keras.Model(image, keras.layers.Dense(3, activation="softmax", name="label")(x))
m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
return m"""
ANY_SIZE = CONVNET.replace(f"({SIDE}, {SIDE}, 3)", "(None, None, 3)")
FLAT = """
flat = keras.Input((432,), name="image")
x = keras.layers.Reshape((12, 12, 3))(flat)
x = keras.layers.Conv2D(4, 3)(x)
x = keras.layers.GlobalAveragePooling2D()(x)
m = keras.Model(flat, keras.layers.Dense(1, name="label")(x))
m.compile("adam", "mse")
return m"""


def images(n: int, side: int = SIDE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 RGB images whose brightness says their class (0-2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    pixels = rng.integers(0, 60, (n, side, side, 3)) + labels[:, None, None, None] * 90
    return pixels.astype(np.uint8), labels


def write_folder(root: Path, counts: dict[str, int], side: int = SIDE) -> Path:
    """PNGs in class folders; the k-th class named is 85 × k bright (plus noise up to 20)."""
    rng = np.random.default_rng(0)
    for k, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 21, (side, side, 3)) + 85 * k
            (root / name / f"{i}.png").write_bytes(png(pixels.astype(np.uint8)))
    return root


def _sig(shape: tuple[int | None, ...]) -> ModelSignature:
    return ModelSignature((TensorSpec("image", shape, "uint8"),), (TensorSpec("label", (None,)),))


# ---------------------------------------------------------------- the feed, without TF


def test_an_image_feed_keeps_its_shape_and_uint8() -> None:
    x, y = images(10)
    info = arrays_info({"image": x, "label": y}, allow_nonfinite=False)
    fp = footprint(_sig((None, SIDE, SIDE, 3)), info)
    (feed,) = fp.inputs
    assert (feed.shape, feed.dtype, feed.nbytes) == ((SIDE, SIDE, 3), "uint8", SIDE * SIDE * 3)
    assert fp.per_sample_bytes == SIDE * SIDE * 3 + 4  # the int64 labels are fed as int32


def test_a_flat_input_takes_images_reshaped_and_a_wrong_shape_is_one_line() -> None:
    x, y = images(4)
    info = arrays_info({"image": x, "label": y}, allow_nonfinite=False)
    fp = footprint(_sig((None, SIDE * SIDE * 3)), info)
    assert fp.inputs[0].shape == (SIDE * SIDE * 3,)
    assert any("reshaped" in n for n in fp.notes)
    with pytest.raises(MemtuneError, match=r"has shape \(None, 28, 28, 1\) but 'image' holds"):
        footprint(_sig((None, 28, 28, 1)), info)


def test_nan_in_float_images_names_the_row() -> None:
    x = np.zeros((6, 4, 4, 1))
    x[4, 1, 2, 0] = np.nan
    with pytest.raises(MemtuneError, match="'image' row 4 holds NaN"):
        arrays_info({"image": x, "label": np.zeros(6)}, allow_nonfinite=False)


def test_array_batches_see_every_row_once_an_epoch_without_copying_the_arrays() -> None:
    x, y = images(103)
    x[:, 0, 0, 0] = np.arange(103)  # each image's id
    info = arrays_info({"image": x, "label": y}, allow_nonfinite=False)
    fp = footprint(_sig((None, SIDE, SIDE, 3)), info)
    train, held = array_sources(info, fp, 10, training=93, shuffle=True, seed=1)
    assert np.shares_memory(train.inputs["image"], x)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        seen = [int(v) for i in range(len(train)) for v in train[i][0]["image"][:, 0, 0, 0]]
        assert sorted(seen) == list(range(93)), epoch
        assert train[0][0]["image"].dtype == np.uint8
        assert train[0][1]["label"].dtype == np.int32
    assert held is not None
    assert sorted(int(v) for v in held[0][0]["image"][:, 0, 0, 0]) == list(range(93, 103))
    train.set_epoch(0)
    first = [int(v) for v in train[0][0]["image"][:, 0, 0, 0]]
    train.resize(4, epoch=0, start=10)  # a smaller batch mid-epoch: the rest, once
    rest = [int(v) for i in range(len(train)) for v in train[i][0]["image"][:, 0, 0, 0]]
    assert sorted(first + rest) == list(range(93))


def test_trial_rows_are_the_callers_first_rows_at_the_feed_types(tmp_path: Path) -> None:
    x, y = images(5)
    info = arrays_info({"image": x.astype(np.float64), "label": y}, allow_nonfinite=False)
    fp = footprint(_sig((None, SIDE, SIDE, 3)), info)
    with np.load(write_array_rows(info, fp, 8, tmp_path / "rows.npz")) as saved:
        image, label = saved["in:image"], saved["out:label"]
    assert image.shape == (8, SIDE, SIDE, 3) and image.dtype == np.float32
    assert np.array_equal(image[5:], x[:3].astype(np.float32))  # fewer rows: repeated
    assert label.dtype == np.int32


# ---------------------------------------------------------------- planning and training


@pytest.mark.slow
def test_numpy_images_plan_in_memory_count_the_callers_arrays_and_train(tmp_path: Path) -> None:
    model = write_factory(tmp_path / "m.py", CONVNET)
    x, y = images(240)
    wide = x.astype(np.float64)  # 8 B a value in the caller's hands, fed as float32
    plan = memtune.suggest(model, (wide, y), budget="2GiB")
    assert plan.mode == "in-memory"
    assert plan.per_sample_bytes >= wide[0].nbytes  # the caller's arrays, not the fed copy
    assert any("caller's arrays" in r for r in plan.reasons)
    history = memtune.fit(
        model, (wide, y), budget="2GiB", epochs=2, plan=plan, validation_data=(x[:48], y[:48])
    )
    assert len(history.history["loss"]) == 2 and "val_loss" in history.history
    assert history.plan.batch_size == plan.batch_size  # suggest's plan, not planned again
    assert history.peak_bytes <= int(2 * 2**30 * 0.9)


@pytest.mark.slow
def test_a_dict_of_images_and_a_flat_model_train(tmp_path: Path) -> None:
    model = write_factory(tmp_path / "flat.py", FLAT)
    x, y = images(64)
    history = memtune.fit(
        model, {"image": x, "label": y.astype(np.float32)}, budget="2GiB", epochs=1
    )
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.slow
def test_a_tf_data_pipeline_of_images_streams_and_mixed_shapes_are_one_line(
    tmp_path: Path,
) -> None:
    import keras
    import tensorflow as tf

    model = write_factory(tmp_path / "m.py", CONVNET)
    x, y = images(96)
    plan = memtune.suggest(model, tf.data.Dataset.from_tensor_slices((x, y)), analytic=True)
    assert plan.mode == "streaming" and plan.per_sample_bytes == SIDE * SIDE * 3 + 4
    history = memtune.fit(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), budget="2GiB", epochs=1
    )
    assert len(history.history["loss"]) == 1

    class Pictures(keras.utils.PyDataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]

    history = memtune.fit(model, Pictures(), budget="2GiB", epochs=1)
    assert history.plan.per_sample_bytes == SIDE * SIDE * 3 + 4

    def mixed():  # type: ignore[no-untyped-def]
        for i in range(6):
            yield np.zeros((SIDE if i < 3 else SIDE - 2, SIDE, 3), np.uint8), 1

    spec = (tf.TensorSpec((None, SIDE, 3), tf.uint8), tf.TensorSpec((), tf.int64))
    ragged = tf.data.Dataset.from_generator(mixed, output_signature=spec)
    with pytest.raises(MemtuneError, match=r"'image' holds samples of different shapes"):
        memtune.suggest(write_factory(tmp_path / "a.py", ANY_SIZE), ragged, analytic=True)


@pytest.mark.slow
def test_an_image_folder_is_decoded_once_or_streamed_and_learns(tmp_path: Path) -> None:
    model = write_factory(tmp_path / "m.py", ANY_SIZE)
    folder = write_folder(tmp_path / "images", {"dark": 40, "mid": 40, "light": 40}, side=16)
    plan = memtune.suggest(model, str(folder), image_size=(SIDE, SIDE), budget="2GiB")
    assert plan.mode == "in-memory" and plan.per_sample_bytes == SIDE * SIDE * 3 + 4
    assert any("120 images in 3 classes" in r and "(resized)" in r for r in plan.reasons)
    labelled = [
        (float(image.mean()), int(label))
        for x, y in memtune.batches(
            str(folder), target="label", batch_size=32, model=model, image_size=(SIDE, SIDE)
        )
        for image, label in zip(x["image"], y["label"], strict=True)
    ]
    assert len(labelled) == 120 and {label for _, label in labelled} == {0, 1, 2}
    # class ids in sorted folder order (dark, light, mid); brightness by the order written
    shade = {0: 0, 1: 2, 2: 1}
    assert all(abs(mean - 85 * shade[label] - 10) < 30 for mean, label in labelled)
    history = memtune.fit(
        model, str(folder), image_size=(SIDE, SIDE), budget="2GiB", epochs=3, plan=plan,
        validation_data=str(folder),
    )  # fmt: skip
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_accuracy" in history.history
    streamed = memtune.fit(
        model, str(folder), image_size=(SIDE, SIDE), budget="2GiB", mode="streaming", epochs=1
    )  # decoded a batch at a time
    assert streamed.plan.mode == "streaming" and np.isfinite(streamed.history["loss"][0])


def test_a_streamed_image_folder_is_decoded_once_into_the_cache(tmp_path: Path) -> None:
    from memtune.core.paths import cache_dir

    model = write_factory(tmp_path / "m.py", CONVNET)
    folder = write_folder(tmp_path / "images", {"dark": 30, "light": 30})
    first = memtune.fit(model, str(folder), budget="2GiB", mode="streaming", epochs=2)
    assert first.plan.mode == "streaming" and len(first.history["loss"]) == 2
    (entry,) = (cache_dir() / "decoded").iterdir()
    pixels = np.load(entry / "image.npy", mmap_mode="r")
    labels = np.load(entry / "label.npy")
    assert pixels.shape == (60, SIDE, SIDE, 3) and pixels.dtype == np.uint8
    assert sorted(labels.tolist()) == [0] * 30 + [1] * 30  # every image once
    assert all(abs(float(x.mean()) - 10 - 85 * y) < 5 for x, y in zip(pixels, labels, strict=True))
    written = (entry / "image.npy").stat().st_mtime_ns
    again = memtune.fit(model, str(folder), budget="2GiB", epochs=1, plan=first.plan)
    assert np.isfinite(again.history["loss"][0])
    assert (entry / "image.npy").stat().st_mtime_ns == written  # read, not decoded again
    changed = folder / "dark" / "0.png"
    changed.write_bytes(png(np.full((SIDE, SIDE, 3), 200, np.uint8)))
    memtune.fit(model, str(folder), budget="2GiB", epochs=1, plan=first.plan)
    (renewed,) = (cache_dir() / "decoded").iterdir()  # the old entry is gone
    assert renewed != entry and np.load(renewed / "image.npy").max() == 200


def test_the_decoded_cache_needs_disk_that_is_not_memory(tmp_path: Path) -> None:
    from memtune.data.decoded import filesystem, has_room

    mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /scratch tmpfs rw 0 0\n"
    assert filesystem(Path("/scratch/cache/decoded"), mounts) == "tmpfs"
    assert filesystem(Path("/scratchpad"), mounts) == "ext4"  # a prefix is not a parent
    assert filesystem(Path("/home/u/.cache"), mounts) == "ext4"
    here = f"/dev/vda {tmp_path.anchor} ext4 rw 0 0\ntmpfs {tmp_path} tmpfs rw 0 0\n"
    assert not has_room(tmp_path, 1, here)  # files there are memory
    assert has_room(tmp_path, 1, here.splitlines()[0])
    assert not has_room(tmp_path, 1 << 60, here.splitlines()[0])  # no disk that large


def test_a_folder_holds_out_a_validation_split_unless_it_streams_undecoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_factory(tmp_path / "m.py", CONVNET)
    folder = write_folder(tmp_path / "images", {"dark": 30, "light": 30})
    kw = {"budget": "2GiB", "mode": "streaming", "validation_split": 0.25}
    history = memtune.fit(model, str(folder), epochs=1, **kw)
    assert np.isfinite(history.history["val_loss"][0])
    monkeypatch.setattr("memtune.data.decoded.has_room", lambda *a: False)
    with pytest.raises(MemtuneError, match=r"--validation-split: .*images.* streams undecoded"):
        memtune.fit(model, str(folder), epochs=1, plan=history.plan, **kw)


def test_an_image_damaged_past_its_header_is_named_when_streamed_undecoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_factory(tmp_path / "m.py", CONVNET)
    folder = write_folder(tmp_path / "images", {"dark": 10, "light": 10})
    whole = (folder / "light" / "4.png").read_bytes()
    (folder / "light" / "4.png").write_bytes(whole[: len(whole) // 2])  # its header kept
    monkeypatch.setattr("memtune.data.decoded.has_room", lambda *a: False)  # decoded per batch
    with pytest.raises(MemtuneError, match=r"light/4\.png: not a readable image \(Invalid PNG"):
        memtune.fit(model, str(folder), budget="2GiB", mode="streaming", epochs=1, analytic=True)


def test_cache_entries_of_gone_folders_and_killed_runs_are_dropped(tmp_path: Path) -> None:
    import os

    from memtune.data.decoded import _prune

    root = tmp_path / "decoded"
    for name, source in (("kept", tmp_path), ("gone", tmp_path / "deleted-folder")):
        (root / name).mkdir(parents=True)
        (root / name / "source").write_text(str(source))
    (root / ".half.999999999").mkdir()  # written by a run that was killed
    (root / f".writing.{os.getpid()}").mkdir()  # being written by a live run
    _prune(root)
    assert sorted(p.name for p in root.iterdir()) == [f".writing.{os.getpid()}", "kept"]


# ---------------------------------------------------------------- .npy shards


def write_npy(root: Path, shards: int, rows: int = 20) -> Path:
    """``root/image/N.npy`` and ``root/label/N.npy``, image ids in pixel (0, 0, 0)."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i in range(shards):
        x, y = images(rows, seed=i)
        x[:, 0, 0, 0] = np.arange(i * rows, (i + 1) * rows)
        np.save(root / "image" / f"{i}.npy", x)
        np.save(root / "label" / f"{i}.npy", y)
    return root


def test_mapped_rows_slice_lazily_and_gather_across_shards(tmp_path: Path) -> None:
    from memtune.data.npy import MappedRows

    parts = [np.arange(i * 10, (i + 1) * 10).reshape(5, 2) for i in range(3)]
    rows = MappedRows(parts)
    assert rows.shape == (15, 2) and rows.nbytes == 0
    window = rows[3:12]
    assert isinstance(window, MappedRows) and window.shape == (9, 2)
    assert np.array_equal(np.asarray(window), np.concatenate(parts)[3:12])
    picked = np.array([14, 0, 7, 5])
    assert np.array_equal(rows[picked], np.concatenate(parts)[picked])
    assert rows.reshape(15, 2, 1)[np.array([6])].shape == (1, 2, 1)


def test_npy_shards_stream_every_row_once_in_numeric_order(tmp_path: Path) -> None:
    from memtune.data.npy import read_npy

    root = write_npy(tmp_path / "npy", 11)  # 10.npy after 2.npy
    info = read_npy(root, allow_nonfinite=False)
    assert info.num_samples == 220 and info.columns["image"].shape == (SIDE, SIDE, 3)
    fp = footprint(_sig((None, SIDE, SIDE, 3)), info)
    train, _ = array_sources(info, fp, 32, training=220, shuffle=False, seed=None)
    seen = [int(v) for i in range(len(train)) for v in train[i][0]["image"][:, 0, 0, 0]]
    assert seen == list(range(220))


def test_npy_shards_that_do_not_line_up_are_one_line(tmp_path: Path) -> None:
    from memtune.data.npy import read_npy

    root = write_npy(tmp_path / "npy", 2)
    np.save(root / "label" / "1.npy", np.zeros(19, np.int64))
    with pytest.raises(MemtuneError, match=r"label/1.npy: 19 rows, where the shard"):
        read_npy(root, allow_nonfinite=False)
    (root / "label" / "1.npy").unlink()
    with pytest.raises(MemtuneError, match=r"its shards are not the other columns' \(1.npy\)"):
        read_npy(root, allow_nonfinite=False)


def test_nothing_fits_for_images_names_smaller_images() -> None:
    from memtune.core.plan import PlanOptions
    from memtune.core.refusals import nothing_fits

    text = nothing_fits(2 * 2**30, 2**30, PlanOptions(has_tensors=True), gpu=False)
    assert "even batch 1 needs 2.00 GiB, 1.00 GiB over the usable 1.00 GiB" in text
    assert "smaller images or frames (--image-size" in text


@pytest.mark.slow
def test_npy_shards_train_through_the_cli(tmp_path: Path, capsys) -> None:
    import json

    from memtune.cli import main

    root = write_npy(tmp_path / "npy", 3)
    model = write_factory(tmp_path / "m.py", CONVNET)
    argv = ["fit", "--model", model, "--data", str(root), "--budget", "2GiB", "--json"]
    assert main([*argv, "--epochs", "1", "--no-dashboard"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plan"]["mode"] == "streaming" and result["peak_bytes"] > 0


def test_a_list_column_of_pixels_feeds_an_image_input_reshaped(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = write_factory(tmp_path / "m.py", CONVNET.replace('dtype="uint8", ', ""))
    x, y = images(20)
    flat = pa.array([row.ravel().tolist() for row in x], pa.list_(pa.float32()))
    pq.write_table(pa.table({"image": flat, "label": y}), tmp_path / "0.parquet")
    (batch, _), *_ = list(
        memtune.batches(str(tmp_path / "0.parquet"), target="label", batch_size=8, model=model)
    )
    assert batch["image"].shape == (8, SIDE, SIDE, 3)
    assert np.array_equal(batch["image"], x[:8].astype(np.float32))  # no pixel shifted
    short = pa.array([row.ravel()[: 1 + (i > 0)].tolist() for i, row in enumerate(x)])
    pq.write_table(pa.table({"image": short, "label": y}), tmp_path / "1.parquet")
    with pytest.raises(MemtuneError, match=r"column 'image' holds lists of 1 to 2 values; model"):
        next(
            memtune.batches(str(tmp_path / "1.parquet"), target="label", batch_size=8, model=model)
        )


def test_image_sizes_come_from_headers_without_tensorflow(tmp_path: Path) -> None:
    import struct
    import subprocess
    import sys

    from memtune.data.images import header_size

    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x10" + b"\x00" * 14 + b"\xff\xc2\x00\x11\x08"
    jpeg += struct.pack(">HH", 7, 5) + b"\x03" + b"\x00" * 9
    bmp = b"BM" + b"\x00" * 16 + struct.pack("<ii", 5, -7)  # top-down: a negative height
    for data in (
        png(np.zeros((7, 5, 3), np.uint8)),
        b"GIF89a" + struct.pack("<HH", 5, 7),
        bmp,
        jpeg,
    ):
        assert header_size(data) == (7, 5)
    for bad, why in ((b"not an image", "no PNG"), (b"\xff\xd8\x00\x00" + b"\x00" * 9, "damaged")):
        with pytest.raises(ValueError, match=why):
            header_size(bad)
    folder = write_folder(tmp_path / "images", {"a": 2, "b": 2})
    script = (
        "import sys; from pathlib import Path; from memtune.data.images import *; "
        f"info = read_folder(ImageFolder(Path({str(folder)!r}), None, None), 'image', "
        "(None, 12, 12, 3), 'label'); assert info.num_samples == 4; "
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was loaded'"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
