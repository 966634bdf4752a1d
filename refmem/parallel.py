r"""Heads in parallel: a sequence form run on independent batch and head slices by a pool of worker processes.

NumPy (host) only: the slices are cut and stacked with NumPy, and every worker
runs BLAS on one thread (:mod:`threadpoolctl`).

Every form of :mod:`refmem.memories` and :mod:`refmem.chunked` treats the leading
(batch, head) axes of ``q [..., T, d]`` as independent problems, so running each
leading index on its own and stacking the results is the same computation
(:func:`head_slices`, :func:`stack_slices`: the one slicing, also used by the
Dask path). :func:`heads_in_parallel` runs one task per slice (a single leading
index). A public sequence form (:func:`workers_option`) runs one task per
*group* of ``g`` consecutive slices (:func:`slices_per_task`: up to 4, chosen
from the shape and the cores, never from ``workers``), stacked along one leading
axis: the form's per-token Python and NumPy overhead is then paid once for ``g``
states instead of once per state. Whatever the number of workers, the tasks are
the same, each a fresh C-ordered copy, and each is computed by the same code
with one BLAS thread: the result is bitwise identical for every ``workers``
(the single-worker result, computed in this process, included). It can differ
from one call on the whole batch in the last bits only, since a call on the
whole batch may take a different (equally accurate) path for some gate data.

The pool (:func:`worker_pool`) is loky's persistent
:class:`concurrent.futures.ProcessPoolExecutor` of fresh interpreters (worker
processes escape the GIL: the sequence forms are many small NumPy calls, which a
thread pool serialises). ``workers=N`` is this process and ``N - 1`` pool
processes, sharing the tasks in proportion: the pool takes its share from the
front, this process its own from the back while they run (and what the pool has
not been sent yet once its own are done). The tasks sent to the pool travel
through shared memory (:class:`multiprocessing.shared_memory.SharedMemory`),
not through the pool's pipes: the caller copies a task's inputs, slice by
slice, into its region of one shared block (kept between calls, freed by
:func:`shutdown_pool` or at exit) when it sends it, a worker reads them in
place, computes, and writes its outputs into the task's region of a second
persistent block, from which the caller copies them into the stacked result.
The size of that region is learnt from the caller's first own task and kept
per form and input shapes, so only the tasks sent before it, in a form's first
call on a shape, hand their outputs back in new blocks that the caller frees.
This process's own tasks read the inputs where they lie when the task's
slices are one C-ordered run of the input (:func:`_task_view`: no copy), else
a fresh copy. Only names, offsets, shapes and the small arguments are pickled.
Extra memory while the pool runs: one copy of the pool's share of the sliced
inputs and of the outputs, besides what each form needs for its slice.

The workers keep the memory they free (glibc's malloc settings in their
environment, :data:`_KEEP_FREED_MEMORY`): a form's temporaries are made and
freed again every block of chunks, and a fresh one costs a page fault per
4 KiB; kept, the next block reuses them.

Public sequence forms take ``workers=`` (:func:`workers_option`); the default
(``workers=None`` and ``refmem.options(workers=None)``) is the pool on every
usable core when there are at least as many slices as cores AND the problem is
big enough to pay for it: ``B H T d_k d_v >= 2**27`` (about 0.1 s of work on one
core: B = 2, H = 8, T = 4096, d = 64 is ``2**28``); otherwise one plain call.
``refmem.options(workers=1)`` switches the pool off (one plain call).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import itertools
import os
import pickle
import threading
import warnings
from multiprocessing.shared_memory import SharedMemory
from numbers import Integral

import numpy as np
from array_api_compat import array_namespace

from .validation import get_option, options


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(workers, n_slices: int, *, work: int | None = None) -> int:
    """The number of workers for ``n_slices`` independent slices.

    ``workers``: an int ``>= 1``; ``None`` takes ``refmem.options(workers=...)``, and
    when that is ``None`` too, every usable core if ``n_slices`` is at least the
    number of cores (a pool that cannot keep every core busy gains little) and
    ``work`` (:func:`pool_work`, when given) is at least :data:`POOL_WORK`, else 1.
    Never more workers than slices.
    """
    if workers is None:
        workers = get_option("workers")
    if workers is None:
        cores = usable_cores()
        workers = cores if n_slices >= cores and (work is None or work >= POOL_WORK) else 1
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
    return x[tuple(i if s != 1 else 0 for i, s in zip(index, x.shape)) + (...,)]  # the standard wants the `...`


def _stack(results: list, lead: tuple):
    """Stack per-slice results (arrays or nested tuples of arrays) back to ``lead + shape``."""
    first = results[0]
    if isinstance(first, tuple):
        return tuple(_stack([r[j] for r in results], lead) for j in range(len(first)))
    if not is_array(first) and not isinstance(first, np.generic):  # NumPy scalars stack as arrays
        return list(results)  # not an array: the values in slice order
    xp = array_namespace(first)  # NumPy here; CuPy for slices computed on GPU workers
    stacked = xp.stack(results, axis=0)  # (n_slices, ...)
    return xp.reshape(stacked, lead + tuple(first.shape))


def _slice_indices(inputs: dict):
    """``(lead, plan, indices)`` of :func:`head_slices` (``None`` when the inputs cannot be cut)."""
    q = inputs.get("q")
    if not is_array(q) or q.ndim < 3:
        return None
    lead = tuple(q.shape[:-2])
    plan = _slice_plan(inputs, lead)
    if plan is None:
        return None
    return lead, plan, list(itertools.product(*(range(L) for L in lead)))


def head_slices(inputs: dict):
    """``(lead, slices)``: the leading (batch, head) shape of ``q`` and the inputs of every leading index, in order.

    Each slice is a dict of ``fn``'s keyword inputs: the arrays cut at one leading
    index (views), the other inputs passed whole; the order is C order over
    ``lead``, the order :func:`stack_slices` expects. ``None`` when the inputs
    cannot be cut (no array ``q`` with a leading axis, or ambiguous leading axes):
    then the form is run unsliced. Used by :func:`heads_in_parallel` and by
    :func:`refmem.distributed.heads_on_cluster`.
    """
    cut = _slice_indices(inputs)
    if cut is None:
        return None
    lead, plan, indices = cut
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


def run_pinned(fn, item):
    """``fn(item)`` with BLAS pinned to one thread and no heads-in-parallel pool inside (one task of a pool)."""
    with pinned_blas(), options(workers=1):
        return fn(item)


# --- the pool of worker processes -------------------------------------------------------------------

_POOL = {"size": 0, "executor": None}
_CALL = threading.Lock()


def _start_worker():
    """Initializer of a worker process: BLAS on one thread for the worker's whole life."""
    pinned_blas()  # not used as a context: the limit stays


