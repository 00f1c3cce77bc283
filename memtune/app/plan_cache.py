"""The last plan for the same inputs, kept in the cache folder: ``suggest``, ``fit`` and
``check`` take it while nothing it depends on changed. Whether it holds is read from files'
sizes and modification times alone — the model's file (a factory's, with the ``.py`` files
beside it) and the data's — so a hit runs no trial, no model-reading child and no scan.

Only for a model and data named by paths; ``--no-cache`` plans afresh (and keeps the new
plan). A damaged entry reads as a miss."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtune.app import plan_file
from memtune.core.constants import NOISE_FLOOR, NOISE_SHARE
from memtune.core.curve import MemoryCurve
from memtune.core.options import Options
from memtune.core.paths import cache_dir
from memtune.core.plan import Plan, plan_from_json
from memtune.estimate.cache import cache_key
from memtune.model.load import factory_parts
from memtune.proc.paths import write_text_atomically

if TYPE_CHECKING:
    from memtune.app.where import Where

FORMAT = 3  # 3: a measured stream of rows read where they lie adds no hand-over
LABEL = "the plan cache"  # how a line names it


def _path_of(model: Any, data: Any, options: Options) -> Path | None:
    """The entry for these inputs, or None when they are not all named by paths."""
    if not isinstance(model, str | os.PathLike) or not isinstance(data, str | os.PathLike):
        return None
    validation = options.validation_data
    if validation is not None and not isinstance(validation, str | os.PathLike):
        return None
    chosen = {k: v for k, v in asdict(options).items() if k != "no_cache"}
    key = cache_key(
        {
            "format": FORMAT,
            "model": _absolute_spec(os.fspath(model)),
            "data": os.path.abspath(data),
            "options": chosen,
        }
    )
    return cache_dir() / "plans" / f"{key}.json"


def _absolute_spec(spec: str) -> str:
    factory = factory_parts(spec)
    if factory is None:
        return os.path.abspath(spec)
    location, function = factory
    return f"{os.path.abspath(location)}:{function}" if location.endswith(".py") else spec


def _model_files(spec: str) -> list[Path]:
    """The files a model spec is read from: a ``.keras`` file, or a factory's module and
    the ``.py`` files beside it (what it most likely imports)."""
    factory = factory_parts(spec)
    if factory is None:
        return [Path(spec)]
    location = factory[0]
    if location.endswith(".py"):
        module = Path(location)
    else:
        try:
            found = importlib.util.find_spec(location)
        except (ImportError, ValueError):
            return []
        if found is None or not found.origin:
            return []
        module = Path(found.origin)
    return sorted({module, *module.parent.glob("*.py")})


def data_files(data: Any) -> list[Path]:
    """The files a data path names (a folder's, an image folder's one level down)."""
    path = Path(data)
    if not path.is_dir():
        return [path]
    # An image folder's files are one level down, in its class folders.
    shown = [p for p in path.iterdir() if not p.name.startswith(".")]
    inner = [q for p in shown if p.is_dir() for q in p.iterdir() if not q.name.startswith(".")]
    return sorted(p for p in (*shown, *inner) if p.is_file())


def _stats(files: list[Path]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for f in files:
        try:
            stat = f.stat()
        except OSError:
            out.append([str(f), None, None])
            continue
        out.append([str(f), stat.st_size, stat.st_mtime_ns])
    return out


def _files(model: Any, data: Any, options: Options) -> dict[str, Any]:
    validation = options.validation_data
    return {
        "model": _stats(_model_files(os.fspath(model))),
        "data": _stats(data_files(data)),
        "validation": _stats(data_files(validation)) if validation is not None else [],
    }


def _now(model: Any, data: Any, options: Options, where: Where) -> dict[str, Any]:
    host = where.probe.host
    return {
        "files": _files(model, data, options),
        "device": where.device,
        "budget": {"bytes": where.budget.budget_bytes, "source": where.budget.source},
        "host": {"total_bytes": host.total_bytes, "limit_bytes": host.limit_bytes},
        "versions": plan_file.versions(),
    }


def lookup(model: Any, data: Any, options: Options, where: Where) -> Plan | None:
    """The cached plan for these inputs if nothing it depends on changed, else None."""
    path = _path_of(model, data, options)
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
        then = value["depends_on"]
        now = _now(model, data, options, where)
        if any(then[k] != now[k] for k in ("files", "device", "host", "versions")):
            return None
        curve = MemoryCurve.from_json(value["curve"]) if value.get("curve") else None
        plan = plan_from_json(value["plan"], curve)
        if plan_file.budget_change(plan, then["budget"], now["budget"]) is not None:
            return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return None
    return plan


def store(model: Any, data: Any, options: Options, where: Where, plan: Plan) -> None:
    """Keep ``plan`` for these inputs (best effort: a cache that cannot be written is
    skipped, never an error)."""
    path = _path_of(model, data, options)
    if path is None:
        return
    value = {
        "format": FORMAT,
        "plan": plan.to_json(),
        "curve": plan.curve.to_json() if plan.curve else None,
        "depends_on": _now(model, data, options, where),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(value) + "\n")
    except OSError:
        pass


def forget(model: Any, data: Any, options: Options) -> None:
    """Drop the entry for these inputs: the next plan measures again."""
    path = _path_of(model, data, options)
    if path is not None:
        path.unlink(missing_ok=True)


def drifted(predicted: int, peak: int) -> bool:
    """Whether a run's peak is off its kept plan's prediction by more than a trial's noise
    plus the 5 % a measured plan leaves: the plan was made in another period."""
    return abs(peak - predicted) > max(2 * NOISE_FLOOR, int((NOISE_SHARE + 0.05) * predicted))
