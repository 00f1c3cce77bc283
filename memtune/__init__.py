"""memtune: train Keras / TensorFlow models on the memory you actually have.

TensorFlow is imported only where a model is loaded, measured or trained, so importing
memtune (and ``memtune --help`` / ``memtune probe``) stays instant.
"""

from typing import Any

from memtune.api import probe, suggest
from memtune.errors import MemtuneError, NothingFits, TrainingFailed
from memtune.plan import Plan

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


def __getattr__(name: str) -> Any:
    """``fit`` and ``batches`` load the pipeline modules on first use."""
    if name == "fit":
        from memtune.train import fit

        return fit
    if name == "MemoryDashboard":
        from memtune.ui.dashboard import memory_dashboard_class

        return memory_dashboard_class()
    if name == "batches":
        from memtune.api import batches

        return batches
    raise AttributeError(f"module 'memtune' has no attribute {name!r}")