_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
# glibc malloc in the workers (other C libraries ignore these): blocks up to 32 MiB (glibc's largest threshold)
# from the heap instead of fresh mmaps, and freed memory kept, not handed back to the system. A sequence form
# makes and frees the same few-MiB temporaries every block of chunks; with the defaults each new one costs a
# page fault per 4 KiB touched (about 3000 per 4-slice task of the chunked gated delta rule at T = 4096, d = 64:
# 12.4 against 10.6 ms per slice measured, one process, BLAS on one thread); kept, they cost none. The worker's
# memory stays at its largest task's peak.
_KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**62),
                      "MALLOC_TOP_PAD_": str(16 * 2**20)}


def worker_pool(n_workers: int):
    """The persistent pool of at least ``n_workers`` worker processes (:func:`loky.get_reusable_executor`).

    loky starts each worker as a fresh interpreter (safe in a process that runs
    threads, and a script needs no ``if __name__ == "__main__"`` guard), with
    the BLAS thread variables set to 1 and :func:`pinned_blas` as initializer.
    A pool is never shrunk (starting a process costs about a second): a call that
    asks for fewer workers keeps only that many slices in flight
    (:func:`_on_workers`); a call that asks for more grows it.
    """
    from loky import get_reusable_executor

    if _POOL["executor"] is None or _POOL["size"] < n_workers:
        executor = get_reusable_executor(max_workers=n_workers, env={**_ONE_THREAD, **_KEEP_FREED_MEMORY},
                                          initializer=_start_worker)
        _POOL.update(size=n_workers, executor=executor)
    return _POOL["executor"]


def shutdown_pool():
    """Stop the worker processes and free the shared block of the inputs (both made again when next needed)."""
    executor = _POOL["executor"]
    _POOL.update(size=0, executor=None)
    if executor is not None:
        executor.shutdown(wait=True)
    _free_arena()


def _fresh(x):
    """``x`` as a new C-ordered array (tuples element by element): every slice has the same layout wherever it runs."""
    if isinstance(x, tuple):
        return tuple(_fresh(e) for e in x)
    return np.array(x, order="C", copy=True)


