"""Planning from measurements: trial setup, the cache, and the search wired together."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memtune import _tf, progress
from memtune.estimate.cache import TrialCache, cache_key
from memtune.estimate.curve import MemoryCurve
from memtune.estimate.search import search
from memtune.estimate.trials import TRIAL_STEPS, FeedSpec, TrialSpec, run_trial
from memtune.footprint import Footprint
from memtune.options import Options
from memtune.plan import Budget, Plan, Trial
from memtune.probe import Probe

MEMTUNE_TRIAL_FORMAT = "3"  # bump when what a trial measures changes


@dataclass(frozen=True)
class Setup:
    """What every trial of one plan shares."""

    feeds: tuple[FeedSpec, ...]
    accumulation: int
    device: str
    limit_bytes: int
    cache: TrialCache
    num_samples: int
    cpu_replicas: int = 1  # trials run under MirroredStrategy on this many logical CPUs


def setup(
    keras_model: Any,
    fp: Footprint,
    options: Options,
    budget: Budget,
    seen: Probe,
    num_samples: int,
    cpu_replicas: int = 1,
) -> Setup:
    """Trial parameters and the cache keyed by everything that shapes a trial's peak."""
    tf, keras = _tf.tensorflow(), _tf.keras()
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
            "format": MEMTUNE_TRIAL_FORMAT,
            "num_samples": num_samples,
            "cpu_replicas": cpu_replicas,
            "custom": _custom_classes(keras_model),
        }
    )
    if budget.device == "cpu":  # a trial may never take more than the host can give
        limit = min(int(budget.budget_bytes * (1 - options.safety)), seen.host.available_bytes)
    else:
        limit = budget.budget_bytes
    cache = TrialCache(key, enabled=not options.no_cache)
    return Setup(feeds, accumulation, budget.device, limit, cache, num_samples, cpu_replicas)


def cached_curve(s: Setup, prior: MemoryCurve) -> tuple[MemoryCurve, list[Trial]]:
    """The prior refitted through whatever trials the cache already holds."""
    trials = s.cache.all()
    if not trials:
        return prior, []
    return prior.with_points([(t.batch_size, t.peak_bytes) for t in trials]), trials


def measured_plan(
    spec: Any,
    keras_model: Any,
    s: Setup,
    prior: MemoryCurve,
    plan_for: Callable[..., Plan],
    notes: list[str],
) -> tuple[Plan, MemoryCurve]:
    """Trials in child processes (cached) refine the prior; the chosen batch is verified."""
    with contextlib.ExitStack() as stack:
        model_arg = spec if isinstance(spec, str) else _saved_copy(keras_model, stack)
        if model_arg is None:
            notes.append("no trials: the model could not be saved for a trial process; unverified")
            return plan_for(prior, None, notes), prior
        trial_spec = TrialSpec(
            model_arg,
            s.feeds,
            s.accumulation,
            s.device,
            num_samples=s.num_samples,
            cpu_replicas=s.cpu_replicas,
        )

        def measure(batch: int) -> Trial:
            trial = s.cache.get(batch, s.limit_bytes)
            cached = trial is not None
            if trial is None:
                progress.report("trial", batch=batch, limit=s.limit_bytes)
                trial = run_trial(
                    trial_spec, batch, limit_bytes=s.limit_bytes, debug=_tf.debug_enabled()
                )
                s.cache.put(trial)
            progress.report(
                "trial_done",
                batch=batch,
                peak=trial.peak_bytes,
                exceeded=trial.exceeded,
                cached=cached,
            )
            return trial

        result = search(prior, measure, lambda curve, cap: plan_for(curve, cap))
    summary = (
        f"{len(result.trials)} trial(s) of {TRIAL_STEPS} training steps measured in a child "
        f"process; {s.cache.hits} from the cache"
    )
    notes.extend([*result.notes, summary])
    plan = plan_for(result.curve, result.plan.batch_size, notes)
    return replace(plan, trials=list(result.trials)), result.curve


SLOPE_BATCHES = (8, 64)


def slope_from_cpu(
    spec: Any, keras_model: Any, s: Setup, prior: MemoryCurve
) -> tuple[MemoryCurve, list[Trial]]:
    """A device curve for a GPU this machine lacks: the prior's fixed part (context, weights,
    gradients, optimizer) and the per-sample growth measured by two CPU trials."""
    with contextlib.ExitStack() as stack:
        model_arg = spec if isinstance(spec, str) else _saved_copy(keras_model, stack)
        if model_arg is None:
            return prior, []
        trial_spec = TrialSpec(model_arg, s.feeds, s.accumulation, "cpu", num_samples=None)
        trials = []
        for batch in SLOPE_BATCHES:
            hit = s.cache.get(batch, s.limit_bytes)
            trial = hit or run_trial(trial_spec, batch, limit_bytes=s.limit_bytes)
            s.cache.put(trial)
            trials.append(trial)
    (b0, p0), (b1, p1) = ((t.batch_size, t.peak_bytes) for t in trials)
    slope = max(prior.per_sample_bytes // 4, (p1 - p0) // (b1 - b0))
    return MemoryCurve(prior.fixed_bytes, slope, "analytic"), trials


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


def _saved_copy(keras_model: Any, stack: contextlib.ExitStack) -> str | None:
    """A model object saved to a temporary .keras file, so a trial child can load it."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memtune-model-")))
    path = folder / "model.keras"
    try:
        with _tf.native_stderr_quiet():
            keras_model.save(path)
    except Exception:
        return None
    return str(path)
