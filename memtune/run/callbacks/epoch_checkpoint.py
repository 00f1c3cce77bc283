"""``EpochCheckpoint``: commit a crash-safe checkpoint at the end of every epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from memtune.proc import tf as _tf
from memtune.run.checkpoint import Checkpoint, CheckpointDir, EpochState
from memtune.run.save import model_bytes

keras = _tf.keras()


class EpochCheckpoint(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Writes weights, optimizer state, the batch in use and the history after each epoch.

    ``batch_size`` reports the per-replica batch training runs at now, so a checkpoint
    taken after a recovery halved the batch resumes at the halved batch.
    """

    def __init__(
        self,
        store: CheckpointDir,
        batch_size: Callable[[], int],
        *,
        seed: int | None = None,
        resumed: Checkpoint | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.batch_size = batch_size
        self.seed = seed
        self.logs: dict[int, dict[str, float]] = {}
        if resumed is not None:
            self.logs = dict(enumerate(resumed.state.history))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.logs[epoch] = {k: float(v) for k, v in (logs or {}).items()}
        accumulation = getattr(self.model.optimizer, "gradient_accumulation_steps", None) or 1
        state = EpochState(
            epochs_done=epoch + 1,
            batch_size=self.batch_size(),
            accumulation=int(accumulation),
            seed=self.seed,
            history=[self.logs.get(e, {}) for e in range(epoch + 1)],
        )
        self.store.commit(state, self._write, needed=model_bytes(self.model))

    def _write(self, path: Path) -> None:
        with _tf.native_stderr_quiet():
            self.model.save_weights(str(path))