def _task_cut(x, group: list, batched: bool):
    """The part of ``x`` one task computes: the slice ``x[group[0]]`` (a view), or (``batched``) the slices of
    ``group`` stacked along a new leading axis ``[len(group), ...]``, a fresh C-ordered array (tuples element by element)."""
    if isinstance(x, tuple):
        return tuple(_task_cut(e, group, batched) for e in x)
    if not batched:
        return _cut(x, group[0])
    return np.stack([_cut(x, index) for index in group], axis=0)  # (g, ..): g slices, a fresh C-ordered array


def _task_shape(x, group: list, batched: bool):
    """``(shape, dtype)`` of :func:`_task_cut`'s result, without cutting (tuples element by element)."""
    if isinstance(x, tuple):
        return tuple(_task_shape(e, group, batched) for e in x)
    x = np.asarray(x)
    shape = tuple(x.shape[len(group[0]):])
    return ((len(group),) + shape if batched else shape), x.dtype


def _slice_inputs(inputs: dict, plan: dict, group: list, batched: bool) -> dict:
    """The inputs of the task computing the slices of ``group`` in this process: cut arrays as C-ordered views
    where they lie so in the input (:func:`_task_view`), else as fresh copies (one copy each); the rest whole."""
    return {k: (_task_input(x, group, batched) if plan[k] else x) for k, x in inputs.items()}


def _task_input(x, group: list, batched: bool):
    """:func:`_task_view` of ``x``, or a fresh C-ordered copy of :func:`_task_cut` where there is none."""
    if isinstance(x, tuple):
        return tuple(_task_input(e, group, batched) for e in x)
    view = _task_view(x, group, batched)
    if view is not None:
        return view
    return _task_cut(x, group, True) if batched else _fresh(_task_cut(x, group, False))


def _task_view(x, group: list, batched: bool):
    """The part of ``x`` a task computes as a C-contiguous view of ``x`` (no copy), or ``None``.

    There is one when ``x`` is a C-contiguous NumPy array whose leading axes are
    all cut (none broadcast from size 1) and the task's slices follow one
    another in it (:func:`_groups` makes consecutive groups): then the task's
    part is a run of consecutive rows of ``x`` seen as ``[n_slices, ...]``,
    laid out exactly as a fresh copy would be.
    """
    if not isinstance(x, np.ndarray) or not x.flags.c_contiguous:
        return None
    n = len(group[0])
    lead = x.shape[:n]
    if not _all_cut(group, lead):
        return None
    first, last = (int(np.ravel_multi_index(index, lead)) if n else 0 for index in (group[0], group[-1]))
    if last - first != len(group) - 1:
        return None
    rows = np.reshape(x, (-1,) + x.shape[n:])  # (n_slices, ..): a view of a C-contiguous array
    return rows[first:last + 1] if batched else rows[first]


def _all_cut(group: list, lead: tuple) -> bool:
    """Whether every slice index of ``group`` lies inside ``lead`` (no axis of ``x`` broadcast from size 1)."""
    return all(all(i < s for i, s in zip(index, lead)) for index in group)


_ARENA = {"block": None}  # the caller's persistent shared block for the sliced inputs
_OUT_ARENA = {"block": None}  # the caller's persistent shared block the workers write their outputs into
_ATTACHED = {}  # in a worker: the caller's two arenas, attached once (role -> (name, SharedMemory))
_ALIGN = 64  # bytes: every array in the arena starts on a cache line


def _input_arena(nbytes: int, store=_ARENA):
    """The caller's shared block for the sliced inputs (or ``store``'s), at least ``nbytes`` long (kept between calls: no page faults)."""
    block = store["block"]
    if block is None or block.size < nbytes:
        _free_arena(store)
        block = SharedMemory(create=True, size=max(nbytes, 1))
        store["block"] = block
    return block


def _free_arena(store=None):
    """Free the caller's shared blocks (``store``'s only, if given)."""
    for one in (_ARENA, _OUT_ARENA) if store is None else (store,):
        block = one["block"]
        one["block"] = None
        if block is not None:
            block.close()
            block.unlink()


atexit.register(_free_arena)


def _layout(x, offset: int):
    """``(description, end)``: ``x`` (an array or a tuple of arrays) placed in the arena from ``offset`` (name filled in later)."""
    return _shape_layout(_shape_of(x), offset)


