"""Crash-safe training checkpoints in a folder memtune owns.

A checkpoint folder carries memtune's marker file; memtune refuses a folder holding anything
it did not write, and deletes only its own entries. Each epoch's checkpoint is written into
a temporary folder, fsynced, then switched in with one atomic rename; the one before it is
removed only after that. So at any instant of a kill the folder holds at least one complete
checkpoint (or none yet), never a half-written one under a name resume reads.

Layout::

    DIR/.memtune-checkpoint      marker (JSON), written first
    DIR/epoch-000003/            3 epochs done: model.weights.h5 + state.json
    DIR/.tmp-...  DIR/.trash-... being written / being removed (ignored, cleared on open)

No TensorFlow here: the weights are written by a callable the caller passes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memtune.core.errors import MemtuneError, TrainingFailed
from memtune.core.units import format_bytes
from memtune.proc import failpoints
from memtune.proc.paths import writable

MARKER = ".memtune-checkpoint"
WEIGHTS = "model.weights.h5"
STATE = "state.json"
FORMAT = 1
KEEP = 2  # complete checkpoints kept: the newest, and one to fall back on if it is damaged
_PREFIX = "epoch-"
# The only names memtune writes in a checkpoint folder (anything else is the user's).
_CHECKPOINT = re.compile(r"epoch-\d{6}")
_LEFTOVER = re.compile(r"\.(tmp|trash)-(epoch-\d{6}|marker)-\d+")


@dataclass(frozen=True)
class EpochState:
    """Where training stands after a completed epoch: what resume needs to go on exactly."""

    epochs_done: int
    batch_size: int  # per replica, as trained at the end of that epoch (after any recovery)
    accumulation: int
    seed: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch done

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs_done": self.epochs_done,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.accumulation,
            "sample": 0,  # checkpoints are taken at epoch ends: the next epoch starts at 0
            "seed": self.seed,
            "history": self.history,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint found on disk."""

    folder: Path
    state: EpochState

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    """Write, flush and fsync a JSON file (inside a folder that is renamed into place)."""
    with open(path, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())


def _int(value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"bad value {value!r}")
    return value


def _read_state(folder: Path) -> EpochState:
    """The state of one checkpoint folder; ``ValueError`` / ``OSError`` when incomplete."""
    raw = json.loads((folder / STATE).read_text())
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError("unknown format")
    weights = folder / WEIGHTS
    if weights.stat().st_size != raw.get("weights_bytes") or _sha256(weights) != raw.get(
        "weights_sha256"
    ):
        raise ValueError(f"{WEIGHTS} does not match its recorded size and checksum")
    history = raw.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError("bad history")
    seed = raw.get("seed")
    return EpochState(
        epochs_done=_int(raw.get("epochs_done"), low=1),
        batch_size=_int(raw.get("batch_size"), low=1),
        accumulation=_int(raw.get("gradient_accumulation_steps"), low=1),
        seed=None if seed is None else _int(seed, low=0),
        history=[{str(k): float(v) for k, v in h.items()} for h in history],
    )


