"""Plans kept as files: ``suggest --save-plan FILE`` writes the plan with what it depends on
(``depends_on``: the model's architecture, the data's files and rows, the budget, the host,
the versions) and the planning options; ``fit --plan FILE`` and ``check --plan FILE`` use
it as it is, or say in one line what changed and plan again."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtune.core.curve import MemoryCurve
from memtune.core.errors import MemtuneError
from memtune.core.options import rows
from memtune.core.plan import Plan, plan_from_json
from memtune.core.units import format_bytes
from memtune.proc import progress
from memtune.proc.paths import output_file, write_text_atomically

if TYPE_CHECKING:
    from memtune.app.where import Where
    from memtune.data.scan import DataInfo
    from memtune.model.info import ModelInfo

FORMAT = 1  # the plan file's layout; another is refused, not misread


@dataclass(frozen=True)
class KeptPlan:
    """A plan to reuse: from a file (``depends_on`` and ``options`` as saved) or, from
    Python, a :class:`Plan` object (both None: its rows and sample size are checked)."""

    plan: Plan
    label: str  # how a line names it: the file, or "plan="
    depends_on: dict[str, Any] | None = None
    options: dict[str, Any] | None = None  # the planning keywords it was made with


def planning_keywords(options: dict[str, Any]) -> dict[str, Any]:
    """The planning keywords as JSON keeps them (objects by their repr)."""
    names = {o.name for o in rows("plan")}
    kept = {k: v for k, v in options.items() if k in names}
    return json.loads(json.dumps(kept, default=repr))


def depends_on(model: ModelInfo, data: Any, info: DataInfo, where: Where) -> dict[str, Any]:
    """What a plan holds for: change one and the plan is made again."""
    host = where.probe.host
    return {
        "model": hashlib.sha256(json.dumps(model.key, sort_keys=True).encode()).hexdigest(),
        "data": _data(data, info),
        "device": where.device,
        "budget": {"bytes": where.budget.budget_bytes, "source": where.budget.source},
        "host": {"total_bytes": host.total_bytes, "limit_bytes": host.limit_bytes},
        "versions": versions(),
    }


def _data(data: Any, info: DataInfo) -> dict[str, Any]:
    """Rows and columns; for files, each file's name, size and modification time."""
    files = []
    if isinstance(data, str | os.PathLike):
        for shard in info.source.shards:
            if shard.path is not None:
                stat = shard.path.stat()
                files.append([shard.label, stat.st_size, stat.st_mtime_ns])
    return {"rows": info.num_samples, "columns": sorted(info.columns), "files": files}


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "memtune": version("memtune"),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "python": platform.python_version(),
    }


def save(path: str, plan: Plan, depends: dict[str, Any], options: dict[str, Any]) -> None:
    """Write the plan file atomically: the plan's JSON, its curve, options, depends_on."""
    target = output_file("--save-plan", path, (".json",))
    value = plan.to_json() | {
        "format": FORMAT,
        "curve": plan.curve.to_json() if plan.curve else None,
        "options": options,
        "depends_on": depends,
    }
    write_text_atomically(target, json.dumps(value, indent=2) + "\n")


def load(path: str | os.PathLike[str]) -> KeptPlan:
    """A plan file, or one line naming what is wrong with it."""
    where = f"--plan {os.fspath(path)!r}"
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MemtuneError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MemtuneError(f"{where}: not a plan file ({type(e).__name__})") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise MemtuneError(f"{where}: not a plan file from suggest --save-plan")
    try:
        curve = MemoryCurve.from_json(value["curve"]) if value.get("curve") else None
        plan = plan_from_json(value, curve)
        depends, options = value["depends_on"], value["options"]
        if not isinstance(depends, dict) or not isinstance(options, dict):
            raise TypeError("depends_on")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise MemtuneError(f"{where}: a damaged plan file ({type(e).__name__}: {e})") from None
    return KeptPlan(plan, os.fspath(path), depends, options)