def _shape_of(x):
    """``(shape, dtype)`` of an array (tuples element by element)."""
    if isinstance(x, tuple):
        return tuple(_shape_of(e) for e in x)
    x = np.asarray(x)
    return tuple(x.shape), x.dtype


def _is_shape(s) -> bool:
    """Whether ``s`` is one array's ``(shape, dtype)`` rather than a tuple of them (whose items are tuples)."""
    return len(s) == 2 and isinstance(s[1], np.dtype)


def _shape_layout(s, offset: int):
    """:func:`_layout` from ``(shape, dtype)`` pairs (:func:`_shape_of`, :func:`_task_shape`), nothing read."""
    if not _is_shape(s):
        descs = []
        for e in s:
            d, offset = _shape_layout(e, offset)
            descs.append(d)
        return ("tuple", tuple(descs)), offset
    shape, dtype = s
    start = -(-offset // _ALIGN) * _ALIGN
    return ("array", None, start, shape, dtype.str), start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _placed(desc, name: str, shift: int):
    """``desc`` with the block's name and its offsets moved by ``shift`` bytes."""
    if desc[0] == "tuple":
        return ("tuple", tuple(_placed(d, name, shift) for d in desc[1]))
    _, _, start, shape, dtype = desc
    return ("array", name, start + shift, shape, dtype)


def _fill(x, desc, block):
    """Copy ``x`` (an array or a tuple of arrays) into its place ``desc`` of ``block``."""
    if desc[0] == "tuple":
        for e, d in zip(x, desc[1]):
            _fill(e, d, block)
        return
    _, _, start, shape, dtype = desc
    np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=start)[...] = x


class _SliceArena:
    """The caller's shared block cut into one region per task; a region is filled just before its task runs."""

    def __init__(self, inputs: dict, groups: list, batched: bool, layout: dict, stride: int, n_regions: int):
        """``layout``, ``stride``: :func:`_task_layout` of the tasks; regions for tasks ``0 .. n_regions - 1``."""
        self.inputs, self.groups, self.batched, self.layout, self.stride = inputs, groups, batched, layout, stride
        self.block = _input_arena(stride * n_regions)

    def region(self, i: int) -> dict:
        """Copy task ``i``'s inputs into its region (one copy, slice by slice); returns their descriptions by name."""
        shift = i * self.stride
        placed = {k: _placed(d, self.block.name, shift) for k, d in self.layout.items()}
        for k, d in placed.items():
            _fill_task(self.inputs[k], self.groups[i], self.batched, d, self.block)
        return placed


def _task_layout(inputs: dict, plan: dict, group: list, batched: bool):
    """``(layout, stride)``: where a task's cut inputs lie in its region of the arena, by name, and the region's
    size in bytes (every task has the shapes of the one computing ``group``)."""
    layout, end = {}, 0
    for k, x in inputs.items():
        if plan[k]:
            layout[k], end = _shape_layout(_task_shape(x, group, batched), end)
    return layout, -(-end // _ALIGN) * _ALIGN


def _shared_memory_free() -> int | None:
    """Bytes free for new shared memory blocks (``/dev/shm`` on Linux); ``None`` where that cannot be asked."""
    try:
        stat = os.statvfs("/dev/shm")
    except (AttributeError, OSError):
        return None
    return stat.f_bavail * stat.f_frsize


def _growth(store: dict, nbytes: int) -> int:
    """Bytes of new shared memory :func:`_input_arena` takes to give ``store`` ``nbytes`` (it frees a smaller block)."""
    block = store["block"]
    if block is not None and block.size >= nbytes:
        return 0
    return nbytes - (0 if block is None else block.size)


def _fill_task(x, group: list, batched: bool, desc, block):
    """Copy the part of ``x`` a task computes (:func:`_task_cut`) straight into its place ``desc`` of ``block``."""
    if desc[0] == "tuple":
        for e, d in zip(x, desc[1]):
            _fill_task(e, group, batched, d, block)
        return
    _, _, start, shape, dtype = desc
    view = np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=start)
    if not batched:
        view[...] = _cut(x, group[0])
        return
    for j, index in enumerate(group):
        view[j] = _cut(x, index)  # (..) into (g, ..): no stacked temporary


def _attached(name: str, role: str = "in"):
    """In a worker: the caller's arena ``name`` for ``role`` (attached on first use; an older one is closed)."""
    held = _ATTACHED.get(role)
    if held is None or held[0] != name:
        if held is not None:
            held[1].close()
        held = _ATTACHED[role] = (name, SharedMemory(name=name))
    return held[1]


