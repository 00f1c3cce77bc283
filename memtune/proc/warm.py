"""A warm parent for memtune's children: TensorFlow loaded once, each child forked from it.

Every trial and the model reader used to start Python and import TensorFlow anew (~4.5 s
each on the benchmark machine, most of a first plan). While a plan is made, one *warm*
process (``python -m memtune.proc.warm``) imports what those children import, freezes its
Python objects (``gc.freeze``: a child's garbage collector then leaves their pages shared)
and forks a child for each request; the child runs its module as ``python -m`` would, on
pipes its requester passed over a Unix socket (``SCM_RIGHTS``).

What the tree holds: a forked child's pages stay shared with the warm parent until one of
them writes them, and the child's ``RssAnon`` counts the shared ones, as a fresh child's
would count its own. The warm parent therefore counts only what is its own
(:func:`memtune.probe.process.unshared_held`), so a page is counted once.

The warm parent forks only on a CPU plan (no CUDA state may cross a fork) and dies with
memtune; its children die with it. Anything that goes wrong here falls back to a fresh
child: the warm parent makes planning faster, never different.
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
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from memtune.probe import process
from memtune.proc import children, heap

MODULE = "memtune.proc.warm"
FD_ENV = "MEMTUNE_WARM_FD"
OFF_ENV = "MEMTUNE_WARM"  # "0": every child starts afresh
READY_TIMEOUT_S = 120.0
_MAX_MESSAGE = 65536


class WarmChild:
    """A forked child, as much of :class:`subprocess.Popen` as memtune's callers use."""

    def __init__(self, server: Server, pid: int, stdin: IO[str], stdout: IO[str], stderr: IO[str]):
        self.server, self.pid = server, pid
        self.stdin: IO[str] | None = stdin
        self.stdout: IO[str] | None = stdout
        self.stderr: IO[str] | None = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self.server.wait_exit(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(MODULE, timeout or 0.0)
        self.returncode = code
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)

    def communicate(self, input: str = "", timeout: float | None = None) -> tuple[str, str]:
        """Write ``input``, read both pipes to their end, wait for the exit."""
        assert self.stdin is not None and self.stdout is not None and self.stderr is not None
        with contextlib.suppress(BrokenPipeError):
            self.stdin.write(input)
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()
        got: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda k=k, s=s: got.__setitem__(k, s.read()), daemon=True)
            for k, s in (("out", self.stdout), ("err", self.stderr))
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(MODULE, timeout or 0.0)
        self.wait(None if deadline is None else max(1.0, deadline - time.monotonic()))
        return got.get("out", ""), got.get("err", "")


