"""The bad-input catalogue: every case is one stderr line naming what and where, the
contract's exit code, no traceback, no output left behind and nothing of the user's touched.

Each ``fit`` case asks for every output memtune writes (model, trace, report, checkpoint,
TensorBoard logs) in a folder of its own; after the failure that folder must be empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memtune.app.demo import png
from memtune.cli import main
from memtune.run.checkpoint import CheckpointDir, EpochState
from tests.conftest import MODEL, tmpfs, write_csv_shards, write_factory


@dataclass
class Case:
    """``argv`` may name ``{tmp}`` (the case's folder), ``{model}``, ``{data}``, ``{out}``."""

    name: str
    area: str  # data | model | budget | config | cli
    argv: list[str]
    fragment: str
    code: int = 2
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text, made first


def _fit(*extra: str) -> list[str]:
    return ["fit", "--model", "{model}", "--data", "{data}", "--epochs", "1", *extra]


def _suggest(*extra: str) -> list[str]:
    return ["suggest", "--model", "{model}", "--data", "{data}", "--analytic", *extra]


FACTORY_RAISES = "import keras\n\n\ndef build():\n    raise ValueError('no weights file')\n"
CONFIG = 'model = "{model}"\ndata = "{data}"\nanalytic = true\n'

BAD_INPUTS: list[Case] = [
    # ------------------------------------------------------------------ data
    Case("missing path", "data", _fit("--data", "{tmp}/nope"), "does not exist"),
    Case("empty folder", "data", _fit("--data", "{tmp}/empty"), "holds no .csv or .parquet"),
    Case("mixed shard kinds", "data", _fit("--data", "{tmp}/mixed"), "mixes CSV and Parquet"),
    Case("non-numeric list element", "data", _fit("--data", "{tmp}/badcell"), "0.csv, column 'a', row 2"),
    Case("column missing from one shard", "data", _fit("--data", "{tmp}/missing"), "shard 1.csv has no column 'b'"),
    Case("not a data file", "data", _fit("--data", "{tmp}/notes.txt"), "notes.txt"),
    Case("only empty shards", "data", _fit("--data", "{tmp}/allempty"), "holds no rows"),
    Case("validation data lacks a column", "data", _fit("--validation-data", "{tmp}/missing/1.csv"), "has no column 'b'"),
    Case("images of mixed sizes", "data", _suggest("--data", "{tmp}/imgmixed", "--model", "{tmp}/anysize.py:build"), "images differ in size ({tmp}/imgmixed/a/0.png: 8×8, {tmp}/imgmixed/b/0.png: 10×10)"),
    Case("a corrupt image", "data", _suggest("--data", "{tmp}/imgcorrupt", "--model", "{tmp}/img.py:build"), "{tmp}/imgcorrupt/b/1.png: not a readable image"),
    Case("an image damaged past its header, streamed", "data", _fit("--data", "{tmp}/imgdamaged", "--model", "{tmp}/img.py:build", "--analytic", "--mode", "streaming"), "{tmp}/imgdamaged/b/1.png: not a readable image (Invalid PNG data"),
    Case("an image damaged past its header, in memory", "data", _fit("--data", "{tmp}/imgdamaged", "--model", "{tmp}/img.py:build", "--analytic", "--mode", "in-memory"), "{tmp}/imgdamaged/b/1.png: not a readable image (Invalid PNG data"),
    Case("an empty class folder", "data", _suggest("--data", "{tmp}/imgempty", "--model", "{tmp}/img.py:build"), "{tmp}/imgempty/b: class folder holds no images"),
    Case("images the model does not take", "model", _suggest("--data", "{tmp}/imgok", "--model", "{tmp}/img.py:build", "--color-mode", "rgba"), "model input 'image' has shape (None, 8, 8, 3) but 'image' holds samples of shape (8, 8, 4)"),
    Case("an image size of one number", "cli", _suggest("--data", "{tmp}/imgok", "--model", "{tmp}/img.py:build", "--image-size", "8"), "--image-size '8': expected H,W"),
    Case("an unknown color mode", "cli", _suggest("--data", "{tmp}/imgok", "--model", "{tmp}/img.py:build", "--color-mode", "cmyk"), "--color-mode"),
    # ------------------------------------------------------------------ model
    Case("model file missing", "model", _fit("--model", "{tmp}/none.keras"), "does not exist"),
    Case("not a Keras file", "model", _fit("--model", "{tmp}/junk.keras"), "is not a loadable Keras model"),
    Case("factory function missing", "model", _fit("--model", "{tmp}/m.py:nobuild"), "has no function 'nobuild'"),
    Case("module missing", "model", _fit("--model", "no_such_pkg.mod:build"), "not found"),
    Case("uncompiled model", "model", _fit("--model", "{tmp}/u.py:build"), "is not compiled"),
    Case("factory returns no model", "model", _fit("--model", "{tmp}/n.py:build"), "returned int, not a keras.Model"),
    Case("factory raises", "model", _fit("--model", "{tmp}/r.py:build"), "r.py:build' raised ValueError: no weights file", files={"r.py": FACTORY_RAISES}),
    Case("input without a column", "model", _fit("--model", "{tmp}/c.py:build"), "model input 'zzz' has no column"),
    Case("target not a column", "model", _fit("--target", "nope"), "--target 'nope' is not a column"),
    # ------------------------------------------------------------------ budget
    Case("unknown unit", "budget", _fit("--budget", "8XB"), "unknown unit 'XB'"),
    Case("zero budget", "budget", _fit("--budget", "0GiB"), "must be positive"),
    Case("negative budget", "budget", _fit("--budget=-1GiB"), "must be positive"),
    Case("safety of 1", "budget", _fit("--safety", "1.0"), "--safety"),
    Case("nothing fits", "budget", _fit("--budget", "10MiB", "--analytic"), "even batch 1 needs", code=3),
    Case("no training rows left", "cli", _suggest("--validation-split", "0.9999"), "--validation-split 0.9999: leaves no training row of the 9"),
    Case("zero buckets", "cli", _suggest("--buckets", "0"), "--buckets '0': expected a positive integer or off"),
    Case("an id past int32", "data", _suggest("--data", "{tmp}/bigint"), "1.csv, row 1: column 'b' holds 4294967297, past what an int32 input holds"),
    Case("an id past int64", "data", _suggest("--data", "{tmp}/hugeint"), "0.csv, row 2: column 'b' holds 100000000000000000000, past what an int32 input holds"),
    Case("NaN in a feature", "data", _suggest("--data", "{tmp}/nan"), "0.csv, row 3: column 'a' holds NaN or inf (2 such values in the data, fed to a float32 input); --allow-nonfinite"),
    Case("inf in a target", "data", _suggest("--data", "{tmp}/inftarget"), "0.csv, row 1: column 'answer' holds NaN or inf (1 such values in the data, fed to a float32 target)"),
    Case("an all-empty sequence column", "data", _suggest("--data", "{tmp}/emptyseq"), "column 'b', fed to model input 'b': every row is an empty sequence"),
    Case("a target that is an input", "cli", _suggest("--target", "b"), "--target 'b' is the model's input, not what it predicts (its outputs: answer)"),
    Case("forced batch past usable", "budget", _fit("--budget", "200MiB", "--analytic", "--batch-size", "30"), "--batch-size 30: its predicted peak", code=3),
    Case("forced in-memory that cannot fit", "budget", _fit("--budget", "10MiB", "--analytic", "--batch-size", "2", "--mode", "in-memory"), "in-memory", code=3),
    # ------------------------------------------------------------------ config (check)
    Case("config file missing", "config", ["check", "--config", "{tmp}/absent.toml"], "does not exist"),
    Case("config not TOML", "config", ["check", "--config", "{tmp}/broken.toml"], "broken.toml", files={"broken.toml": "model = [\n"}),
    Case("config unknown key", "config", ["check", "--config", "{tmp}/typo.toml"], "unknown key 'batch_sise'", files={"typo.toml": CONFIG + "batch_sise = 64\n"}),
    Case("config wrong type", "config", ["check", "--config", "{tmp}/type.toml"], "key 'batch_size' must be an integer", files={"type.toml": CONFIG + 'batch_size = "big"\n'}),
    Case("config unknown profile", "config", ["check", "--config", "{tmp}/ok.toml", "--profile", "huge"], "no profile 'huge'", files={"ok.toml": CONFIG}),
    Case("junit in a missing folder", "config", ["check", "--config", "{tmp}/ok.toml", "--junit", "{tmp}/no/r.xml"], "does not exist", files={"ok.toml": CONFIG}),
    # ------------------------------------------------------------------ command line
    Case("not an integer", "cli", _fit("--batch-size", "x"), "--batch-size"),
    Case("unknown device", "cli", _fit("--device", "tpu"), "--device 'tpu'"),
    Case("unknown mode", "cli", _fit("--mode", "disk"), "--mode"),
    Case("zero epochs", "cli", _fit("--epochs", "0"), "--epochs"),
    Case("bad maxlen", "cli", _fit("--maxlen", "b=x"), "--maxlen"),
    Case("validation split out of range", "cli", _fit("--validation-split", "1.5"), "--validation-split"),
    Case("save not .keras", "cli", _fit("--save", "{out}/m.h5"), "must end in .keras"),
    Case("save into a missing folder", "cli", _fit("--save", "{tmp}/no/m.keras"), "does not exist"),
    Case("trace into a missing folder", "cli", _fit("--trace", "{tmp}/no/t.jsonl"), "--trace"),
    Case("report not .png", "cli", _fit("--report", "{out}/r.pdf"), "must end in .png"),
    Case("checkpoint dir is a file", "cli", _fit("--checkpoint-dir", "{tmp}/notes.txt"), "is a file, not a folder"),
    Case("resume without checkpoint dir", "cli", _fit("--resume"), "--resume needs --checkpoint-dir"),
    Case("resume with nothing saved", "cli", _fit("--resume", "--checkpoint-dir", "{tmp}/empty"), "holds no complete checkpoint"),
    Case("stale checkpoint", "cli", _fit("--checkpoint-dir", "{tmp}/ck"), "pass --resume"),
    Case("resume of a damaged checkpoint", "cli", _fit("--resume", "--checkpoint-dir", "{tmp}/ckbad"), "epoch-000001' is damaged"),
    Case("checkpoint dir is the user's folder", "cli", _fit("--checkpoint-dir", "{tmp}/missing"), "holds files memtune did not write (e.g. '0.csv')"),
    Case("resume in the user's folder", "cli", _fit("--resume", "--checkpoint-dir", "{tmp}/missing"), "holds files memtune did not write"),
    Case("save inside the checkpoint dir", "cli", _fit("--checkpoint-dir", "{tmp}/empty", "--save", "{tmp}/empty/m.keras"), "--save '{tmp}/empty/m.keras' lies inside --checkpoint-dir"),
    Case("trace inside the checkpoint dir", "cli", _fit("--checkpoint-dir", "{tmp}/empty", "--trace", "{tmp}/empty/t.jsonl"), "--trace '{tmp}/empty/t.jsonl' lies inside"),
    Case("multiworker without TF_CONFIG", "cli", _fit("--strategy", "multiworker"), "needs TF_CONFIG"),
    Case("zero CPU replicas", "cli", _fit("--cpu-replicas", "0"), "--cpu-replicas 0"),
    Case("suggest with an unknown flag", "cli", _suggest("--bach-size", "8"), "unrecognized arguments"),
    Case("report of a missing trace", "cli", ["report", "{tmp}/none.jsonl", "-o", "{out}/r.png"], "does not exist"),
    Case("report of a torn trace", "cli", ["report", "{tmp}/torn.jsonl", "-o", "{out}/r.png"], "torn.jsonl, line 2", files={"torn.jsonl": '{"kind": "sample", "t": 0, "rss": 1}\n{"kind": "sam\n'}),
]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """The user's files every case points at, made once."""
    tmp = tmp_path_factory.mktemp("world")
    seq = pd.DataFrame(
        {"a": [[0.5, 1.0], [2.0], [1.5, 2.5, 3.5]], "b": [[1, 2, 3], [4], []], "answer": [0, 1, 0]}
    )
    data = write_csv_shards(tmp / "shards", [seq, seq, seq])
    (tmp / "empty").mkdir()
    mixed = write_csv_shards(tmp / "mixed", [pd.DataFrame({"a": [1]})])
    pq.write_table(pa.table({"a": [1]}), mixed / "1.parquet")
    (tmp / "badcell").mkdir()
    (tmp / "badcell" / "0.csv").write_text('a,b,answer\n"[1, 2]","[1]",0\n"[1, ?]","[2]",1\n')
    for name, shards in {
        "bigint": ['a,b,answer\n"[1.0]","[1, 2]",0\n', 'a,b,answer\n"[1.0]","[4294967297]",1\n'],
        "hugeint": ['a,b,answer\n"[1.0]","[1]",0\n"[2.0]","[99999999999999999999]",1\n'],
        "nan": ['a,b,answer\n"[1.0]","[1]",0\n"[2.0]","[2]",1\n"[nan, inf]","[3]",0\n'],
        "emptyseq": ['a,b,answer\n"[1.0]","[]",0\n"[2.0]","[]",1\n'],
        "inftarget": ['a,b,answer\n"[1.0]","[1]",inf\n"[2.0]","[2]",1\n'],
    }.items():
        (tmp / name).mkdir()
        for i, text in enumerate(shards):
            (tmp / name / f"{i}.csv").write_text(text)
    (tmp / "allempty").mkdir()
    (tmp / "allempty" / "0.csv").write_text("a,b,answer\n")
    write_csv_shards(
        tmp / "missing",
        [
            pd.DataFrame({"a": ["[1]"], "b": ["[1]"], "answer": [0]}),
            pd.DataFrame({"a": ["[1]"], "answer": [0]}),
        ],
    )
    _image_world(tmp)
    (tmp / "notes.txt").write_text("not data")
    (tmp / "junk.keras").write_text("not a zip")
    for name in ("ck", "ckbad"):  # a complete memtune checkpoint after one epoch
        store, _ = CheckpointDir.open("--checkpoint-dir", tmp / name, resume=False)
        store.claim(fresh=True)
        store.commit(EpochState(1, 8, 1), lambda path: path.write_bytes(b"weights"))
    (tmp / "ckbad" / "epoch-000001" / "model.weights.h5").write_bytes(b"weighs")
    model = write_factory(tmp / "m.py", MODEL)
    write_factory(
        tmp / "u.py", "return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])"
    )
    write_factory(tmp / "n.py", "return 42")
    write_factory(
        tmp / "c.py",
        """
x = keras.Input((2,), name="zzz"); y = keras.Input((2,), name="a")
m = keras.Model([x, y], keras.layers.Dense(1)(keras.layers.Concatenate()([x, y])))
m.compile("adam", "mse"); return m""",
    )
    return {"tmp": tmp, "model": model, "data": str(data)}


def _image_world(tmp: Path) -> None:
    """Image folders (8×8 PNGs unless named otherwise) and two convnets."""
    pixels = np.full((8, 8, 3), 128, np.uint8)
    folders = {
        "imgok": {"a/0.png": png(pixels), "b/0.png": png(pixels)},
        "imgmixed": {"a/0.png": png(pixels), "b/0.png": png(np.zeros((10, 10, 3), np.uint8))},
        "imgcorrupt": {"a/0.png": png(pixels), "b/1.png": b"not a png"},
        "imgempty": {"a/0.png": png(pixels), "b/notes.txt": b"no image here"},
        "imgdamaged": {"a/0.png": png(pixels), "b/1.png": png(pixels + 1)[:60]},  # header kept
    }
    for name, files in folders.items():
        for relative, data in files.items():
            (tmp / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / relative).write_bytes(data)
    convnet = """
image = keras.Input((8, 8, 3), name="image")
x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(image))
m = keras.Model(image, keras.layers.Dense(2, name="label")(x))
m.compile("adam", "sparse_categorical_crossentropy"); return m"""
    write_factory(tmp / "img.py", convnet)
    write_factory(tmp / "anysize.py", convnet.replace("(8, 8, 3)", "(None, None, 3)"))


def test_the_catalogue_covers_every_area() -> None:
    areas = {case.area for case in BAD_INPUTS}
    assert areas == {"data", "model", "budget", "config", "cli"}
    assert len(BAD_INPUTS) >= 20
    assert len({case.name for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_input(case: Case, world: dict[str, Path | str], tmp_path: Path, capfd) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = {"tmp": str(world["tmp"]), "model": str(world["model"]), "data": str(world["data"])}
    for relative, text in case.files.items():
        for key, value in names.items():
            text = text.replace("{" + key + "}", value)
        (Path(world["tmp"]) / relative).write_text(text)
    argv = [arg.format(out=out, **names) for arg in case.argv]
    if argv[0] == "fit":  # every output memtune writes, where a leftover would show
        wanted = {
            "--save": f"{out}/model.keras",
            "--trace": f"{out}/trace.jsonl",
            "--report": f"{out}/report.png",
            "--checkpoint-dir": f"{out}/ck",
            "--tensorboard": f"{out}/tb",
        }
        for flag, value in wanted.items():
            if flag not in argv and not (flag == "--checkpoint-dir" and "--resume" in argv):
                argv += [flag, value]
        argv += ["--no-dashboard"]
    before = _snapshot(Path(world["tmp"]))
    code = main(argv)
    _, err = capfd.readouterr()
    assert code == case.code, (argv, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert case.fragment.format(**names) in err, err
    assert "Traceback" not in err
    assert list(out.rglob("*")) == [], f"left behind: {list(out.rglob('*'))}"
    assert _snapshot(Path(world["tmp"])) == before, "a user's file changed"


@pytest.fixture
def read_only(tmp_path: Path):  # type: ignore[no-untyped-def]
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        yield folder


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--checkpoint-dir", "ck"),
        ("--checkpoint-dir", "."),
        ("--save", "m.keras"),
        ("--trace", "t.jsonl"),
        ("--report", "r.png"),
    ],
)
def test_a_read_only_output_is_refused_before_planning(
    world: dict[str, Path | str], read_only: Path, capfd, flag: str, value: str
) -> None:
    names = {k: str(world[k]) for k in ("tmp", "model", "data")}
    argv = [a.format(**names) for a in _fit("--analytic")]
    assert main([*argv, flag, str(read_only / value)]) == 2
    err = capfd.readouterr().err.strip()
    assert err == f"memtune: error: {flag} {str(read_only / value)!r}: folder " + (
        f"{str(read_only)!r} is not writable"
    ), err


TF_TEXT = """Graph execution error:

Detected at node functional_1/embedding_1/GatherV2 defined at (most recent call last):
  File "/usr/bin/memtune", line 6, in <module>

  File "/site-packages/keras/src/layers/core/embedding.py", line 140, in call

indices[1,0] = 12 is not in [0, 10)
\t [[{{node functional_1/embedding_1/GatherV2}}]] [Op:__inference_multi_step_on_iterator_912]"""


def test_tensorflows_cause_comes_after_its_stack() -> None:
    from memtune.run.recovery import tf_cause

    assert tf_cause(TF_TEXT) == (
        "functional_1/embedding_1/GatherV2",
        "indices[1,0] = 12 is not in [0, 10)",
    )
    assert tf_cause("plain words")[1] == "plain words"
    from memtune.run.recovery import training_failure

    failure = training_failure(RuntimeError(TF_TEXT), None)  # where the scan could not see it
    assert failure.exit_code == 2 and str(failure) == (
        "the data holds id 12, past the vocabulary of Embedding layer 'embedding_1' "
        "(input_dim 10): ids must be in [0, 10)"
    )


def test_an_id_past_an_embeddings_vocabulary_is_one_line_exit_2(
    world: dict[str, Path | str], tmp_path: Path, capfd
) -> None:
    data = tmp_path / "ids"
    data.mkdir()
    (data / "0.csv").write_text('a,b,answer\n"[1.0]","[1, 2]",0\n"[2.0]","[12]",1\n')
    argv = ["fit", "--model", str(world["model"]), "--data", str(data), "--epochs", "1"]
    assert main([*argv, "--analytic", "--no-dashboard"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # Caught in the scan, before any training, against the model's Embedding.
    assert "0.csv, row 2: column 'b' holds id 12, past the vocabulary of Embedding layer" in err
    assert "(input_dim 10): ids must be in [0, 10)" in err


def test_a_shard_deleted_mid_run_is_one_line_exit_2(tmp_path: Path) -> None:
    import keras

    from memtune.app.fit import fit
    from memtune.core.errors import MemtuneError
    from tests.conftest import FACTORY, id_shards

    folder = id_shards(tmp_path / "d")

    class Delete(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            if epoch == 1:
                (folder / "5.csv").unlink()

    model = write_factory(tmp_path / "m.py", FACTORY)
    with pytest.raises(MemtuneError) as info:
        fit(
            model, str(folder), epochs=2, target="answer", analytic=True, mode="streaming",
            batch_size=4, verbose=0, callbacks=[Delete()],
        )  # fmt: skip
    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"{folder / '5.csv'}: could not be read during training (No such file or directory); "
        "did the file change?"
    )


def test_a_model_typo_fails_before_the_data_is_scanned(tmp_path: Path, monkeypatch, capfd) -> None:
    from memtune.app import prepare

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was scanned first")

    monkeypatch.setattr(prepare, "scan", no_scan)
    for model, said in (
        (str(tmp_path / "modle.keras"), f"model {str(tmp_path / 'modle.keras')!r} does not exist"),
        (f"{tmp_path / 'modle.py'}:build", "model factory file"),
        (str(tmp_path), "expected a .keras file or FILE.py:FUNCTION"),
    ):
        assert main(["suggest", "--model", model, "--data", str(tmp_path), "--analytic"]) == 2
        assert said in capfd.readouterr().err
