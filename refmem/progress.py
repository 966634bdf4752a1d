"""Progress bars on long runs (``refmem vectors generate``, ``refmem bench``, ``refmem verify``), shown only on a terminal.

A thin use of :mod:`tqdm`: a bar is drawn on standard error when it is a
terminal and nothing at all is written otherwise (a pipe, a file, a CI log,
pytest's capture), so the commands' outputs stay the same whether or not a
person watches them. The bar leaves no line behind when it finishes.
"""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str | None, *, file=None):
    """A :class:`tqdm.tqdm` counting ``total`` steps labelled ``desc``; silent unless ``file`` is a terminal.

    ``file`` defaults to standard error. ``desc=None`` gives a silent bar (the
    caller wants none). Use it as a context manager and call ``update(1)`` per
    finished step.
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    # disable=None is tqdm's own "silent unless the stream is a terminal" (it asks stream.isatty())
    return tqdm(total=total, desc=desc, file=stream, disable=True if desc is None else None, leave=False,
                dynamic_ncols=True)
