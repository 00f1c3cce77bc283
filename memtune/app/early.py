"""What a plan starts before it reads the data: the warm parent's imports (~5 s) and the
bare child's measure run while this process scans, so the first trial waits less."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from memtune.app import plan_cache
from memtune.estimate.trials import measure_bare_child_soon
from memtune.proc import warm

# Data files up to this size are scanned beside the warm parent's imports: the scan's own
# memory is then small next to the TensorFlow process that the model reader starts anyway.
EARLY_SCAN_BYTES = 64 * 1024**2


def start_early(data: Any) -> None:
    """A plan is to be made in this warm scope: start what its first trial waits for, unless
    TensorFlow is here already (no bare child to measure) or the data files are large (a
    large scan holds memory of its own and outlasts the imports)."""
    if not warm.active() or "tensorflow" in sys.modules:
        return
    if isinstance(data, (str, Path)):
        with contextlib.suppress(OSError):
            if sum(f.stat().st_size for f in plan_cache.data_files(data)) > EARLY_SCAN_BYTES:
                return
    warm.start()
    measure_bare_child_soon()
