"""The Python API: validate the options, then do the work in the rooms that own it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memtune.data.scan import DataInfo, scan
from memtune.footprint import Footprint, footprint
from memtune.options import Options, make_options
from memtune.plan import Plan, make_plan, resolve_budget, resolve_device
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
    curve = analytic_curve(profile_model(keras_model, fp), fp, gpu=device != "cpu")
    notes = list(info.warnings) + fp.notes
    plan = make_plan(
        budget,
        curve,
        num_samples=info.num_samples,
        per_sample_bytes=fp.per_sample_bytes,
        options=options.plan_options(any(f.sequence for f in fp.feeds)),
        notes=notes,
    )
    return Prepared(options, info, keras_model, fp, seen, plan)


def suggest(model: Any, data: Any, **options: Any) -> Plan:
    """The largest safe batch and the data mode for training ``model`` on ``data``."""
    return prepare(model, data, make_options(**options)).plan
