import pandas as pd
import pytest

from memtune.core.errors import MemtuneError
from memtune.core.options import parse_maxlen
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.footprint import footprint
from memtune.data.scan import scan


@pytest.fixture
def info(seq_frame: pd.DataFrame):  # a: floats up to 4 long, b: ints up to 3, x: scalar
    return scan(seq_frame)


def sig(inputs, outputs=(("answer", (None, 1)),)):
    return ModelSignature(
        tuple(TensorSpec(n, s) for n, s in inputs), tuple(TensorSpec(n, s) for n, s in outputs)
    )


def test_truncation_to_declared_length(info) -> None:
    fp = footprint(sig([("a", (None, 2))]), info)
    (feed,) = fp.inputs
    assert feed.shape == (2,) and feed.dtype == "float32"
    assert fp.per_sample_bytes == 2 * 4 + 1 * 4  # a padded to 2 float32, answer (1,)
    assert any("truncated to 2" in n for n in fp.notes)


def test_none_length_uses_longest_then_maxlen(info) -> None:
    assert footprint(sig([("a", (None, None))]), info).per_sample_bytes == 4 * 4 + 4
    fp = footprint(sig([("a", (None, None))]), info, maxlen=parse_maxlen(["a=10"]))
    assert fp.inputs[0].shape == (10,)
    fp = footprint(sig([("a", (None, None))]), info, maxlen=parse_maxlen(["3"]))
    assert fp.per_sample_bytes == 3 * 4 + 4


def test_multi_input_int_and_float(info) -> None:
    fp = footprint(sig([("a", (None, 5, 1)), ("b", (None, None)), ("x", (None, 1))]), info)
    by_name = {f.name: f for f in fp.inputs}
    assert by_name["a"].shape == (5, 1) and by_name["a"].dtype == "float32"
    assert by_name["b"].shape == (3,) and by_name["b"].dtype == "int32"
    assert by_name["x"].shape == (1,)
    assert fp.per_sample_bytes == (5 + 3 + 1) * 4 + 4


def test_single_unmatched_input_takes_scalar_columns() -> None:
    info = scan(pd.DataFrame({"f1": [1.0, 2.0], "f2": [3, 4], "f3": [0.5, 0.1], "answer": [0, 1]}))
    fp = footprint(sig([("features", (None, 3))]), info)
    assert fp.inputs[0].columns == ("f1", "f2", "f3")
    assert fp.per_sample_bytes == 3 * 4 + 4
    with pytest.raises(MemtuneError, match=r"has shape \(None, 4\) but is fed 3 scalar"):
        footprint(sig([("features", (None, 4))]), info)


def test_targets(info) -> None:
    two = sig([("a", (None, 2))], outputs=(("x", (None, 1)), ("answer", (None, 1))))
    fp = footprint(two, info, targets=["x", "answer"])
    assert [f.columns for f in fp.targets] == [("x",), ("answer",)]
    with pytest.raises(MemtuneError, match="--target 'nope' is not a column"):
        footprint(sig([("a", (None, 2))]), info, targets=["nope"])
    with pytest.raises(MemtuneError, match="model output 'answer' has no --target"):
        footprint(two, info, targets=["x"])
    other = sig([("a", (None, 2))], outputs=(("out", (None, 1)),))
    assert footprint(other, info).targets[0].columns == ("answer",)  # the seed's default
    assert footprint(other, info, targets=["x"]).targets[0].columns == ("x",)


def test_input_without_column(info) -> None:
    with pytest.raises(MemtuneError, match="model input 'zzz' has no column of that name"):
        footprint(sig([("a", (None, 2)), ("zzz", (None, 2))]), info)


def test_bad_maxlen(info) -> None:
    with pytest.raises(MemtuneError, match="--maxlen"):
        parse_maxlen(["a=0"])
    with pytest.raises(MemtuneError, match="expected N or COLUMN=N"):
        parse_maxlen(["a=x"])
    with pytest.raises(MemtuneError, match="'q' is not a column"):
        footprint(sig([("a", (None, 2))]), info, maxlen={"q": 3})


def test_real_keras_signature(info) -> None:
    import keras

    from memtune.model.load import signature

    a = keras.Input((None,), name="a")
    b = keras.Input((2,), dtype="int32", name="b")
    e = keras.layers.Embedding(10, 2)(b)
    seq = keras.layers.GRU(3)(keras.layers.Reshape((-1, 1))(a))
    x = keras.layers.Concatenate()([seq, keras.layers.Flatten()(e)])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1, name="answer")(x))
    fp = footprint(signature(model), info)
    assert {f.name: f.shape for f in fp.inputs} == {"a": (4,), "b": (2,)}
    assert fp.per_sample_bytes == (4 + 2 + 1) * 4


def test_an_int64_input_is_counted_at_int32_and_says_so(info) -> None:
    signature = ModelSignature(
        (TensorSpec("b", (None, None), "int64"),), (TensorSpec("answer", (None, 1)),)
    )
    fp = footprint(signature, info)
    assert fp.inputs[0].dtype == "int32" and fp.per_sample_bytes == 3 * 4 + 4
    assert any("declared int64; memtune feeds int32" in n for n in fp.notes)
