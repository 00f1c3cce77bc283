"""Loading the user's model (a ``.keras`` file or a factory) and reading its signature."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.proc import tf as _tf

_MODEL_SUFFIXES = (".keras", ".h5")


def factory_parts(text: str) -> tuple[str, str] | None:
    """``(location, function)`` when ``text`` names a factory (``FILE.py:FUNCTION`` or
    ``MODULE:FUNCTION``); None for a model file (a path may hold a drive's colon)."""
    path, sep, function = text.rpartition(":")
    if sep and function and not Path(text).exists() and not (len(path) == 1 and path.isalpha()):
        return path, function
    return None


def check_spec(spec: Any) -> None:
    """The checks of :func:`load_model` that need no TensorFlow (the file is there, of a
    kind memtune reads), so a typo fails before the data scan, not after it. A module
    factory is not looked up here: finding it imports its package."""
    if not isinstance(spec, str | os.PathLike):
        return
    text = os.fspath(spec)
    factory = factory_parts(text)
    if factory is not None:
        path = factory[0]
        if path.endswith(".py") and not Path(path).is_file():
            raise MemtuneError(f"model factory file {path!r} does not exist")
        return
    if not Path(text).exists():
        raise MemtuneError(f"model {text!r} does not exist")
    if Path(text).suffix.lower() not in _MODEL_SUFFIXES:
        raise MemtuneError(
            f"model {text!r}: expected a .keras file or FILE.py:FUNCTION / MODULE:FUNCTION"
        )


def load_model(spec: Any) -> Any:
    """A compiled ``keras.Model`` from a model object, a ``.keras`` file or ``file.py:fn``."""
    keras = _tf.keras()
    if isinstance(spec, keras.Model):
        return _require_compiled(spec, "the model")
    text = str(spec)
    factory = factory_parts(text)
    if factory is not None:
        model = _call_factory(*factory, text)
        if not isinstance(model, keras.Model):
            raise MemtuneError(
                f"model factory {text!r} returned {type(model).__name__}, not a keras.Model"
            )
        return _require_compiled(model, f"model factory {text!r}")
    file = Path(text)
    if not file.exists():
        raise MemtuneError(f"model {text!r} does not exist")
    if file.suffix.lower() not in _MODEL_SUFFIXES:
        raise MemtuneError(
            f"model {text!r}: expected a .keras file or FILE.py:FUNCTION / MODULE:FUNCTION"
        )
    try:
        with _tf.native_stderr_quiet():
            model = keras.saving.load_model(file)
    except Exception as exc:
        raise MemtuneError(f"model {text!r} is not a loadable Keras model ({_short(exc)})") from exc
    if not isinstance(model, keras.Model):
        raise MemtuneError(f"model {text!r} holds {type(model).__name__}, not a keras.Model")
    return _require_compiled(model, f"model {text!r}")


def _call_factory(location: str, function: str, text: str) -> Any:
    if location.endswith(".py"):
        file = Path(location)
        if not file.is_file():
            raise MemtuneError(f"model factory file {location!r} does not exist")
        # Stable across processes (``hash`` is salted per process): custom layers' module
        # names land in the model's config, which keys the trial cache.
        digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]
        name = f"_memtune_model_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise MemtuneError(
                f"model factory file {location!r} failed to import ({_short(exc)})"
            ) from exc
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise MemtuneError(
                f"model factory module {location!r} not found ({_short(exc)})"
            ) from exc
    factory = getattr(module, function, None)
    if not callable(factory):
        raise MemtuneError(
            f"model factory {text!r} not found: {location} has no function {function!r}"
        )
    try:
        with _tf.native_stderr_quiet():
            return factory()
    except Exception as exc:
        raise MemtuneError(f"model factory {text!r} raised {_short(exc)}") from exc


def _require_compiled(model: Any, what: str) -> Any:
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise MemtuneError(
            f"{what} is not compiled: call model.compile(optimizer=..., loss=...) "
            "before returning it"
        )
    try:
        model.inputs  # noqa: B018 - raises for a model that was never built
    except (AttributeError, ValueError):
        raise MemtuneError(
            f"{what} has no declared inputs: start it with keras.Input(shape=...)"
        ) from None
    return model


def signature(model: Any) -> ModelSignature:
    """Input and output names, shapes and dtypes as the model declares them."""
    inputs = tuple(TensorSpec(_input_name(t), tuple(t.shape), str(t.dtype)) for t in model.inputs)
    names = getattr(model, "output_names", None) or [_input_name(t) for t in model.outputs]
    outputs = tuple(
        TensorSpec(name, tuple(t.shape), str(t.dtype))
        for name, t in zip(names, model.outputs, strict=True)
    )
    return ModelSignature(inputs, outputs)


def _input_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    if history is not None:
        layer = history[0] if isinstance(history, tuple) else history.operation
        return str(layer.name)
    return str(tensor.name)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