def _arena_view(desc):
    """In a worker: the input ``desc`` describes, a view of the caller's arena (tuples element by element)."""
    if desc[0] == "tuple":
        return tuple(_arena_view(d) for d in desc[1])
    _, name, start, shape, dtype = desc
    return np.ndarray(shape, np.dtype(dtype), buffer=_attached(name).buf, offset=start)


def _arrays_only(out) -> bool:
    return isinstance(out, np.ndarray) or isinstance(out, tuple) and all(_arrays_only(o) for o in out)


def _into_slot(out, slot):
    """A worker's outputs (arrays) written into its slot ``(name, offset, size)`` of the caller's output arena; their
    description, or ``None`` when they do not fit (then :func:`_hand_back` uses new blocks)."""
    name, offset, size = slot
    if not _arrays_only(out):
        return None
    layout, end = _layout(out, 0)
    if end > size:
        return None
    block = _attached(name, "out")
    placed = _placed(layout, name, offset)
    _fill(out, placed, block)
    return _as_arena(placed)


def _as_arena(desc):
    """``desc`` marked as lying in the caller's output arena (read there, never unlinked by :func:`_free`)."""
    if desc[0] == "tuple":
        return ("tuple", tuple(_as_arena(d) for d in desc[1]))
    return ("arena",) + tuple(desc[1:])


def _hand_back(out):
    """A worker's outputs copied into new shared blocks (arrays) or passed as they are (anything else); their description."""
    if isinstance(out, tuple):
        return ("tuple", tuple(_hand_back(o) for o in out))
    if not isinstance(out, np.ndarray):
        return ("value", out)
    block = SharedMemory(create=True, size=max(out.nbytes, 1))
    try:
        np.ndarray(out.shape, out.dtype, buffer=block.buf)[...] = out
    finally:
        block.close()  # the caller unlinks it after copying
    return ("array", block.name, 0, out.shape, out.dtype.str)


def _run_slice(fn, shared: dict, whole: dict, slot=None, check_finite: bool = True):
    """In a worker: ``fn`` on one slice, its inputs read in place from the caller's arena; the outputs written
    into ``slot`` of the caller's output arena when given and large enough, else handed back in new blocks.
    ``check_finite``: the caller's ``refmem.options(check_finite=...)``, which the worker follows as the caller's
    own slices do."""
    inputs = {k: _arena_view(d) for k, d in shared.items()}
    inputs.update(whole)
    with options(workers=1, check_finite=check_finite):  # no pool inside a pool
        out = fn(**inputs)
    del inputs
    desc = None if slot is None else _into_slot(out, slot)
    return _hand_back(out) if desc is None else desc


def _free(desc):
    """Unlink the blocks a worker handed back (``desc``), once copied."""
    if desc[0] == "tuple":
        for d in desc[1]:
            _free(d)
    elif desc[0] == "array":
        block = SharedMemory(name=desc[1])
        block.close()
        block.unlink()


def _place(outs, value, rows, n: int):
    """Put a task's outputs ``value`` into the stacked outputs ``outs`` (allocated at the first one placed); returns ``outs``.

    ``rows``: the slice index ``i`` (``value`` is one slice's output) or a
    ``slice`` of slice indices (``value`` has their leading axis: a batched task).
    Arrays go to ``[n_slices, ...]`` arrays, tuples element by element, anything
    else to a list in slice order.
    """
    if isinstance(value, tuple):
        outs = outs if outs is not None else (None,) * len(value)
        return tuple(_place(o, v, rows, n) for o, v in zip(outs, value))
    if outs is None:
        array = isinstance(value, (np.ndarray, np.generic))  # NumPy scalars stack as arrays, as in stack_slices
        shape = value.shape[1:] if isinstance(rows, slice) else value.shape
        outs = np.empty((n,) + shape, dtype=value.dtype) if array else [None] * n
    outs[rows] = value  # (..) or (g, ..) into (n_slices, ..)
    return outs


