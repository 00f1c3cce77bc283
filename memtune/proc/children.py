"""Child processes memtune starts (model inspection, trials): started, reaped, never orphaned.

Each child runs ``python -m MODULE`` in its own session (a terminal's Ctrl-C reaches memtune,
which stops the child itself), reads one JSON request on stdin and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from typing import IO, Any, NoReturn, Protocol

PARENT_ENV = "MEMTUNE_TRIAL_PARENT"
PR_SET_PDEATHSIG = 1


class Child(Protocol):
    """What memtune uses of a child: a :class:`subprocess.Popen`, or a child forked from the
    warm parent (:class:`memtune.proc.warm.WarmChild`)."""

    pid: int
    returncode: int | None

    @property
    def stdin(self) -> IO[str] | None: ...
    @property
    def stdout(self) -> IO[str] | None: ...
    @property
    def stderr(self) -> IO[str] | None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def communicate(self, input: str = ..., timeout: float | None = None) -> tuple[str, str]: ...


def spawn(module: str) -> subprocess.Popen[str]:
    """Start ``python -m module`` with pipes, in its own session, told who its parent is."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env[PARENT_ENV] = str(os.getpid())
    return subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def reap(proc: Child) -> None:
    """Kill the child's process group and wait for it, whatever ended the call (a signal
    turned into an exception included): no child outlives the call. Its pipes are closed
    even when it had ended and been waited for already (a trial's answer is read so)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if isinstance(proc, subprocess.Popen):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
        else:  # a warm parent's child: killed by pid too (it may not lead its group yet)
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        proc.returncode = -signal.SIGKILL
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def wait(proc: Child) -> int:
    """Wait for a child that has ended or is ending; its exit code (``-N``: signal N)."""
    if isinstance(proc, subprocess.Popen):
        _, status, _ = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode
    return proc.wait()


def die_with_parent() -> None:
    """In the child. Linux: the kernel sends SIGKILL when memtune dies, even by SIGKILL. If
    memtune is already gone (it died before this line), exit at once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(1)


def finish(code: int) -> NoReturn:
    """End this process now, its output flushed, skipping the interpreter's teardown.

    A process that loaded TensorFlow and pyarrow can hang in their thread pools' shutdown
    after its work is done (apache/arrow#50482 is one such deadlock): a child's answer is
    then printed, but its parent waits for EOF until the child's deadline, and a finished
    ``memtune`` never returns to the shell. Everything memtune writes is closed before this
    (outputs are written atomically), so only the teardown is skipped."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object (the child's answer)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
