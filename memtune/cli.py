"""The command line: parse, call the library, map errors to the contract's exit codes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from memtune.core.errors import MemtuneError
from memtune.proc import children, heap, signals
from memtune.proc import tf as _tf


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's logs")


def _add_flags(p: argparse.ArgumentParser, options: list[Any], *, optional: bool) -> None:
    """Flags from rows of the option table (:data:`memtune.core.options.OPTIONS`).
    ``optional`` (check): nothing is required and nothing has a default, so only the flags
    given override ``[tool.memtune]``."""
    for o in options:
        kwargs: dict[str, Any] = {"help": o.help, "dest": o.name}
        if o.kind == "switch":
            kwargs["action"] = "store_true"
        elif o.kind == "repeat":
            kwargs.update(action="append", metavar=o.metavar)
        else:
            kwargs.update(type={"int": int, "float": float}.get(o.kind), metavar=o.metavar)
            if o.choices:
                kwargs.update(choices=o.choices, metavar=None)
        if o.kind != "switch" and o.default is not None and not optional:
            kwargs["default"] = o.default
        if o.name in ("model", "data", "epochs") and not optional:
            kwargs["required"] = True
        p.add_argument(o.flag, **{k: v for k, v in kwargs.items() if v is not None})


def _plan_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The options suggest, fit and check share, and --json; for check nothing has a
    default."""
    from memtune.core.options import rows

    _add_flags(p, rows("input", "plan"), optional=not required)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    if not required:
        p.set_defaults(
            **{a.dest: None for a in p._actions if a.dest not in ("help", "json", "debug")}
        )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The planning keywords the flags gave, by the option table's names."""
    from memtune.core.options import rows

    return {o.name: getattr(args, o.name) for o in rows("plan")}


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def cmd_probe(args: argparse.Namespace) -> int:
    from memtune.probe import probe

    result = probe()
    if args.json:
        _print_json(result.to_json())
    else:
        from memtune.ui.tables import console, render_probe

        render_probe(result, console())
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from memtune.app.prepare import prepare, suggest_plan
    from memtune.core.options import make_options

    if args.save_plan:
        from memtune.proc.paths import output_file

        output_file("--save-plan", args.save_plan, (".json",))
    options = make_options(**_options(args))
    with _planning(args.json):
        if args.save_plan:  # the file needs what the plan depends on: the model read, the data
            prepared = prepare(args.model, args.data, options)
            plan, seen = prepared.plan, prepared.probe
        else:
            plan, seen = suggest_plan(args.model, args.data, options)
    if args.save_plan:
        from memtune.app import plan_file

        keywords = plan_file.planning_keywords(_options(args))
        plan_file.save(args.save_plan, plan, prepared.depends_on(args.data), keywords)
    for warning in seen.warnings:
        print(f"memtune: warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(plan.to_json())
    else:
        from memtune.ui.tables import console, render_plan

        render_plan(plan, console())
    return 0


@contextlib.contextmanager
def _planning(machine_output: bool) -> Iterator[Any]:
    """Show planning's progress for the block (see ``memtune.ui.planning``)."""
    from memtune.proc import progress
    from memtune.ui.planning import planning_view

    with planning_view(machine_output) as view, progress.listening(view):
        yield view


def _dashboard(
    show: bool,
    trace: str | None,
    tensorboard: str | None = None,
    resume: bool = False,
    planning: Any = None,
) -> Callable[[Any], list[Any]]:
    """Plan → the live dashboard callback (and trace writer), once the plan is known."""

    def callbacks(plan: Any) -> list[Any]:
        if planning is not None:
            planning.close()  # one live view at a time on the terminal
        if not show and not trace and not tensorboard:
            return []
        from memtune.ui.memory_dashboard import MemoryDashboard

        board = MemoryDashboard(
            plan.usable_bytes,
            batch_size=plan.batch_size,
            accumulation=plan.gradient_accumulation_steps,
            trace=trace,
            show=show,
            tensorboard=tensorboard,
            worker=f"index {plan.worker_index} of {plan.workers}" if plan.workers > 1 else "",
            append_trace=resume,
        )
        if tensorboard:
            keras = _tf.keras()
            return [board, keras.callbacks.TensorBoard(log_dir=tensorboard)]
        return [board]

    return callbacks


def cmd_fit(args: argparse.Namespace) -> int:
    from memtune.app.fit import fit

    if args.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise MemtuneError(
                "--tensorboard needs the tensorboard package: pip install 'memtune[tensorboard]'"
            )
    from memtune.proc.paths import output_dir, output_file, outside_folder

    if args.trace:
        output_file("--trace", args.trace, (".jsonl",))
    if args.report:
        output_file("--report", args.report, (".png",))
    if args.tensorboard:
        output_dir("--tensorboard", args.tensorboard)
    for flag in ("--trace", "--report", "--tensorboard"):
        value = getattr(args, flag[2:])
        if value and args.checkpoint_dir:
            outside_folder(flag, value, "--checkpoint-dir", args.checkpoint_dir)
    show = not (args.no_dashboard or args.json)
    trace = args.trace
    with contextlib.ExitStack() as stack:
        if args.report and not trace:
            trace = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "trace.jsonl")
        appends = args.resume and trace == args.trace  # a resumed run continues its trace
        planning = stack.enter_context(_planning(args.json))
        board = _dashboard(show, trace, args.tensorboard, resume=appends, planning=planning)
        result = _fit_with(fit, args, board, show)
        if args.report:
            from memtune.ui.report import report_after_fit

            report_after_fit(Path(trace), Path(args.report), result.plan.usable_bytes)
    if args.json:
        _print_json(result.to_json())
    else:
        from memtune.ui.tables import console, render_fit

        render_fit(result, console())
    return 0


