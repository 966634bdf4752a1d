r"""The pool that runs independent tasks: ``refmem verify``'s checks, ``refmem vectors generate``'s cases.

NumPy (host) only. A task is ``fn(item)`` for one item of a list; the tasks
share nothing, so they can run in this process one after another
(``workers=1``), on ``workers`` worker processes (the persistent pool of
:func:`refmem.parallel.worker_pool`), or as tasks of a Dask cluster
(``client=``, a :class:`dask.distributed.Client`: :mod:`refmem.distributed`).
The results come back in the order of the items, whichever finished first.

Every task runs with BLAS pinned to one thread (:func:`refmem.parallel.pinned_blas`)
and ``refmem.options(workers=1)`` (no pool inside a pool), in this process too:
a task's result is then computed by the same code with the same threads
wherever it runs, so the results are identical for every ``workers`` and on a
cluster (``tests/test_pool.py``, ``tests/test_distributed.py``). At most
``workers`` tasks are in flight at a time; ``fn`` and the items must be
picklable (module-level functions are).

A progress bar (:func:`refmem.progress.progress_bar`) counts the finished tasks
when ``desc`` is given and standard error is a terminal.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, wait
from numbers import Integral

from .parallel import run_pinned, worker_pool
from .progress import progress_bar


def check_workers(workers) -> int:
    """``workers`` as an int ``>= 1``, or a ``ValueError`` naming it."""
    if isinstance(workers, bool) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1; got {workers!r}")
    return int(workers)


def run_tasks(fn, items, *, workers: int = 1, client=None, desc: str | None = None) -> list:
    """``[fn(item) for item in items]``, each task pinned (module docstring), on ``workers`` processes or a cluster.

    Parameters
    ----------
    fn : callable
        A picklable function of one item (a module-level function or a
        :func:`functools.partial` of one).
    items : iterable
        The tasks' arguments (picklable).
    workers : int
        ``1`` runs the tasks here one after another; more runs them on that
        many worker processes.
    client : dask.distributed.Client or None
        Run the tasks on this Dask cluster instead (``workers`` is then unused).
    desc : str or None
        The progress bar's label; ``None`` shows no bar.

    Returns
    -------
    list
        The results in the order of ``items``. A task that raises raises here.
    """
    items = list(items)
    workers = check_workers(workers)
    if client is not None:
        from .distributed import map_on_cluster

        return map_on_cluster(fn, items, client=client, desc=desc)
    with progress_bar(len(items), desc) as bar:
        if workers == 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(run_pinned(fn, item))
                bar.update(1)
            return results
        results = [None] * len(items)
        pool = worker_pool(workers)  # may hold more processes than asked: at most `workers` tasks in flight
        queue = iter(enumerate(items))
        running = {}

        def submit_next():
            for i, item in queue:
                running[pool.submit(run_pinned, fn, item)] = i
                return

        for _ in range(workers):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
                bar.update(1)
                submit_next()
        return results