class CheckpointDir:
    """A checkpoint folder memtune owns (see the module docstring).

    ``open`` only reads and validates, so a run that fails before training leaves nothing;
    ``claim`` (when training starts) creates the folder, writes the marker and clears a
    killed run's leftovers. Nothing is deleted before the folder is known to be memtune's.
    """

    def __init__(self, path: Path, created: bool, warn: Callable[[str], None]) -> None:
        self.path = path
        self.created = created
        self.warn = warn
        self.lost = False  # the folder went away mid-run: training goes on without it

    @classmethod
    def open(
        cls,
        flag: str,
        value: str | Path,
        *,
        resume: bool,
        warn: Callable[[str], None] = lambda _: None,
    ) -> tuple[CheckpointDir, Checkpoint | None]:
        """The folder (a symlink is resolved once, and its target used) and, with
        ``resume``, its latest complete checkpoint. Refuses a folder that holds anything
        memtune did not write, a file, or a missing parent."""
        shown = str(value)
        path = Path(value).resolve()
        if path.exists() and not path.is_dir():
            raise MemtuneError(f"{flag} {shown!r}: is a file, not a folder")
        if not path.exists() and not path.parent.is_dir():
            raise MemtuneError(f"{flag} {shown!r}: folder {str(path.parent)!r} does not exist")
        writable(flag, shown, path if path.exists() else path.parent)
        entries = sorted(p.name for p in path.iterdir()) if path.exists() else []
        marked = MARKER in entries
        foreign = [e for e in entries if not _ours(e)] if marked else entries
        if foreign:
            raise MemtuneError(
                f"{flag} {shown!r} holds files memtune did not write (e.g. {foreign[0]!r}); "
                "name a new or empty folder"
            )
        created, finished = not path.exists(), None
        if marked:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                marker = json.loads((path / MARKER).read_text())
                created, finished = bool(marker.get("created")), marker.get("finished")
        store = cls(path, created, warn)
        latest, damaged = store._latest() if marked else (None, [])
        if latest is not None and not resume:
            raise MemtuneError(
                f"{flag} {shown!r} holds a checkpoint from an earlier run "
                f"({latest.state.epochs_done} epoch(s) done); pass --resume to continue it, "
                "or name another folder"
            )
        if resume and latest is None:
            why = f" (the earlier run finished and saved {finished!r})" if finished else ""
            why = f" ({damaged[0]})" if damaged else why
            raise MemtuneError(f"--resume: {flag} {shown!r} holds no complete checkpoint{why}")
        for message in damaged if resume else []:
            warn(f"{message}; using the one before it")
        return store, latest

    def claim(self, *, fresh: bool) -> None:
        """Training starts: create the folder, mark it memtune's, clear leftovers (and, for
        a ``fresh`` run, the damaged checkpoints ``open`` found no use for)."""
        self.path.mkdir(exist_ok=True)
        self._clear_leftovers()
        if fresh:
            for folder in self._complete():
                self._trash(folder)
        self._write_marker()

    def _write_marker(self, finished: str | None = None) -> None:
        tmp = self.path / f".tmp-marker-{os.getpid()}"
        record = {"memtune": "checkpoint", "format": FORMAT, "created": self.created}
        if finished is not None:
            record["finished"] = finished
        _write_json(tmp, record)
        os.replace(tmp, self.path / MARKER)
        fsync_dir(self.path)

    def _complete(self) -> list[Path]:
        """Committed checkpoint folders, newest first."""
        found = [p for p in self.path.iterdir() if _CHECKPOINT.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def _latest(self) -> tuple[Checkpoint | None, list[str]]:
        """The newest checkpoint that reads back whole, and what is wrong with newer ones."""
        damaged: list[str] = []
        for folder in self._complete():
            try:
                return Checkpoint(folder, _read_state(folder)), damaged
            except (OSError, ValueError, TypeError) as exc:
                damaged.append(f"checkpoint {str(folder)!r} is damaged ({exc})")
        return None, damaged

    def _clear_leftovers(self) -> None:
        """Half-written or half-removed folders of a killed run (memtune's own names)."""
        for entry in self.path.iterdir():
            if _LEFTOVER.fullmatch(entry.name):
                _remove(entry)

    def commit(
        self, state: EpochState, write_weights: Callable[[Path], None], needed: int = 0
    ) -> Path | None:
        """Write one epoch's checkpoint and switch it in atomically; then drop old ones.
        ``needed``: about what it takes on disk. Not enough free space is one line and
        exit 1 before writing (a half-written weights file crashed h5py on a full disk),
        the last complete checkpoint kept; a folder gone mid-run is a warning, once, and
        no more checkpoints (None)."""
        if self.lost:
            return None
        if not self.path.is_dir():
            self._lose()
            return None
        name = f"{_PREFIX}{state.epochs_done:06d}"
        need = max(needed, self._last_size())
        free = shutil.disk_usage(self.path).free
        if need and free < need + need // 10:
            raise self._full(name, need, free)
        tmp = self.path / f".tmp-{name}-{os.getpid()}"
        try:
            return self._commit(state, write_weights, name, tmp)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove(tmp)
            if not self.path.is_dir():
                self._lose()
                return None
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
                raise self._full(name, need, shutil.disk_usage(self.path).free) from exc
            raise

    def _lose(self) -> None:
        self.lost = True
        self.warn(
            f"--checkpoint-dir {str(self.path)!r} is gone: training goes on without "
            "checkpoints (--save still writes the model)"
        )

    def _full(self, name: str, need: int, free: int) -> TrainingFailed:
        last = self._complete()
        kept = f"{last[0].name} is kept (--resume continues from it)" if last else "none yet"
        return TrainingFailed(
            f"--checkpoint-dir {str(self.path)!r}: no room for {name} (about "
            f"{format_bytes(need)} needed, {format_bytes(free)} free); the last checkpoint: "
            f"{kept}"
        )

    def _last_size(self) -> int:
        """What the newest complete checkpoint takes on disk (0: none yet)."""
        last = self._complete()
        if not last:
            return 0
        return sum(f.stat().st_size for f in last[0].iterdir() if f.is_file())

    def _commit(
        self, state: EpochState, write_weights: Callable[[Path], None], name: str, tmp: Path
    ) -> Path:
        _remove(tmp)
        tmp.mkdir()
        weights = tmp / WEIGHTS
        write_weights(weights)
        failpoints.hit("checkpoint-weights", state.epochs_done, cut=weights)
        _fsync_file(weights)
        record = {
            "format": FORMAT,
            **state.to_json(),
            "weights_bytes": weights.stat().st_size,
            "weights_sha256": _sha256(weights),
        }
        failpoints.hit("checkpoint-state", state.epochs_done)
        _write_json(tmp / STATE, record)
        fsync_dir(tmp)
        failpoints.hit("checkpoint-commit", state.epochs_done)
        final = self.path / name
        if final.exists():  # the same epoch again (e.g. resumed after a kill mid-cleanup)
            self._trash(final)
        os.rename(tmp, final)
        fsync_dir(self.path)
        failpoints.hit("checkpoint-committed", state.epochs_done)
        for old in self._complete()[KEEP:]:
            self._trash(old)
        return final

    def _trash(self, folder: Path) -> None:
        """Take a checkpoint out of resume's sight in one rename, then delete it."""
        trash = self.path / f".trash-{folder.name}-{os.getpid()}"
        os.rename(folder, trash)
        _remove(trash)

    def finish(self, saved: str | None) -> None:
        """Training ended and its model landed at ``saved``: remove every checkpoint, the
        marker, and the folder itself if memtune created it. The marker first records that
        the run finished; checkpoints go oldest first, so a kill part-way leaves the final
        one (a resume then only saves again) or, at the very end, none."""
        if self.lost:
            return
        self._write_marker(finished=saved)
        for folder in reversed(self._complete()):
            self._trash(folder)
            failpoints.hit("checkpoint-cleanup", int(folder.name[len(_PREFIX) :]))
        self._clear_leftovers()
        with contextlib.suppress(FileNotFoundError):
            (self.path / MARKER).unlink()
        if self.created:
            with contextlib.suppress(OSError):  # something new in it: leave the folder be
                self.path.rmdir()


def _ours(name: str) -> bool:
    return name == MARKER or bool(_CHECKPOINT.fullmatch(name) or _LEFTOVER.fullmatch(name))


def _remove(path: Path) -> None:
    """Delete one of memtune's own entries (never follows a link out of the folder)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
