"""Importing TensorFlow quietly.

TensorFlow writes absl / oneDNN / CUDA lines straight to file descriptor 2 while it loads
and on first device discovery; TF_CPP_MIN_LOG_LEVEL does not stop them all. memtune's
stderr carries only its own messages, so those lines go to a temporary file, and are
replayed under ``--debug``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType

from memtune.proc import heap

_debug = False
INTEROP_THREADS = 1


def set_debug(on: bool) -> None:
    """Show TensorFlow's own stderr lines and Python warnings (``--debug``)."""
    global _debug
    _debug = on


def debug_enabled() -> bool:
    return _debug


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send fd 2 to a temporary file for the block; replay it under --debug."""
    if _debug:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def tensorflow() -> ModuleType:
    """``import tensorflow`` (and Keras) with its start-up noise kept off memtune's stderr."""
    heap.configure()  # before TensorFlow's threads take arenas of their own, if it can
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"]
    if "tensorflow" not in sys.modules:
        # One inter-op thread: independent ops run one after another, so the peak of a step
        # is the same from run to run. With TensorFlow's default, identical runs of one model
        # peaked 200 MiB apart (two large ops' buffers live at once, or not), at the same
        # speed on a CPU. Trials inherit the setting; a user's own value is kept.
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(INTEROP_THREADS))
    if not _debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        warnings.filterwarnings("ignore", module=r"(keras|tensorflow)(\.|$)")
    with native_stderr_quiet():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA probing logs here, once
    if not _debug:
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def keras() -> ModuleType:
    tensorflow()
    return sys.modules["keras"]
