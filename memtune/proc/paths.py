"""Output paths checked before any work starts, so a long run never fails at its last step."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from memtune.core.errors import MemtuneError


def output_file(flag: str, value: str | Path, suffixes: tuple[str, ...]) -> Path:
    """A file memtune will write: the right suffix, an existing folder, not a folder itself."""
    path = Path(value)
    if path.suffix.lower() not in suffixes:
        ends = " or ".join(suffixes)
        raise MemtuneError(f"{flag} {str(value)!r}: the file name must end in {ends}")
    if path.is_dir():
        raise MemtuneError(f"{flag} {str(value)!r}: is a folder, not a file")
    if not path.parent.is_dir():
        raise MemtuneError(f"{flag} {str(value)!r}: folder {str(path.parent)!r} does not exist")
    writable(flag, value, path.parent)
    return path


def writable(flag: str, value: str | Path, folder: Path) -> None:
    """Refuse, before any work, a folder memtune could not write in (read-only, no right)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MemtuneError(f"{flag} {str(value)!r}: folder {str(folder)!r} is not writable")


def output_dir(flag: str, value: str | Path) -> Path:
    """A folder memtune will fill: absent (its parent must exist) or a folder."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise MemtuneError(f"{flag} {str(value)!r}: is a file, not a folder")
    if not path.exists() and not path.parent.is_dir():
        raise MemtuneError(f"{flag} {str(value)!r}: folder {str(path.parent)!r} does not exist")
    writable(flag, value, path if path.exists() else path.parent)
    return path


def outside_folder(flag: str, value: str | Path, folder_flag: str, folder: str | Path) -> None:
    """Refuse an output inside a folder memtune cleans up (links resolved on both sides)."""
    inner, outer = Path(value).resolve(), Path(folder).resolve()
    if inner == outer or inner.is_relative_to(outer):
        raise MemtuneError(
            f"{flag} {str(value)!r} lies inside {folder_flag} {str(folder)!r}, which memtune "
            "empties once training is saved; write it elsewhere"
        )


def as_new_file(path: str | Path) -> None:
    """Give a temporary file (mkstemp makes 0600) the mode a newly created file gets under
    the umask, before it is renamed over an output the user will share."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``:
    never a half-written file, and no leftover when the write fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        as_new_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