class Server:
    """The client's side of one warm parent: start it, fork children from it, stop it."""

    def __init__(self, preload: Sequence[str], debug: bool) -> None:
        # One message a packet: a request's pipes arrive with its own line, never another's.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env[children.PARENT_ENV] = str(os.getpid())
        env[FD_ENV] = str(theirs.fileno())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if debug else subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.sock = ours
        self.broken = False
        self._lock = threading.Lock()  # one request at a time
        self._changed = threading.Condition()
        self._replies: list[dict[str, Any]] = []
        self._exits: dict[int, int] = {}
        self._send({"preload": list(preload), "debug": debug})
        threading.Thread(target=self._listen, name="memtune-warm", daemon=True).start()

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        socket.send_fds(self.sock, [json.dumps(message).encode()], list(fds))

    def _listen(self) -> None:
        while True:
            try:
                packet = self.sock.recv(_MAX_MESSAGE)
            except OSError:
                packet = b""
            with self._changed:
                if not packet:
                    self.broken = True
                    self._changed.notify_all()
                    return
                message = json.loads(packet)
                if "exit" in message:
                    self._exits[int(message["exit"])] = int(message["code"])
                else:
                    self._replies.append(message)
                self._changed.notify_all()

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(lambda: self._replies or self.broken, timeout)
            return self._replies.pop(0) if self._replies else None

    def fork(self, module: str) -> WarmChild | None:
        """A child running ``python -m module``'s code; None if the warm parent cannot."""
        with self._lock:
            if self.broken or self.proc.poll() is not None:
                return None
            pipes = [os.pipe() for _ in range(3)]
            theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
            try:
                self._send({"module": module}, theirs)
                reply = self._reply(READY_TIMEOUT_S)
            except OSError:
                reply = None
            finally:
                for fd in theirs:
                    os.close(fd)
            process.forget_unshared(self.proc.pid)  # a fork shares what was the parent's
            if reply is None or "pid" not in reply:
                self.broken = True
                for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
                    os.close(fd)
                return None
        return WarmChild(
            self,
            int(reply["pid"]),
            os.fdopen(pipes[0][1], "w"),
            os.fdopen(pipes[1][0]),
            os.fdopen(pipes[2][0]),
        )

    def exit_code(self, pid: int) -> int | None:
        with self._changed:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self.broken, timeout)
            if pid not in self._exits and self.broken:
                return -signal.SIGKILL  # the warm parent is gone, and its children with it
            return self._exits.get(pid)

    def private_held(self) -> int:
        """What the warm parent holds that no child shares."""
        return process.unshared_held(self.proc.pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            children.reap(self.proc)  # type: ignore[arg-type]


_current: Server | None = None
_preload: tuple[str, ...] | None = None
_debug = False


@contextlib.contextmanager
def scope(preload: Sequence[str], *, enabled: bool = True, debug: bool = False) -> Iterator[None]:
    """While the block runs, :func:`fork` may start a warm parent (on first use) that loads
    ``preload`` ("module:function" each) once; it is stopped as the block ends."""
    global _preload, _debug
    linux = sys.platform.startswith("linux")  # fork beside loaded libraries: tested there only
    if not enabled or not linux or os.environ.get(OFF_ENV) == "0" or _preload is not None:
        yield
        return
    _preload, _debug = tuple(preload), debug
    try:
        yield
    finally:
        release()


def release() -> None:
    """Stop this scope's warm parent for good: alone, its pages are all its own, and a
    trial near its limit needs the room (:func:`spawn` starts fresh children from now)."""
    global _current, _preload
    server, _current, _preload = _current, None, None
    if server is not None:
        server.close()


def active() -> bool:
    """Whether a child may still be forked in this scope."""
    return _preload is not None


def fork(module: str) -> WarmChild | None:
    """A child forked from this scope's warm parent, started now if need be; None outside
    a scope or when the warm parent failed (the caller then starts a fresh child)."""
    global _current
    if _preload is None:
        return None
    if _current is None:
        try:
            _current = Server(_preload, _debug)
        except OSError:
            return None
    return _current.fork(module)


def spawn(module: str, *, fresh: bool = False) -> children.Child:
    """``python -m module`` forked from the warm parent when a scope holds one, else (or
    when ``fresh``: the warm parent is stopped first) started afresh."""
    if fresh:
        release()
    return fork(module) or children.spawn(module)


def private_held() -> int:
    """What the warm parent holds of its own (0 without one): the tree's sum adds it."""
    server = _current
    return server.private_held() if server is not None and not server.broken else 0


# --- the warm parent itself --------------------------------------------------------------


def _load(preload: Sequence[str]) -> None:
    for name in preload:
        module, _, function = name.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()


def _run_child(module: str, fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become ``python -m module`` on the passed pipes."""
    code = 1
    try:
        sock.close()
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()
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


def _serve(sock: socket.socket) -> int:
    """Load, then fork one child per request until memtune closes the socket."""
    first = json.loads(sock.recv(_MAX_MESSAGE))
    _load(first["preload"])
    gc.collect()
    gc.freeze()  # the children's collections leave these objects' pages shared
    heap.trim()  # free heap pages go back: a child's allocations land on new pages, not copies
    alive: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([sock], [], [], 0.02)
            _reap(sock, alive)
            if not ready:
                continue
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
            if not data:
                return 0
            request = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
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
