"""What planning needs to know of a model — its signature, its analytic shape and what keys
its trials — read in a child process, so the planning process never holds TensorFlow.

A model given as a spec (``.keras`` file, ``file.py:fn``, ``module:fn``) is loaded in a child
that prints a :class:`ModelInfo` and exits: while trials run, memtune's own process is a
light Python (~150 MiB) instead of TensorFlow plus the model (~700 MiB), and the budget
covers both. A model object is already in the caller's process and is read there.

Run as ``python -m memtune.model.info`` it is that child.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.model.shape import ModelShape
from memtune.proc import children, warm

INSPECT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ModelInfo:
    """A model as plain data: ``key`` holds everything that shapes a trial's peak."""

    signature: ModelSignature
    shape: ModelShape
    key: dict[str, Any]
    # Model inputs read straight by an Embedding: input name -> (layer name, input_dim).
    vocabularies: dict[str, tuple[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in items]

        return {
            "inputs": specs(self.signature.inputs),
            "outputs": specs(self.signature.outputs),
            "shape": self.shape.to_json(),
            "key": self.key,
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelInfo:
        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in items)

        signature = ModelSignature(specs(raw["inputs"]), specs(raw["outputs"]))
        vocabularies = {k: (str(v[0]), int(v[1])) for k, v in raw.get("vocabularies", {}).items()}
        return cls(signature, ModelShape.from_json(raw["shape"]), raw["key"], vocabularies)


def is_spec(model: Any) -> bool:
    """A model named by a string or path (loadable in a child), not a model object."""
    return isinstance(model, str | os.PathLike)


def of_model(keras_model: Any) -> ModelInfo:
    """Read a loaded Keras model (TensorFlow is loaded: the caller holds the model)."""
    from memtune.model.load import signature
    from memtune.model.shape import describe
    from memtune.proc import tf as _tf

    tf, keras = _tf.tensorflow(), _tf.keras()
    key = {
        "model": _renamed(json.loads(keras_model.to_json()), keras_model),
        "optimizer": _renamed(keras_model.optimizer.get_config(), keras_model),
        "custom": _custom_classes(keras_model),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    sig = signature(keras_model)
    return ModelInfo(sig, describe(keras_model), key, _vocabularies(keras_model, sig))


def _vocabularies(model: Any, sig: ModelSignature) -> dict[str, tuple[str, int]]:
    """The model inputs an Embedding reads straight from, with its ``input_dim``: ids past
    it fail only inside training, so the data's are checked against it first. Read off the
    model's config; anything it does not show plainly is left unchecked."""
    try:
        config = json.loads(model.to_json())["config"]
        layers = config["layers"]
        inputs = {s.name for s in sig.inputs}
        named = config.get("input_layers")
        alias = {v[0]: k for k, v in named.items()} if isinstance(named, dict) else {}
        found: dict[str, tuple[str, int]] = {}
        for i, layer in enumerate(layers):
            if layer["class_name"] != "Embedding":
                continue
            nodes = layer.get("inbound_nodes") or []
            if nodes:
                source = nodes[0]["args"][0]["config"]["keras_history"][0]
            elif i > 0 and layers[i - 1]["class_name"] == "InputLayer":  # Sequential
                source = layers[i - 1]["config"]["name"]
            else:
                continue
            source = alias.get(source, source)
            if source in inputs:
                found[source] = (layer["name"], int(layer["config"]["input_dim"]))
        return found
    except (KeyError, IndexError, TypeError, ValueError):
        return {}


def read(model: Any, *, debug: bool = False) -> tuple[ModelInfo, Any]:
    """The model's info, and the loaded model when it was read in this process (else None).

    A spec is read in a child unless TensorFlow is already loaded here: a process that holds
    TensorFlow anyway would only add a second one beside it."""
    if not is_spec(model) or "tensorflow" in sys.modules:
        from memtune.model.load import load_model

        loaded = load_model(model)
        return of_model(loaded), loaded
    proc = warm.spawn("memtune.model.info")
    try:
        try:
            out, err = proc.communicate(
                json.dumps({"model": os.fspath(model), "debug": debug}), timeout=INSPECT_TIMEOUT_S
            )
        except Exception:
            children.reap(proc)
            raise
    finally:
        children.reap(proc)
    if debug and err:
        sys.stderr.write(err)
    answer = children.last_json(out)
    if answer is None:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise MemtuneError(f"model {os.fspath(model)!r} could not be read: {last}")
    if "error" in answer:
        raise MemtuneError(str(answer["error"]))
    return ModelInfo.from_json(answer), None


def _renamed(value: Any, model: Any) -> Any:
    """A config with layer names replaced by positions: names change each time a factory
    runs in one process (``dense``, ``dense_1`` …), the architecture does not."""
    names = {layer.name: f"layer{i}" for i, layer in enumerate(model.layers)}
    names[model.name] = "model"
    names[model.optimizer.name] = "optimizer"

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return names.get(v, _module(v)) if isinstance(v, str) else v

    return walk(value)


def _module(name: str) -> str:
    """A factory file's module name stands for where the file is, not for the model."""
    return "user-module" if name.startswith("_memtune_model_") else name


def _custom_classes(model: Any) -> list[str]:
    """Layers defined outside Keras, by qualified name and a hash of their source: their
    config may stay the same when their code changes what a step holds in memory."""
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True, recursive=True)) if flatten else model.layers
    found = set()
    for layer in layers:
        cls = type(layer)
        if cls.__module__.split(".")[0] in ("keras", "tensorflow", "tf_keras"):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        found.add(f"{_module(cls.__module__)}:{cls.__qualname__}:{digest}")
    return sorted(found)


def _child() -> int:
    children.die_with_parent()
    raw = json.loads(sys.stdin.read())
    from memtune.proc import tf as _tf

    _tf.set_debug(bool(raw.get("debug")))
    try:
        from memtune.model.load import load_model

        info = of_model(load_model(raw["model"]))
    except MemtuneError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps(info.to_json()))
    return 0


if __name__ == "__main__":
    children.finish(_child())
