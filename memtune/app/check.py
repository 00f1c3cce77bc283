"""``memtune check``: a memory preflight for CI, configured by ``[tool.memtune]``.

The configured batch (and mode) either fits the usable budget — exit 0 — or does not —
exit 1, with the largest safe batch and the accumulation steps that keep the effective
batch. A bad config is exit 2, naming the key.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtune.core.errors import MemtuneError, NothingFits
from memtune.core.options import config_keys as options_config_keys
from memtune.core.pipeline_memory import Mode
from memtune.core.plan import Plan
from memtune.core.units import format_bytes, parse_size
from memtune.proc.paths import write_text_atomically

if TYPE_CHECKING:  # planning loads the data readers: only when a check runs
    from memtune.app.prepare import Prepared

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

# [tool.memtune]'s keys beyond the option table's: a profile to apply, the profiles.
_PROFILE_KEYS: dict[str, tuple[type, ...]] = {"profile": (str,), "profiles": (dict,)}


def config_keys() -> dict[str, tuple[type, ...]]:
    """Every key ``[tool.memtune]`` takes and its TOML types: the option table's
    (:func:`memtune.core.options.config_keys`), and the profiles."""
    return {**options_config_keys(), **_PROFILE_KEYS}


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
    bool: "true or false",
}


@dataclass(frozen=True)
class CheckResult:
    fits: bool
    plan: Plan | None  # None: not even batch 1 fits
    configured_batch_size: int | None
    largest_safe_batch_size: int
    message: str
    estimate_only: bool

    def to_json(self) -> dict[str, Any]:
        return {
            **(self.plan.to_json() if self.plan else {}),
            "message": self.message,
            "fits": self.fits,
            "configured_batch_size": self.configured_batch_size,
            "largest_safe_batch_size": self.largest_safe_batch_size,
            "estimate_only": self.estimate_only,
        }


def load_config(path: Path | None, profile: str | None = None) -> dict[str, Any]:
    """``[tool.memtune]`` of ``path`` (default ./pyproject.toml), validated, paths resolved."""
    explicit = path is not None
    path = path or Path("pyproject.toml")
    if not path.is_file():
        if explicit:
            raise MemtuneError(f"--config {str(path)!r} does not exist")
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MemtuneError(f"{path}: not valid TOML ({exc})") from None
    table = document.get("tool", {}).get("memtune")
    if table is None:  # a standalone memtune.toml holds the keys at the top
        table = document if explicit and path.name != "pyproject.toml" else {}
    where = f"{path} [tool.memtune]"
    config = _validated(table, where)
    profiles = config.pop("profiles", {})
    chosen = profile or config.pop("profile", None)
    config.pop("profile", None)
    if chosen is not None:
        if chosen not in profiles:
            raise MemtuneError(
                f"{where}: no profile {chosen!r} (profiles: {', '.join(profiles) or 'none'})"
            )
        chosen_table = _validated(profiles[chosen], f"{where} profiles.{chosen}", nested=True)
        if "budget" not in chosen_table and {"gpu_memory", "device"} & chosen_table.keys():
            config.pop("budget", None)  # the profile names other hardware: its size wins
        config.update(chosen_table)
    base = path.resolve().parent
    for key in ("data", "validation_data"):
        if key in config and not Path(config[key]).is_absolute():
            config[key] = str(base / config[key])
    if "model" in config:
        config["model"] = _resolve_model(config["model"], base)
    if isinstance(config.get("maxlen"), dict):
        config["maxlen"] = [f"{k}={v}" for k, v in config["maxlen"].items()]
    return config


def _validated(table: Any, where: str, *, nested: bool = False) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise MemtuneError(f"{where}: expected a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        keys = config_keys()
        if key not in keys or (nested and key in ("profiles", "profile")):
            raise MemtuneError(f"{where}: unknown key {key!r}")
        accepted = keys[key]
        ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
        if key in ("budget", "gpu_memory") and isinstance(value, int | float):
            raise MemtuneError(
                f'{where}: key {key!r} = {value!r} needs a unit, e.g. "{value}GiB" '
                "(a bare number could mean bytes or GiB)"
            )
        if key in ("budget", "gpu_memory") and ok and value.strip().lower() != "auto":
            parse_size(value, what=f"{where}: key {key!r}")
        if not ok:
            expected = " or ".join(_TYPE_NAMES[t] for t in accepted)
            raise MemtuneError(f"{where}: key {key!r} must be {expected}, not {value!r}")
        out[key] = value
    return out


def _resolve_model(spec: str, base: Path) -> str:
    location, sep, function = spec.rpartition(":")
    if sep and location.endswith(".py") and not Path(location).is_absolute():
        return f"{base / location}:{function}"
    if not sep and not Path(spec).is_absolute():
        return str(base / spec)
    return spec


def run_check(config: dict[str, Any], kept_plan: str | None = None) -> CheckResult:
    """Plan for the configured model and data (or take the plan kept in ``kept_plan``), then
    judge the configured batch."""
    from memtune.app import plan_file
    from memtune.app.prepare import prepare
    from memtune.core.options import make_options

    for key in ("model", "data"):
        if key not in config:
            raise MemtuneError(f"check: no {key!r} in [tool.memtune] or on the command line")
    settings = {k: v for k, v in config.items() if k not in ("model", "data")}
    configured = settings.pop("batch_size", None)
    mode = settings.pop("mode", None)
    kept = plan_file.load(kept_plan) if kept_plan is not None else None
    if kept is not None:
        settings, change = plan_file.merged_keywords(kept, settings)
        if change is not None:
            plan_file.warn(f"{kept.label}: {change}; planning again")
            kept = None
    options = make_options(**settings)
    try:
        prepared = prepare(config["model"], config["data"], options, kept=kept)
    except NothingFits as exc:
        return CheckResult(False, None, configured, 0, str(exc), False)
    largest = prepared.plan.largest_safe_batch_size or prepared.plan.batch_size
    estimate_only = any(r.startswith("estimate:") for r in prepared.plan.reasons)
    if configured is None:
        plan = prepared.plan
        return CheckResult(
            True, plan, None, largest, f"fits: the largest safe batch is {largest}", estimate_only
        )
    if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
        raise MemtuneError(f"batch_size {configured!r}: must be a positive integer")
    plan, stopped = _judged(prepared, configured, mode)
    steps = -(-(options.effective_batch_size or configured) // largest)
    keeps = (
        f"the largest safe batch is {largest} — batch {largest} with {steps} accumulation "
        f"steps keeps an effective batch of {largest * steps}"
    )
    fits = not stopped and plan.predicted_peak_bytes <= plan.usable_bytes
    return CheckResult(
        fits, plan, configured, largest, _verdict(plan, configured, stopped, keeps), estimate_only
    )


def _judged(prepared: Prepared, configured: int, mode: Mode | None) -> tuple[Plan, bool]:
    """The configured batch's plan on the planning trials' curve, or — past what they
    support — on a trial of its own (not an extrapolation); True when that trial was stopped
    at its limit."""
    plan = prepared.plan_at(configured, mode)
    supported = _supported(prepared.plan)
    fits = plan.predicted_peak_bytes <= plan.usable_bytes
    if not fits or supported is None or configured <= supported or not prepared.trial_at:
        return plan, False
    trial = prepared.trial_at(configured)
    if trial is None:
        return plan, False
    if trial.exceeded:
        return plan, True
    points = [*prepared.curve.points, (configured, trial.peak_bytes)]
    plan = prepared.plan_at(configured, mode, prepared.curve.with_points(points))
    why = (
        f"batch {configured} is past batch {supported}, the largest the planning "
        f"trials support: a trial of its own measured {format_bytes(trial.peak_bytes)}"
    )
    return replace(plan, reasons=[*plan.reasons, why]), False


def _verdict(plan: Plan, configured: int, stopped: bool, keeps: str) -> str:
    """The verdict in one line, with the batch that keeps the effective batch when it does
    not fit."""
    if stopped:
        return (
            f"does not fit: a trial at batch {configured:,} passed its limit and was stopped; "
            f"{keeps}"
        )
    peak, usable = plan.predicted_peak_bytes, plan.usable_bytes
    if peak <= usable:
        return (
            f"fits: batch {configured} predicts {format_bytes(peak)} of the usable "
            f"{format_bytes(usable)} on {plan.device}"
        )
    return (
        f"does not fit: batch {configured} predicts {format_bytes(peak)}, "
        f"{format_bytes(peak - usable)} over the usable {format_bytes(usable)} on "
        f"{plan.device}; {keeps}"
    )


def _supported(plan: Plan) -> int | None:
    """The largest batch the plan's trials support; None without completed trials."""
    from memtune.estimate.fitting import reach

    ran = [t.batch_size for t in plan.trials if not t.exceeded]
    return reach(max(ran), plan.trials) if ran else None


def write_junit(result: CheckResult, path: Path) -> None:
    """A JUnit XML report with one test case, written atomically."""
    suite = ET.Element("testsuite", name="memtune", tests="1", failures="0" if result.fits else "1")
    device = result.plan.device if result.plan else "the configured device"
    reasons = result.plan.reasons if result.plan else []
    case = ET.SubElement(
        suite, "testcase", classname="memtune.app.check", name=f"memory preflight on {device}"
    )
    if not result.fits:
        failure = ET.SubElement(case, "failure", message=result.message, type="MemoryDoesNotFit")
        failure.text = "\n".join(reasons)
    out = ET.SubElement(case, "system-out")
    out.text = "\n".join([result.message, *reasons])
    data = ET.tostring(suite, encoding="unicode", xml_declaration=True)
    if not path.parent.is_dir():
        raise MemtuneError(f"--junit {str(path)!r}: folder {str(path.parent)!r} does not exist")
    write_text_atomically(path, data + "\n")
