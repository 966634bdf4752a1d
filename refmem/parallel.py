r"""Heads in parallel: a sequence form run on independent batch and head slices by a pool of worker threads.

NumPy (host) only: the slices are cut and stacked with NumPy, and BLAS is pinned to
one thread per worker with :mod:`threadpoolctl` while the pool runs (BLAS and
NumPy's array loops release the GIL, so threads run the slices' products at once).

Every form of :mod:`refmem.memories` and :mod:`refmem.chunked` treats the leading
(batch, head) axes of ``q [..., T, d]`` as independent problems, so running each
leading index on its own and stacking the results is the same computation. The
slices are always the single leading indices, whatever the number of workers, and
each is computed by the same code with one BLAS thread: the result is bitwise
identical for every ``workers`` (the single-worker result included). It can
differ from one call on the whole batch in the last bits only, since a call on
the whole batch may take a different (equally accurate) path for some gate data.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
from array_api_compat import array_namespace

from .validation import get_option


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(workers, n_slices: int) -> int:
    """The number of workers for ``n_slices`` independent slices.

    ``workers``: an int ``>= 1``; ``None`` takes ``refmem.options(workers=...)``, and
    when that is ``None`` too, every usable core if ``n_slices`` is at least the
    number of cores, else 1 (a pool that cannot keep every core busy gains little).
    Never more workers than slices.
    """
    if workers is None:
        workers = get_option("workers")
    if workers is None:
        cores = usable_cores()
        workers = cores if n_slices >= cores else 1
    if isinstance(workers, bool) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 or None; got {workers!r}")
    return max(1, min(int(workers), n_slices))


def is_array(x) -> bool:
    """Whether ``x`` is an array to cut (NumPy, or CuPy when the slices run on a cluster's GPU workers)."""
    return hasattr(x, "shape") and hasattr(x, "ndim") and not isinstance(x, (int, float, complex))


def _slice_plan(inputs: dict, lead: tuple):
    """For each input, whether it is cut along the leading axes (``True``) or passed whole (``False``).

    ``None`` if an array input's leading axes are ambiguous (fewer axes than
    ``lead`` plus one time axis but not a scalar): then the caller runs unsliced.
    """
    n = len(lead)
    plan = {}
    for name, x in inputs.items():
        if isinstance(x, tuple):  # e.g. Mesa's initial statistics (G_0, H_0)
            sub = _slice_plan(dict(enumerate(x)), lead)
            if sub is None or len(set(sub.values())) > 1:
                return None
            plan[name] = next(iter(sub.values()), False)
        elif is_array(x) and x.ndim > 0:
            if x.ndim <= n or any(s not in (1, L) for s, L in zip(x.shape[:n], lead)):
                return None
            plan[name] = True
        else:
            plan[name] = False
    return plan


def _cut(x, index: tuple):
    """``x[index]``, size-1 (broadcast) leading axes taken at 0; tuples cut element by element."""
    if isinstance(x, tuple):
        return tuple(_cut(e, index) for e in x)
    return x[tuple(i if s != 1 else 0 for i, s in zip(index, x.shape))]


def _stack(results: list, lead: tuple):
    """Stack per-slice results (arrays or nested tuples of arrays) back to ``lead + shape``."""
    first = results[0]
    if isinstance(first, tuple):
        return tuple(_stack([r[j] for r in results], lead) for j in range(len(first)))
    xp = array_namespace(first)  # NumPy here; CuPy for slices computed on GPU workers
    stacked = xp.stack(results, axis=0)  # (n_slices, ...)
    return xp.reshape(stacked, lead + tuple(first.shape))


def head_slices(inputs: dict):
    """``(lead, slices)``: the leading (batch, head) shape of ``q`` and the inputs of every leading index, in order.

    Each slice is a dict of ``fn``'s keyword inputs: the arrays cut at one leading
    index (views), the other inputs passed whole; the order is C order over
    ``lead``, the order :func:`stack_slices` expects. ``None`` when the inputs
    cannot be cut (no array ``q`` with a leading axis, or ambiguous leading axes):
    then the form is run unsliced. Used by :func:`heads_in_parallel` and by
    :func:`refmem.distributed.heads_on_cluster`.
    """
    q = inputs.get("q")
    if not is_array(q) or q.ndim < 3:
        return None
    lead = tuple(q.shape[:-2])
    plan = _slice_plan(inputs, lead)
    if plan is None:
        return None
    indices = itertools.product(*(range(L) for L in lead))
    return lead, [{k: (_cut(x, i) if plan[k] else x) for k, x in inputs.items()} for i in indices]


def stack_slices(results: list, lead: tuple):
    """The per-slice results of :func:`head_slices`' slices stacked back to ``lead + shape`` (tuples element by element)."""
    return _stack(results, lead)


def pinned_blas():
    """A context in which every BLAS this process uses runs on one thread (:mod:`threadpoolctl`).

    SciPy's BLAS (a separate OpenBLAS, loaded on first use: the triangular solves
    of the chunked delta forms) is loaded first, so the limit covers it too;
    :func:`threadpoolctl.threadpool_limits` only reaches libraries already loaded.
    """
    import scipy.linalg.blas  # noqa: F401  (loads SciPy's BLAS so that the limit reaches it)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def heads_in_parallel(fn, *, workers=None, **inputs):
    """``fn(**inputs)`` computed per batch/head slice on a pool of ``workers`` threads (module docstring).

    Parameters
    ----------
    fn : callable
        A sequence form, e.g. ``MEMORIES[name].chunked``, whose array inputs have
        the leading axes of ``q`` (size 1 allowed) before their own axes.
    workers : int or None
        See :func:`resolve_workers`.
    **inputs
        ``fn``'s keyword arguments; arrays NumPy (other backends run unsliced).

    Returns
    -------
    What ``fn`` returns, stacked over the leading axes.
    """
    cut = head_slices(inputs) if isinstance(inputs.get("q"), np.ndarray) else None
    if cut is None:
        if workers is not None:
            resolve_workers(workers, 1)  # still check the argument
        return fn(**inputs)
    lead, slices = cut
    n_workers = resolve_workers(workers, len(slices))
    with pinned_blas():
        if n_workers == 1:
            results = [fn(**one) for one in slices]
        else:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                results = list(pool.map(lambda one: fn(**one), slices))
    return stack_slices(results, lead)
