"""The Python API's entry points that plan: :func:`suggest` and :func:`probe`
(``memtune.fit`` is :mod:`memtune.app.fit`, ``memtune.batches`` :mod:`memtune.app.batches`)."""

from __future__ import annotations

import textwrap
from typing import Any

from memtune.app.prepare import suggest_plan
from memtune.core.options import keywords_doc, make_options
from memtune.core.plan import Plan
from memtune.probe import Probe
from memtune.probe import probe as _probe


def probe() -> Probe:
    """Host RAM and GPU memory as seen now."""
    return _probe()


def suggest(model: Any, data: Any, **options: Any) -> Plan:
    """The largest safe batch and the data mode for training ``model`` on ``data``.

        ``model``: a compiled ``keras.Model``, a ``.keras`` path, or ``"file.py:function"`` /
        ``"package.module:function"`` returning one. ``data``: a ``.csv`` / ``.parquet`` path or
        a folder of shards, a pandas DataFrame, a dict of arrays, an ``(x, y)`` pair of numpy
        arrays (or of dicts keyed by input / output name), or a ``tf.data.Dataset`` /
        ``keras.utils.PyDataset`` yielding ``(x, y)``.

        Keywords, the CLI flags in snake_case:
    {keywords}

        Raises :class:`MemtuneError` (one line) for bad input and :class:`NothingFits` when even
        batch 1 exceeds the usable budget.
    """
    return suggest_plan(model, data, make_options(**options))[0]


assert suggest.__doc__ is not None
suggest.__doc__ = suggest.__doc__.format(keywords=textwrap.indent(keywords_doc(), "    "))