def _place_handed_back(outs, desc, rows, n: int):
    """:func:`_place` for what a worker handed back (``desc``), copied straight from its blocks."""
    if desc[0] == "tuple":
        outs = outs if outs is not None else (None,) * len(desc[1])
        return tuple(_place_handed_back(o, d, rows, n) for o, d in zip(outs, desc[1]))
    if desc[0] == "value":
        return _place(outs, desc[1], rows, n)
    if desc[0] == "arena":  # in this process's own output arena
        _, name, start, shape, dtype = desc
        return _place(outs, np.ndarray(shape, np.dtype(dtype), buffer=_OUT_ARENA["block"].buf, offset=start), rows, n)
    _, name, start, shape, dtype = desc
    block = SharedMemory(name=name)
    try:
        view = np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=start)
        outs = _place(outs, view, rows, n)
        del view  # no exported pointer left: the block can close
    finally:
        block.close()
    return outs


def _finish(outs, lead: tuple):
    """The stacked outputs in the shape of :func:`stack_slices`."""
    if isinstance(outs, tuple):
        return tuple(_finish(o, lead) for o in outs)
    if isinstance(outs, list):
        return outs
    return np.reshape(outs, lead + tuple(outs.shape[1:]))  # (n_slices, ..) -> lead + (..)


