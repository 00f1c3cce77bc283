"""The warm parent's side (:mod:`memtune.proc.warm` is memtune's): load once, then fork one
child per request, or become the last child itself, until memtune closes the socket.

Run as ``python -m memtune.proc.warm_parent``; its ``/proc/PID/comm`` is
:data:`memtune.probe.process.WARM_NAME`, which the tree's measure tells apart by.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from memtune.probe import process
from memtune.proc import children, heap

FD_ENV = "MEMTUNE_WARM_FD"
MAX_MESSAGE = 65536


def _load(preload: Sequence[str]) -> None:
    for name in preload:
        module, _, function = name.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()


def _run_child(module: str, fds: list[int], sock: socket.socket, *, forked: bool = True) -> None:
    """In the forked child (or the warm parent itself, not ``forked``): become
    ``python -m module`` on the passed pipes."""
    code = 1
    try:
        sock.close()
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        if forked:
            os.setsid()  # the warm parent leads its own session already
        _name(module.rsplit(".", 1)[-1][:15])
        os.environ[children.PARENT_ENV] = str(os.getppid())
        # runpy's note that the module was imported before (the warm parent loaded it)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        children.finish(code)


def _reap(sock: socket.socket, alive: set[int]) -> None:
    for pid in list(alive):
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                alive.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                sock.send(json.dumps({"exit": pid, "code": code}).encode())


def _settle(sock: socket.socket, alive: set[int], timeout_s: float = 10.0) -> bool:
    """Wait for the forked children to end (their exit codes sent): whether they all did."""
    deadline = time.monotonic() + timeout_s
    while alive and time.monotonic() < deadline:
        _reap(sock, alive)
        if alive:
            time.sleep(0.01)
    return not alive


def _serve(sock: socket.socket) -> int:
    """Load, then fork one child per request (or, asked to become one, run it in this
    process once the forked children have ended) until memtune closes the socket."""
    first = json.loads(sock.recv(MAX_MESSAGE))
    _load(first["preload"])
    gc.collect()
    gc.freeze()  # the children's collections leave these objects' pages shared
    heap.trim()  # free heap pages go back: a child's allocations land on new pages, not copies
    sock.send(json.dumps({"loaded": True}).encode())
    alive: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([sock], [], [], 0.02)
            _reap(sock, alive)
            if not ready:
                continue
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
            if not data:
                return 0
            request = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            if request.get("become"):
                if _settle(sock, alive):
                    sock.send(json.dumps({"pid": os.getpid()}).encode())
                    _run_child(str(request["module"]), fds, sock, forked=False)
                for fd in fds:
                    os.close(fd)
                sock.send(json.dumps({"busy": sorted(alive)}).encode())
                continue
            pid = os.fork()
            if pid == 0:
                _run_child(str(request["module"]), fds, sock)
            for fd in fds:
                os.close(fd)
            alive.add(pid)
            sock.send(json.dumps({"pid": pid}).encode())
    finally:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _name(name: str) -> None:
    """This process's name in ``/proc/PID/comm``: the tree's measure tells the warm parent
    from its children (which inherit its command line) by it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name)


def main() -> int:
    children.die_with_parent()
    _name(process.WARM_NAME)
    sock = socket.socket(fileno=int(os.environ.pop(FD_ENV)))
    try:
        return _serve(sock)
    except (OSError, ValueError, ImportError):
        return 1


if __name__ == "__main__":
    children.finish(main())