def _fit_with(fit: Any, args: argparse.Namespace, dashboard: Any, show: bool) -> Any:
    quiet = args.json or show
    return fit(
        args.model,
        args.data,
        epochs=args.epochs,
        save=args.save,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        seed=args.seed,
        verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
        plan_callbacks=dashboard,
        plan=args.plan,
        **_options(args),
    )


def cmd_report(args: argparse.Namespace) -> int:
    from memtune.ui.report import write_report

    write_report(Path(args.trace), Path(args.output))
    print(f"wrote {args.output}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from memtune.app.check import load_config, run_check, write_junit

    config = load_config(Path(args.config) if args.config else None, args.profile)
    flags = {k: v for k, v in _options(args).items() if v is not None}
    for key in ("model", "data"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    with _planning(args.json):
        result = run_check({**config, **flags}, kept_plan=args.plan)
    if args.junit:
        write_junit(result, Path(args.junit))
    if args.json:
        _print_json(result.to_json())
    else:
        from memtune.ui.tables import console, render_check

        render_check(result, console())
    return 0 if result.fits else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from memtune.app.demo import example_in, write_demo
    from memtune.app.fit import fit
    from memtune.app.prepare import prepare
    from memtune.core.options import make_options
    from memtune.ui.tables import console, render_fit, render_plan

    directory = write_demo(Path(args.dir), images=args.images)
    ex, out = example_in(directory, images=args.images), console()
    words = f"--model {ex.model} --data {ex.data}" + "".join(f" --target {t}" for t in ex.target)
    if ex.max_batch_size:
        words += f" --max-batch-size {ex.max_batch_size}"
    out.print(f"Wrote the example to {directory}/: {ex.wrote}.")
    out.print(f"$ memtune suggest {words}", soft_wrap=True)
    options = dict(target=list(ex.target), max_batch_size=ex.max_batch_size)
    with _planning(False):
        prepared = prepare(ex.model, ex.data, make_options(**options))
    render_plan(prepared.plan, out)
    saved = directory / "model.keras"
    out.print(f"$ memtune fit {words} --epochs {ex.epochs} --save {saved}", soft_wrap=True)
    with _planning(False) as planning:
        result = fit(
            ex.model,
            ex.data,
            epochs=ex.epochs,
            save=str(saved),
            verbose=0,
            plan_callbacks=_dashboard(True, None, planning=planning),
            **options,
        )
    render_fit(result, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memtune",
        description="Train Keras models on the memory you actually have.",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("probe", help="host RAM and GPU memory as seen now")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=cmd_probe)
    p = sub.add_parser("suggest", help="the largest safe batch and the data mode")
    _plan_flags(p)
    p.add_argument(
        "--save-plan",
        metavar="FILE.json",
        help="keep the plan, with what it depends on, for fit --plan and check --plan",
    )
    p.set_defaults(handler=cmd_suggest)
    p = sub.add_parser("fit", help="plan, then train with the plan")
    _plan_flags(p)
    from memtune.core.options import rows

    _add_flags(p, rows("fit", "cli"), optional=False)
    p.set_defaults(handler=cmd_fit)
    p = sub.add_parser("report", help="memory-over-time picture of a finished run")
    p.add_argument("trace", metavar="TRACE.jsonl", help="a trace written by fit --trace")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the picture")
    _common(p)
    p.set_defaults(handler=cmd_report)
    p = sub.add_parser("check", help="CI preflight: does the configured batch fit?")
    _plan_flags(p, required=False)
    p.add_argument(
        "--config", metavar="FILE", help="TOML with [tool.memtune] (default ./pyproject.toml)"
    )
    p.add_argument("--profile", metavar="NAME", help="apply [tool.memtune.profiles.NAME]")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--plan", metavar="FILE", help="judge on a plan kept by suggest --save-plan")
    p.set_defaults(handler=cmd_check)
    p = sub.add_parser("demo", help="write an example dataset and model, plan it and train it")
    p.add_argument(
        "dir", nargs="?", default="memtune-demo", metavar="DIR", help="where (memtune-demo)"
    )
    p.add_argument(
        "--images", action="store_true", help="an image folder and a convnet instead of shards"
    )
    _common(p)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memtune`` console script; returns the exit code (called with
    ``argv``, as tests do). As the script itself (no ``argv``) the process ends with that
    code once its output is flushed, without the interpreter's teardown, where TensorFlow's
    and pyarrow's thread pools can hang (:func:`memtune.proc.children.finish`)."""
    if argv is None:  # the process is memtune's: glibc's malloc is set before any thread
        heap.configure()
    code = _run(argv)
    if argv is None:
        children.finish(code)
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw
    _tf.set_debug(debug)
    signals.install()
    fail = functools.partial(_fail, machine="--json" in raw)
    try:
        args = parser.parse_args(raw)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except _UsageError as exc:
        return fail(str(exc), 2)
    except MemtuneError as exc:
        if debug:
            traceback.print_exc()
        return fail(f"memtune: error: {exc}", exc.exit_code)
    except KeyboardInterrupt as exc:
        where = getattr(args, "checkpoint_dir", None) if "args" in locals() else None
        kept = f"; the checkpoint in {where} is kept (--resume continues)" if where else ""
        how = f"stopped by {exc.args[0]}" if isinstance(exc, signals.Stopped) else "interrupted"
        return fail(f"memtune: {how}{kept}", signals.exit_code(exc))
    except Exception as exc:
        if debug:
            traceback.print_exc()
        detail = " ".join(str(exc).split())[:300]
        line = f"memtune: internal error: {type(exc).__name__}: {detail}"
        return fail(f"{line} (run with --debug for the traceback)", 1)


def _fail(line: str, code: int, *, machine: bool) -> int:
    """The one line on stderr; under ``--json`` also ``{"error", "exit_code"}`` on stdout,
    so a script reads an object, not nothing."""
    print(line, file=sys.stderr)
    if machine:
        _print_json({"error": line.removeprefix("memtune: error: "), "exit_code": code})
    return code