def _on_workers(fn, inputs: dict, plan: dict, groups: list, lead: tuple, n_workers: int, *, batched: bool = False):
    """Every task computed by ``n_workers``: this process and ``n_workers - 1`` pool processes.

    Task ``i`` computes the slices ``groups[i]`` (one slice, or ``batched``: all
    of them in one call, stacked along a leading axis). The tasks are shared
    out in proportion: the pool's ``n - n // n_workers`` from the front (two per
    pool process in flight, so that none waits between tasks), this process's
    ``n // n_workers`` from the back, between which it tops the pool up and
    places what came back; when its share is done it takes the pool's unsent
    tasks from the back too. A pool task's inputs are copied once, slice by
    slice, into its region of the shared arena when it is sent; this process's
    own tasks read the inputs in place where they are one C-ordered run
    (:func:`_slice_inputs`), else a fresh copy. Every task is computed by the
    same code with one BLAS thread on C-ordered inputs.
    The outputs' size per task is remembered per form and input shapes
    (:data:`_OUT_STRIDES`), so that from the second call on every pool task
    writes straight into the output arena.
    """
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"fn must be a module-level function to run on worker processes; {fn!r} cannot be "
                        f"pickled ({type(exc).__name__}); pass workers=1") from None
    running = {}
    _CALL.acquire()  # one pooled call at a time: they share the arena
    try:
        n, n_slices = len(groups), sum(len(g) for g in groups)
        pool_share = n - n // n_workers  # tasks [0, pool_share) go to the pool
        layout, in_stride = _task_layout(inputs, plan, groups[0], batched)
        key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None), repr(layout))
        stride = _OUT_STRIDES.get(key)
        # shared memory the call adds (the outputs' size guessed as the inputs' until known); where the
        # system has less (a container's small /dev/shm), writing it would kill the process with SIGBUS
        need = _growth(_ARENA, in_stride * pool_share) + _growth(_OUT_ARENA, (stride or in_stride) * pool_share)
        free = _shared_memory_free()
        if free is not None and need > free:
            warnings.warn(f"refmem's pool needs {need / 2**20:.0f} MiB more shared memory for workers={n_workers} "
                          f"and /dev/shm has {free / 2**20:.0f} MiB free: the slices are computed in this process "
                          "instead (the same results; enlarge /dev/shm, e.g. docker run --shm-size, to use the pool)",
                          UserWarning, stacklevel=3)
            return _in_this_process(fn, inputs, plan, groups, lead, batched=batched)
        arena = _SliceArena(inputs, groups, batched, layout, in_stride, pool_share)
        whole = {k: x for k, x in inputs.items() if not plan[k]}
        pool = worker_pool(n_workers - 1)
        rows = _task_rows(groups, batched)
        # two tasks per pool process in flight (one queued: no wait between tasks), one each if the
        # pool is larger than asked for (at most n_workers - 1 of its processes busy)
        depth = 2 * (n_workers - 1) if _POOL["size"] == n_workers - 1 else n_workers - 1
        if stride is not None:
            _input_arena(stride * pool_share, _OUT_ARENA)
        lo, hi, outs = 0, n, None
        with pinned_blas(), options(workers=1):
            while lo < hi or running:
                while lo < min(hi, pool_share) and len(running) < depth:
                    slot = None if stride is None else (_OUT_ARENA["block"].name, lo * stride, stride)
                    running[lo] = pool.submit(_run_slice, fn, arena.region(lo), whole, slot, get_option("check_finite"))
                    lo += 1
                if lo < hi:  # this process takes a task from the back
                    hi -= 1
                    own = fn(**_slice_inputs(inputs, plan, groups[hi], batched))  # views where it can: no copy
                    if stride is None and _arrays_only(own):  # the tasks' output size is known now (every task
                        stride = -(-_layout(own, 0)[1] // _ALIGN) * _ALIGN  # has as many slices): later tasks
                        _input_arena(stride * pool_share, _OUT_ARENA)  # write into the output arena
                        _OUT_STRIDES[key] = stride
                    outs = _place(outs, own, rows[hi], n_slices)
                    del own
                for i in [i for i, f in running.items() if f.done()] or ([min(running)] if lo >= hi and running else []):
                    desc = running.pop(i).result()
                    try:
                        outs = _place_handed_back(outs, desc, rows[i], n_slices)
                    finally:
                        _free(desc)
        return _finish(outs, lead)
    except Exception:
        if _POOL["executor"] is not None and getattr(_POOL["executor"], "_broken", False):
            _POOL.update(size=0, executor=None)  # a worker died: the next call starts a new pool
        raise
    finally:
        for future in running.values():  # an error part-way: free what the other slices handed back
            try:
                _free(future.result())
            except Exception:  # noqa: BLE001  (the first error is the one raised)
                pass
        _CALL.release()


_OUT_STRIDES = {}  # (form, input layout) -> bytes of one task's outputs in the output arena (_on_workers)


def _task_rows(groups: list, batched: bool) -> list:
    """Where each task's outputs go in the stacked ``[n_slices, ...]`` outputs: a slice index, or (``batched``) a range."""
    starts = list(itertools.accumulate((len(g) for g in groups), initial=0))
    return [slice(a, b) if batched else a for a, b in zip(starts, starts[1:])]


def _in_this_process(fn, inputs: dict, plan: dict, groups: list, lead: tuple, *, batched: bool = False):
    """Every task computed here, one after another, with BLAS on one thread."""
    outs, n_slices = None, sum(len(g) for g in groups)
    with pinned_blas(), options(workers=1):
        for group, rows in zip(groups, _task_rows(groups, batched)):
            outs = _place(outs, fn(**_slice_inputs(inputs, plan, group, batched)), rows, n_slices)
    return _finish(outs, lead)


SLICES_PER_TASK = 4  # the most (batch, head) slices a sequence form computes in one call of the pool (slices_per_task)


def slices_per_task(n_slices: int, cores: int | None = None) -> int:
    """How many (batch, head) slices one call of a sequence form computes on the pool: ``g``.

    The largest divisor ``g`` of ``n_slices`` with ``g <= SLICES_PER_TASK`` that
    still leaves a task for every usable core (``n_slices / g >= cores``); 1 if
    none. A call on one slice pays the per-step Python and NumPy overhead (a
    recurrent form: a few dozen NumPy calls per token) for one ``d x d`` state;
    on ``g`` slices the same calls carry ``g`` states, and the tasks' inputs
    still fit in a core's cache. Measured on the gated delta rule at
    ``T = 2048, d = 64`` (16 slices, one process): the recurrent form's CPU time
    falls by about a quarter from ``g = 1`` to ``g = 4``, the chunked form's by
    a fifth; ``g = 16`` is slower again. ``g`` depends on the shape and the
    machine's cores only, never on ``workers``: every ``workers`` computes the
    same tasks, so the results stay bitwise identical.
    """
    cores = usable_cores() if cores is None else cores
    fits = [g for g in range(1, SLICES_PER_TASK + 1) if n_slices % g == 0 and n_slices // g >= cores]
    return max(fits, default=1)


def _groups(indices: list, per_task: int) -> list:
    """``indices`` cut into consecutive groups of ``per_task`` (the slices of each task)."""
    return [indices[i:i + per_task] for i in range(0, len(indices), per_task)]


def pool_work(inputs: dict) -> int:
    """``B H T d_k d_v`` of a sequence form's inputs (``q [..., T, d_k]``, ``v [..., T, d_v]``): the size the default rule reads."""
    q, v = inputs.get("q"), inputs.get("v")
    d_v = v.shape[-1] if is_array(v) and v.ndim >= 1 else q.shape[-1]
    return int(np.prod(q.shape[:-1])) * int(q.shape[-1]) * int(d_v)  # B H T, d_k, d_v


POOL_WORK = 2**27  # the default rule's threshold on pool_work (module docstring)


def heads_in_parallel(fn, *, workers=None, **inputs):
    """``fn(**inputs)`` computed per batch/head slice on a pool of ``workers`` processes (module docstring).

    Parameters
    ----------
    fn : callable
        A sequence form, e.g. ``MEMORIES[name].chunked``, whose array inputs have
        the leading axes of ``q`` (size 1 allowed) before their own axes; a
        module-level function when ``workers > 1`` (it is pickled by name).
    workers : int or None
        See :func:`resolve_workers` (``None``: by the size of the problem).
        ``1`` computes the slices in this process.
    **inputs
        ``fn``'s keyword arguments; arrays NumPy (other backends run unsliced).

    Returns
    -------
    What ``fn`` returns, stacked over the leading axes.
    """
    cut = _slice_indices(inputs) if isinstance(inputs.get("q"), np.ndarray) else None
    if cut is None:
        if workers is not None:
            resolve_workers(workers, 1)  # still check the argument
        return fn(**inputs)
    lead, plan, indices = cut
    groups = _groups(indices, 1)
    n_workers = resolve_workers(workers, len(indices), work=pool_work(inputs))
    if n_workers == 1:
        return _in_this_process(fn, inputs, plan, groups, lead)
    return _on_workers(fn, inputs, plan, groups, lead, n_workers)


def _form_tasks(inputs: dict, workers):
    """``(lead, plan, groups, n_workers)`` of a public sequence form's call with NumPy ``inputs`` (bound by name),
    or ``None`` for the plain call (:func:`workers_option`)."""
    if workers is None and (get_option("workers") == 1
                            or get_option("workers") is None and pool_work(inputs) < POOL_WORK):
        return None
    cut = _slice_indices(inputs)
    if cut is None:
        resolve_workers(workers, 1) if workers is not None else None
        return None
    lead, plan, indices = cut
    groups = _groups(indices, slices_per_task(len(indices)))  # the form is batched: several slices per call
    n_workers = min(resolve_workers(workers, len(indices), work=pool_work(inputs)), len(groups))
    return lead, plan, groups, n_workers


def workers_used(inputs: dict, workers=None) -> int:
    """How many processes a public sequence form uses on ``inputs`` (keyword arguments by name) with ``workers``.

    1 for the plain call and for tasks computed in this process (``workers=1``,
    inputs that are not NumPy); what :mod:`refmem.bench` reports in its
    ``workers`` column. A bad ``workers`` is the same ``ValueError`` as in the call.
    """
    q = inputs.get("q")
    if not isinstance(q, np.ndarray) or q.ndim < 3:
        if workers is not None:
            resolve_workers(workers, 1)
        return 1
    tasks = _form_tasks(inputs, workers)
    return 1 if tasks is None else tasks[3]


def workers_option(form):
    """Give a public sequence form the keyword argument ``workers=`` (:func:`heads_in_parallel`).

    ``workers=None`` with ``refmem.options(workers=None)`` runs the plain call
    unless the default rule (module docstring) asks for the pool;
    ``refmem.options(workers=1)`` always runs the plain call (the pool off), and
    ``refmem.options(workers=N)``, ``N > 1``, the pool. An explicit ``workers=N``
    computes the batch and head slices, in this process for ``N = 1``: the
    result is then bitwise the same for every ``N``. Inputs that are not NumPy,
    or without leading axes, run the plain call.
    """
    signature = inspect.signature(form)

    @functools.wraps(form)
    def sliced(*args, workers=None, **kwargs):
        q = args[0] if args else kwargs.get("q")
        if not isinstance(q, np.ndarray) or q.ndim < 3:
            if workers is not None:
                resolve_workers(workers, 1)  # still check the argument
            return form(*args, **kwargs)
        try:
            inputs = dict(signature.bind(*args, **kwargs).arguments)
        except TypeError:
            return form(*args, **kwargs)  # the form's own error for the wrong arguments
        tasks = _form_tasks(inputs, workers)
        if tasks is None:
            return form(*args, **kwargs)
        lead, plan, groups, n_workers = tasks
        if n_workers == 1:
            return _in_this_process(sliced, inputs, plan, groups, lead, batched=True)
        return _on_workers(sliced, inputs, plan, groups, lead, n_workers, batched=True)

    params = list(signature.parameters.values())
    workers_param = inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind == inspect.Parameter.VAR_KEYWORD), len(params))
    sliced.__signature__ = signature.replace(parameters=params[:at] + [workers_param] + params[at:])
    return sliced