def merged_keywords(kept: KeptPlan, given: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The keywords to plan with: the kept plan's, and any given here that differ from their
    default and from the kept one's (then also the line naming the first)."""
    if kept.options is None:
        return given, None
    defaults = {o.name: o.default for o in rows("plan")}
    merged, change = dict(kept.options), None
    for name, value in planning_keywords(given).items():
        unset = value is None or value is False or value == [] or value == defaults.get(name)
        if unset or value == kept.options.get(name):
            continue
        if change is None:
            flag = "--" + name.replace("_", "-")
            change = f"{flag} is {value!r} here, {kept.options.get(name)!r} in the plan"
        merged[name] = value
    return merged, change


def what_changed(kept: KeptPlan, now: dict[str, Any]) -> str | None:
    """The first thing the kept plan depends on that is not as it was, in words; None when
    the plan holds."""
    then = kept.depends_on
    if then is None:
        return None
    for name, version in now["versions"].items():
        if then.get("versions", {}).get(name) != version:
            return f"{name} is {version} here, {then.get('versions', {}).get(name)} in the plan"
    if then.get("model") != now["model"]:
        return "the model changed (its architecture, optimizer or custom layers)"
    data_then, data_now = then.get("data", {}), now["data"]
    if data_then.get("rows") != data_now["rows"]:
        return f"the data has {data_now['rows']:,} rows, {data_then.get('rows')} in the plan"
    if data_then.get("columns") != data_now["columns"]:
        return "the data's columns changed"
    changed = _changed_file(data_then.get("files", []), data_now["files"])
    if changed:
        return changed
    for key in ("device", "host"):
        if then.get(key) != now[key]:
            return f"the {key} changed ({now[key]} here, {then.get(key)} in the plan)"
    return budget_change(kept.plan, then.get("budget", {}), now["budget"])


def _changed_file(then: list[Any], now: list[Any]) -> str | None:
    before = {f[0]: f[1:] for f in then}
    for label, size, mtime in now:
        if label not in before:
            return f"the data's file {label} is new"
        if before.pop(label) != [size, mtime]:
            return f"the data's file {label} changed (size or modification time)"
    if before:
        return f"the data's file {next(iter(before))} is gone"
    return None


def budget_change(plan: Plan, then: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A budget given as a size must be the same; one read off the host (``auto``, or a
    size clipped to what the host gives) must still hold the plan's predicted peak."""
    fixed = ("--budget", "--gpu-memory")
    if then.get("source") in fixed or now["source"] in fixed:
        if then.get("bytes") == now["bytes"]:
            return None
        return (
            f"the budget is {format_bytes(now['bytes'])} here, "
            f"{format_bytes(int(then.get('bytes') or 0))} in the plan"
        )
    usable = int(now["bytes"] * plan.usable_bytes / max(1, plan.budget_bytes))
    if plan.predicted_peak_bytes <= usable:
        return None
    return (
        f"the host gives {format_bytes(usable)} usable now, under the plan's predicted peak "
        f"{format_bytes(plan.predicted_peak_bytes)}"
    )


def object_mismatch(kept: KeptPlan, num_samples: int, per_sample_bytes: int) -> str | None:
    """A plan object from Python: made for this many rows of this size?"""
    plan = kept.plan
    if (plan.num_samples, plan.per_sample_bytes) != (num_samples, per_sample_bytes):
        return (
            f"made for {plan.num_samples:,} samples of {plan.per_sample_bytes:,} B, this data "
            f"has {num_samples:,} of {per_sample_bytes:,} B"
        )
    return None


def holds(
    kept: KeptPlan,
    model: ModelInfo,
    data: Any,
    info: DataInfo,
    where: Where,
    sample: tuple[int, int],
) -> bool:
    """Whether a kept plan still holds here; if not, one line says what changed.
    ``sample``: the training samples and one sample's bytes, as planned now."""
    if kept.depends_on is None:
        why = object_mismatch(kept, *sample)
    else:
        now = depends_on(model, data, info, where)
        try:
            why = what_changed(kept, now)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            why = "its depends_on is damaged"
    if why is not None:
        warn(f"{kept.label}: {why}; planning again")
        return False
    progress.report("stage", what=f"using the plan in {kept.label}")
    return True


def warn(message: str) -> None:
    print(f"memtune: warning: {message}", file=sys.stderr)
