"""The checkpoint folder on its own (no TensorFlow): what resume reads, what is refused, what
is deleted. The kills themselves are in test_crash.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtune.core.errors import MemtuneError
from memtune.run.checkpoint import MARKER, CheckpointDir, EpochState


def _run(path: Path, epochs: int, *, created_by_user: bool = False) -> CheckpointDir:
    """A run that commits ``epochs`` checkpoints with made-up weights."""
    if created_by_user:
        path.mkdir()
    store, _ = CheckpointDir.open("--checkpoint-dir", path, resume=False)
    store.claim(fresh=True)
    for epoch in range(1, epochs + 1):
        state = EpochState(epoch, 8, 1, history=[{"loss": 1.0 / e} for e in range(1, epoch + 1)])
        store.commit(state, lambda p, e=epoch: p.write_bytes(f"weights {e}".encode()))
    return store


def test_two_newest_are_kept_and_resume_takes_the_newest(tmp_path: Path) -> None:
    _run(tmp_path / "ck", 4)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == [MARKER, "epoch-000003", "epoch-000004"]
    _, latest = CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=True)
    assert latest is not None and latest.state.epochs_done == 4
    assert latest.weights.read_bytes() == b"weights 4"
    assert latest.state.history == [{"loss": 1.0}, {"loss": 0.5}, {"loss": 1 / 3}, {"loss": 0.25}]


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "model.weights.h5").write_bytes(b"weights 5"),  # same size, other bytes
        lambda f: (f / "model.weights.h5").unlink(),
        lambda f: (f / "state.json").write_text(""),
        lambda f: (f / "state.json").write_text(json.dumps({"format": 1, "epochs_done": True})),
    ],
    ids=["bytes changed", "weights gone", "empty state", "bad state value"],
)
def test_a_damaged_newest_is_named_and_the_one_before_used(tmp_path: Path, damage) -> None:
    _run(tmp_path / "ck", 4)
    damage(tmp_path / "ck" / "epoch-000004")
    warnings: list[str] = []
    _, latest = CheckpointDir.open(
        "--checkpoint-dir", tmp_path / "ck", resume=True, warn=warnings.append
    )
    assert latest is not None and latest.state.epochs_done == 3
    assert len(warnings) == 1 and "epoch-000004' is damaged" in warnings[0]


def test_leftovers_of_a_killed_write_are_ignored_then_cleared(tmp_path: Path) -> None:
    store = _run(tmp_path / "ck", 1)
    (tmp_path / "ck" / ".tmp-epoch-000002-99").mkdir()
    (tmp_path / "ck" / ".tmp-epoch-000002-99" / "model.weights.h5").write_bytes(b"wei")
    store, latest = CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=True)
    assert latest is not None and latest.state.epochs_done == 1
    store.claim(fresh=False)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [MARKER, "epoch-000001"]


@pytest.mark.parametrize("name", ["notes.txt", "epoch-notes", ".tmp-mine"])
def test_a_folder_with_anything_not_memtunes_is_refused_and_untouched(
    tmp_path: Path, name: str
) -> None:
    _run(tmp_path / "ck", 2)
    (tmp_path / "ck" / name).mkdir()  # even named like memtune's own, it is the user's
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    for resume in (False, True):
        with pytest.raises(MemtuneError, match=f"holds files memtune did not write .*{name}"):
            CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=resume)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before


def test_finish_removes_the_folder_only_if_memtune_made_it(tmp_path: Path) -> None:
    _run(tmp_path / "made", 2).finish("m.keras")
    assert not (tmp_path / "made").exists()
    _run(tmp_path / "users", 2, created_by_user=True).finish("m.keras")
    assert (tmp_path / "users").is_dir() and list((tmp_path / "users").iterdir()) == []


def test_nothing_is_written_before_training_claims_the_folder(tmp_path: Path) -> None:
    CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=False)
    assert not (tmp_path / "ck").exists()


def test_a_finished_run_is_not_resumed_but_does_not_block_a_new_one(tmp_path: Path) -> None:
    store = _run(tmp_path / "ck", 2, created_by_user=True)
    store._write_marker(finished="out/m.keras")
    for folder in store._complete():
        store._trash(folder)  # as if killed at the very end of the cleanup
    with pytest.raises(MemtuneError, match=r"finished and saved 'out/m\.keras'"):
        CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=True)
    store, latest = CheckpointDir.open("--checkpoint-dir", tmp_path / "ck", resume=False)
    assert latest is None
