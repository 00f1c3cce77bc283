"""memtune: train Keras / TensorFlow models on the memory you actually have.

TensorFlow is imported only where a model is loaded, measured or trained, so importing
memtune (and ``memtune --help`` / ``memtune probe``) stays instant.
"""

from memtune.api import probe, suggest
from memtune.errors import MemtuneError, NothingFits
from memtune.plan import Plan

__all__ = ["MemtuneError", "NothingFits", "Plan", "probe", "suggest"]
__version__ = "0.1.0"
