"""How a training process's peak memory grows with the batch: analytic prior and trials."""

from memtune.estimate.curve import MemoryCurve

__all__ = ["MemoryCurve"]
