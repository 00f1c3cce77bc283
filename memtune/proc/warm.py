"""A warm parent for memtune's children: TensorFlow loaded once, each child forked from it.

Every trial and the model reader used to start Python and import TensorFlow anew (~4.5 s
each on the benchmark machine, most of a first plan). While a plan is made, one *warm*
process (``python -m memtune.proc.warm_parent``) imports what those children import, freezes its
Python objects (``gc.freeze``: a child's garbage collector then leaves their pages shared)
and forks a child for each request; the child runs its module as ``python -m`` would, on
pipes its requester passed over a Unix socket (``SCM_RIGHTS``).

What the tree holds: a forked child's pages stay shared with the warm parent until one of
them writes them, and the child's ``RssAnon`` counts the shared ones, as a fresh child's
would count its own. The warm parent therefore counts only what is its own
(:func:`memtune.probe.process.unshared_held`), so a page is counted once.

A child that must share no page (a trial near its limit: while a forked child writes, the
warm parent keeps the originals, 20-50 MiB) is the warm parent itself: it *becomes* that
child once its forked children have ended, and the plan forks no more.

The warm parent forks only on a CPU plan (no CUDA state may cross a fork) and dies with
memtune; its children die with it. Anything that goes wrong here falls back to a fresh
child: the warm parent makes planning faster, never different.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from memtune.probe import process
from memtune.proc import children
from memtune.proc.warm_parent import FD_ENV, MAX_MESSAGE

MODULE = "memtune.proc.warm_parent"
OFF_ENV = "MEMTUNE_WARM"  # "0": every child starts afresh
READY_TIMEOUT_S = 120.0


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


class Became(WarmChild):
    """The warm parent itself, turned into the child (:meth:`Server.become`): memtune's own
    child, so its exit code is the process's."""

    def poll(self) -> int | None:
        self.returncode = self.server.proc.poll()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = self.server.proc.wait(timeout)
        return self.returncode


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
        self.loaded = False  # until then, closing waits for nothing: it kills
        self._send({"preload": list(preload), "debug": debug})
        threading.Thread(target=self._listen, name="memtune-warm", daemon=True).start()

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        socket.send_fds(self.sock, [json.dumps(message).encode()], list(fds))

    def _listen(self) -> None:
        while True:
            try:
                packet = self.sock.recv(MAX_MESSAGE)
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
                elif "loaded" in message:
                    self.loaded = True
                else:
                    self._replies.append(message)
                self._changed.notify_all()

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(lambda: self._replies or self.broken, timeout)
            return self._replies.pop(0) if self._replies else None

    def _ask(self, message: dict[str, Any]) -> tuple[dict[str, Any] | None, list[int]]:
        """Send a request with three new pipes' far ends; the reply (None if none came) and
        the near ends (stdin's write end, stdout's and stderr's read ends)."""
        pipes = [os.pipe() for _ in range(3)]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        try:
            self._send(message, theirs)
            reply = self._reply(READY_TIMEOUT_S)
        except OSError:
            reply = None
        finally:
            for fd in theirs:
                os.close(fd)
        return reply, [pipes[0][1], pipes[1][0], pipes[2][0]]

    @staticmethod
    def _streams(ours: list[int]) -> tuple[IO[str], IO[str], IO[str]]:
        return os.fdopen(ours[0], "w"), os.fdopen(ours[1]), os.fdopen(ours[2])

    def fork(self, module: str) -> WarmChild | None:
        """A child running ``python -m module``'s code; None if the warm parent cannot."""
        with self._lock:
            if self.broken or self.proc.poll() is not None:
                return None
            reply, ours = self._ask({"module": module})
            process.forget_unshared(self.proc.pid)  # a fork shares what was the parent's
            if reply is None or "pid" not in reply:
                self.broken = True
                for fd in ours:
                    os.close(fd)
                return None
        return WarmChild(self, int(reply["pid"]), *self._streams(ours))

    def become(self, module: str) -> Became | None:
        """The warm parent itself runs ``python -m module``'s code, once its forked children
        have ended: a fresh child's start-up saved, and no page shared, so the trial near
        its limit holds what a fresh child would. No fork follows. None if it cannot."""
        with self._lock:
            if self.broken or self.proc.poll() is not None:
                return None
            reply, ours = self._ask({"module": module, "become": True})
            if reply is None or reply.get("pid") != self.proc.pid:
                for fd in ours:
                    os.close(fd)
                return None
            self.broken = True  # no fork from here on
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the listening thread
            self.sock.close()
        return Became(self, self.proc.pid, *self._streams(ours))

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
        if not self.loaded:  # still importing (started early, then not needed): no child yet
            children.reap(self.proc)  # type: ignore[arg-type]
            return
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


def start() -> None:
    """Start this scope's warm parent now, if it has none: its imports (~5 s) run beside
    whatever this process does before its first child (the data scan)."""
    global _current
    if _preload is not None and _current is None:
        with contextlib.suppress(OSError):
            _current = Server(_preload, _debug)


def fork(module: str) -> WarmChild | None:
    """A child forked from this scope's warm parent, started now if need be; None outside
    a scope or when the warm parent failed (the caller then starts a fresh child)."""
    start()
    if _current is None:
        return None
    return _current.fork(module)


def spawn(module: str, *, fresh: bool = False) -> children.Child:
    """``python -m module`` forked from the warm parent when a scope holds one, else started
    afresh. ``fresh``: a child that shares no page; the warm parent, when there is one,
    becomes it (:meth:`Server.become`) and this scope forks no more."""
    global _current, _preload
    if fresh:
        server, _current, _preload = _current, None, None
        became = server.become(module) if server is not None else None
        if became is not None:
            return became
        if server is not None:
            server.close()
    return fork(module) or children.spawn(module)


def private_held() -> int:
    """What the warm parent holds of its own (0 without one): the tree's sum adds it."""
    server = _current
    return server.private_held() if server is not None and not server.broken else 0
