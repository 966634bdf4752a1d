r"""Dask: the same work on a ``dask.distributed`` cluster when one machine is not enough.

Host-side orchestration only (the arrays it handles are whatever the form
takes: NumPy blocks on CPU workers, CuPy blocks on GPU workers). Dask is an
extra (``pip install 'refmem[dask]'``) and is imported only when a function here
is called, never when refmem is imported.

Two kinds of work become Dask tasks; Dask does the scheduling, the transfers
and the bookkeeping (no scheduler, queue or RPC of refmem's own):

- :func:`heads_on_cluster`: one sequence form cut into its independent
  (batch, head) slices (:func:`refmem.parallel.head_slices`, the same slices
  as the in-process pool), each slice scattered to a worker and computed there
  with BLAS pinned to one thread, the results gathered and stacked. The result
  is bitwise identical to :func:`refmem.parallel.heads_in_parallel` for every
  number of workers.
- :func:`map_on_cluster`: independent tasks (``refmem verify``'s checks,
  ``refmem vectors generate``'s cases) run by :func:`refmem.parallel.run_pinned` on
  the workers; the results come back in order, and the vector files are written
  by the calling process, so they are byte-identical to a serial run's.

The workers need the same refmem (and NumPy, SciPy, BLAS) as the client: a
slice is computed by the worker's refmem. For a GPU cluster, start one worker
per GPU with ``dask-cuda`` (``dask cuda worker ADDRESS`` or
``dask_cuda.LocalCUDACluster()``) and pass CuPy inputs: the slices travel as
CuPy arrays and each worker computes on its own GPU.

A ``client`` that is not a :class:`dask.distributed.Client` is a ``TypeError``;
a closed client, or a scheduler address where no scheduler answers, is a
``ValueError`` naming it (the command line prints it as one line, exit 2).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from array_api_compat import array_namespace

from .parallel import head_slices, is_array, run_pinned, stack_slices
from .progress import progress_bar

DASK_MISSING = "Dask is not installed: pip install 'refmem[dask]' (dask[distributed])"


def _distributed():
    """The ``distributed`` package, or an ``ImportError`` that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ImportError(DASK_MISSING) from None
    return distributed


def check_client(client):
    """``client`` if it is a running :class:`dask.distributed.Client`; else a ``TypeError`` / ``ValueError`` naming it."""
    try:
        import distributed
    except ImportError:  # then it cannot be a Client
        raise TypeError(f"client must be a dask.distributed.Client; got {type(client).__name__} "
                        f"({DASK_MISSING})") from None
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a dask.distributed.Client; got {type(client).__name__}")
    if client.status != "running":
        raise ValueError(f"client is not connected to a scheduler (status {client.status!r}); start or reconnect it")
    return client


def connect(address: str, *, timeout=None):
    """A :class:`dask.distributed.Client` of the scheduler at ``address`` (e.g. ``tcp://10.0.0.5:8786``).

    ``timeout``: seconds to wait for the scheduler (default: Dask's
    ``distributed.comm.timeouts.connect`` setting, 30 s unless configured,
    e.g. by the environment variable ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``).
    An address where no scheduler answers in that time, or one that is not an
    address, is a ``ValueError`` naming it. The caller closes the client.
    """
    if not isinstance(address, str) or not address:
        raise TypeError(f"address must be a scheduler address such as 'tcp://host:8786'; got {address!r}")
    distributed = _distributed()
    try:
        wait = {} if timeout is None else {"timeout": timeout}  # no timeout given: Dask's setting
        return distributed.Client(address, set_as_default=False, **wait)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"no Dask scheduler at {address!r} ({exc})") from None


def _fresh(x):
    """``x`` as a new array (tuples element by element): the slice has the layout of the in-process pool's copies."""
    if isinstance(x, tuple):
        return tuple(_fresh(e) for e in x)
    if isinstance(x, np.ndarray):
        return np.array(x, order="C", copy=True)
    return array_namespace(x).asarray(x, copy=True) if is_array(x) else x


def _slice_task(fn, inputs: dict):
    """One slice's form, run on a worker with BLAS pinned (:func:`refmem.parallel.run_pinned`) on fresh copies."""
    return run_pinned(lambda kw: fn(**{k: _fresh(x) for k, x in kw.items()}), inputs)


def heads_on_cluster(fn, *, client, **inputs):
    """``fn(**inputs)`` computed per (batch, head) slice as tasks of a Dask cluster (module docstring).

    Parameters
    ----------
    fn : callable
        A sequence form, e.g. ``MEMORIES[name].chunked`` (picklable: the
        workers import it by name).
    client : dask.distributed.Client
        The cluster's client.
    **inputs
        ``fn``'s keyword arguments; arrays NumPy or CuPy, leading axes those of
        ``q [..., T, d]`` (size 1 allowed).

    Returns
    -------
    What ``fn`` returns, stacked over the leading axes: bitwise equal to
    ``refmem.parallel.heads_in_parallel(fn, workers=1, **inputs)``. Inputs that
    cannot be cut (no leading axis) run as one task.
    """
    check_client(client)
    sliced = head_slices(inputs)
    if sliced is None:
        return client.gather(client.submit(_slice_task, fn, inputs, pure=False))
    lead, slices = sliced
    # scatter sends each slice's arrays straight to a worker (not inside the task graph)
    data = client.scatter(slices, hash=False)
    futures = client.map(partial(_slice_task, fn), data, pure=False)
    results = client.gather(futures)
    return stack_slices(results, lead)


def map_on_cluster(fn, items: list, *, client, desc: str | None = None) -> list:
    """``[fn(item) for item in items]`` as Dask tasks, each pinned (:func:`refmem.parallel.run_pinned`), results in order.

    ``desc``: the progress bar's label (:func:`refmem.progress.progress_bar`;
    ``None`` shows none). A task that raises raises here.
    """
    distributed = _distributed()
    check_client(client)
    futures = client.map(partial(run_pinned, fn), items, pure=False)
    with progress_bar(len(futures), desc) as bar:
        for _ in distributed.as_completed(futures, loop=client.loop):
            bar.update(1)
    return client.gather(futures)
