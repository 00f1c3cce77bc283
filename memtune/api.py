"""The Python API: validate the options, then do the work in the rooms that own it."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from memtune.data.scan import DataInfo, scan
from memtune.errors import MemtuneError
from memtune.estimate.curve import MemoryCurve
from memtune.footprint import Footprint, ModelSignature, TensorSpec, footprint
from memtune.options import Options, make_options
from memtune.plan import Budget, Plan, Trial, make_plan, resolve_budget, resolve_device
from memtune.probe import Probe
from memtune.probe import probe as _probe


@dataclass(frozen=True)
class Prepared:
    """What suggest and fit share: data, model, footprint and the plan."""

    options: Options
    info: DataInfo
    model: Any
    footprint: Footprint
    probe: Probe
    plan: Plan


def probe() -> Probe:
    """Host RAM and GPU memory as seen now."""
    return _probe()


def prepare(
    model: Any, data: Any, options: Options, *, probe_result: Probe | None = None
) -> Prepared:
    """Scan the data, load the model, size one sample, estimate and plan."""
    from memtune import model as model_mod
    from memtune.estimate.analytic import analytic_curve, profile_model

    seen = probe_result or _probe()
    device = resolve_device(seen, options.device)  # a bad --device fails before any work
    info = scan(data)
    keras_model = model_mod.load_model(model)
    fp = footprint(
        model_mod.signature(keras_model), info, targets=options.target, maxlen=options.maxlen
    )
    budget = resolve_budget(seen, device, options.budget_bytes)
    prior = analytic_curve(profile_model(keras_model, fp), fp, gpu=device != "cpu")
    notes = list(info.warnings) + fp.notes
    plan_options = options.plan_options(any(f.sequence for f in fp.feeds))

    def plan_for(curve: MemoryCurve, verified: int | None, extra: list[str] = notes) -> Plan:
        return make_plan(
            budget,
            curve,
            num_samples=info.num_samples,
            per_sample_bytes=fp.per_sample_bytes,
            options=replace(plan_options, verified_cap=verified),
            notes=extra,
        )

    if options.analytic or options.batch_size is not None:
        why = "--analytic" if options.analytic else "--batch-size is forced"
        plan = plan_for(prior, None, [*notes, f"no trials ({why}): the plan is unverified"])
    else:
        plan = _measured_plan(model, keras_model, fp, options, budget, seen, prior, plan_for, notes)
    return Prepared(options, info, keras_model, fp, seen, plan)


def _measured_plan(
    spec: Any,
    keras_model: Any,
    fp: Footprint,
    options: Options,
    budget: Budget,
    seen: Probe,
    prior: MemoryCurve,
    plan_for: Callable[..., Plan],
    notes: list[str],
) -> Plan:
    """Trials in child processes (cached) refine the prior; the plan is verified."""
    from memtune import _tf
    from memtune.estimate.cache import TrialCache, cache_key
    from memtune.estimate.search import search
    from memtune.estimate.trials import TRIAL_STEPS, FeedSpec, TrialSpec, run_trial

    tf = _tf.tensorflow()
    keras = _tf.keras()
    accumulation = 2 if options.effective_batch_size else 1  # accumulators cost the same for any k
    feeds = tuple(FeedSpec(f.name, f.role, f.shape, f.dtype) for f in fp.feeds)
    key = cache_key(
        {
            "model": _renamed(json.loads(keras_model.to_json()), keras_model),
            "optimizer": _renamed(keras_model.optimizer.get_config(), keras_model),
            "feeds": feeds,
            "accumulation": accumulation,
            "device": budget.device,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "memtune": "0.1",
        }
    )
    cache = TrialCache(key, enabled=not options.no_cache)
    limit = (
        budget.budget_bytes
        if budget.device != "cpu"
        else min(int(budget.budget_bytes * (1 - options.safety)), seen.host.available_bytes)
    )
    with contextlib.ExitStack() as stack:
        model_arg = spec if isinstance(spec, str) else _saved_copy(keras_model, stack)
        if model_arg is None:
            return plan_for(
                prior,
                None,
                [
                    *notes,
                    "no trials: the model could not be saved for a trial process; "
                    "the plan is analytic, unverified",
                ],
            )
        trial_spec = TrialSpec(model_arg, feeds, accumulation, budget.device)

        def measure(batch: int) -> Trial:
            hit = cache.get(batch)
            if hit is not None:
                return hit
            trial = run_trial(trial_spec, batch, limit_bytes=limit, debug=_tf.debug_enabled())
            cache.put(trial)
            return trial

        result = search(prior, measure, lambda curve, cap: plan_for(curve, cap))
    summary = (
        f"{len(result.trials)} trial(s) of {TRIAL_STEPS} training steps measured in a child "
        f"process; {cache.hits} from the cache"
    )
    plan = plan_for(result.curve, result.plan.batch_size, [*notes, *result.notes, summary])
    return replace(plan, trials=list(result.trials))


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
        return names.get(v, v) if isinstance(v, str) else v

    return walk(value)


def _saved_copy(keras_model: Any, stack: contextlib.ExitStack) -> str | None:
    """A model object saved to a temporary .keras file, so a trial child can load it."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memtune-model-")))
    path = folder / "model.keras"
    try:
        keras_model.save(path)
    except Exception:
        return None
    return str(path)


def suggest(model: Any, data: Any, **options: Any) -> Plan:
    """The largest safe batch and the data mode for training ``model`` on ``data``."""
    return prepare(model, data, make_options(**options)).plan


def layout_for(
    info: DataInfo, fp: Footprint, options: Options
) -> Any:  # -> memtune.data.pipeline.Layout (kept lazy: pipelines import numpy-heavy code)
    from memtune.data.pipeline import Layout

    return Layout(fp, info, options.padding, options.truncating)  # type: ignore[arg-type]


def batches(
    data: Any,
    *,
    target: str | list[str],
    batch_size: int,
    model: Any = None,
    mode: str = "streaming",
    shuffle: bool = False,
    seed: int | None = None,
    maxlen: Any = None,
    padding: str = "pre",
    truncating: str = "pre",
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One epoch of ``(inputs, targets)`` numpy batches, dicts keyed by name.

    With a model, inputs and targets are named and padded as the model declares; without
    one, every non-target column is an input named after itself.
    """
    from memtune.data.pipeline import batches as _batches

    options = make_options(
        target=target, maxlen=maxlen, padding=padding, truncating=truncating, batch_size=batch_size
    )
    info = scan(data)
    if model is not None:
        from memtune import model as model_mod

        sig = model_mod.signature(model_mod.load_model(model))
    else:
        sig = _columns_signature(info, options.target)
    fp = footprint(sig, info, targets=options.target, maxlen=options.maxlen)
    yield from _batches(
        layout_for(info, fp, options), batch_size, mode=mode, shuffle=shuffle, seed=seed
    )


def _columns_signature(info: DataInfo, targets: tuple[str, ...]) -> ModelSignature:
    """A stand-in signature: each column its own input, lengths left to the data."""
    if not targets:
        raise MemtuneError("batches(): name the target column(s) with target=")

    def spec(name: str) -> TensorSpec:
        sequence = info.columns[name].sequence if name in info.columns else False
        return TensorSpec(name, (None, None) if sequence else (None,))

    inputs = tuple(spec(c) for c in info.columns if c not in targets)
    return ModelSignature(inputs, tuple(spec(t) for t in targets))
