"""memtune: train Keras / TensorFlow models on the memory you actually have.

Public names load on first use: TensorFlow is imported only where a model is loaded,
measured or trained (so ``memtune --help`` and ``memtune probe`` stay instant), and a trial
child process imports only what builds batches and trains.
"""

from importlib import import_module
from typing import Any

from memtune.core.errors import MemtuneError, NothingFits, TrainingFailed

__all__ = [
    "MemoryDashboard",
    "MemtuneError",
    "NothingFits",
    "Plan",
    "TrainingFailed",
    "batches",
    "fit",
    "probe",
    "suggest",
]
__version__ = "0.1.0"

_LAZY = {
    "probe": "memtune.app.api",
    "suggest": "memtune.app.api",
    "batches": "memtune.app.batches",
    "fit": "memtune.app.keras_fit",
    "Plan": "memtune.core.plan",
}


def __getattr__(name: str) -> Any:
    if name == "MemoryDashboard":
        from memtune.ui.memory_dashboard import MemoryDashboard

        return MemoryDashboard
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memtune' has no attribute {name!r}")
