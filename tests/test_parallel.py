"""Heads in parallel (refmem.parallel): the pool's result does not depend on the number of workers (bitwise),
equals one call on the whole batch to rounding, and bad ``workers`` values are refused by name."""

import numpy as np
import pytest

import refmem
from refmem.memories import MEMORIES
from refmem.parallel import heads_in_parallel, resolve_workers, usable_cores, workers_option

CASES = [("gated_delta_rule", "chunked"), ("gated_delta_rule", "recurrent"), ("delta_rule", "chunked"),
         ("linear_attention", "chunked"), ("titans", "minibatch")]


def _form(name, form):
    spec = MEMORIES[name]
    fn = spec.recurrent if form == "recurrent" else getattr(spec, form)
    kw = {} if form == "recurrent" else {"chunk_size": 8}
    return fn, kw


@pytest.mark.parametrize("name, form", CASES)
def test_workers_give_bitwise_identical_results(name, form):
    fn, kw = _form(name, form)
    inputs = MEMORIES[name].make_inputs(3, (2, 3), 21, 5, 4, np, "float64")
    one = heads_in_parallel(fn, workers=1, **inputs, **kw)
    two = heads_in_parallel(fn, workers=2, **inputs, **kw)
    four = heads_in_parallel(fn, workers=4, **inputs, **kw)
    for a, b, c in zip(one, two, four):
        assert a.shape == b.shape == c.shape
        assert np.array_equal(a, b) and np.array_equal(a, c)  # bitwise, not approximately


@pytest.mark.parametrize("name, form", CASES)
def test_slices_equal_one_call_on_the_whole_batch(name, form):
    """Each (batch, head) slice is the same problem; only rounding may differ (a gate path chosen on the whole
    batch): 1e-12 relative is ~4500 eps, far above the few-eps reordering and far below any real difference."""
    fn, kw = _form(name, form)
    inputs = MEMORIES[name].make_inputs(4, (2, 3), 19, 4, 4, np, "float64")
    whole = fn(**inputs, **kw)
    pooled = heads_in_parallel(fn, workers=2, **inputs, **kw)
    for a, b in zip(whole, pooled):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(a))))


def test_slices_are_independent():
    """Changing one head's inputs changes only that head's outputs (a plain check that slices do not mix)."""
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(5, (2, 2), 12, 3, 3, np, "float64")
    base = heads_in_parallel(fn, workers=2, **inputs, **kw)
    changed = dict(inputs, v=inputs["v"].copy())
    changed["v"][1, 0] += 1.0
    new = heads_in_parallel(fn, workers=2, **changed, **kw)
    differs = np.any(new[0] != base[0], axis=(-2, -1))  # (B, H)
    assert differs.tolist() == [[False, False], [True, False]]


def test_option_and_default():
    assert resolve_workers(3, 10) == 3
    assert resolve_workers(8, 2) == 2  # never more workers than slices
    with refmem.options(workers=2):
        assert resolve_workers(None, 10) == 2
    cores = usable_cores()
    assert resolve_workers(None, cores) == cores
    assert resolve_workers(None, max(cores - 1, 1)) == (1 if cores > 1 else 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_workers_are_refused(bad):
    fn, kw = _form("delta_rule", "chunked")
    inputs = MEMORIES["delta_rule"].make_inputs(0, (2,), 5, 3, 3, np, "float64")
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        heads_in_parallel(fn, workers=bad, **inputs, **kw)


def test_pinning_reaches_scipys_blas_in_a_fresh_process():
    """SciPy's BLAS (its own OpenBLAS, loaded on first use by the triangular solves) runs on one thread inside the
    pool too: in a fresh interpreter, where refmem has not loaded SciPy yet, every BLAS seen from inside a slice
    reports one thread."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "from refmem.parallel import heads_in_parallel\n"
        "def probe(q):\n"
        "    import scipy.linalg.blas\n"
        "    return np.array([float(i['num_threads']) for i in threadpool_info() if i['user_api'] == 'blas'])\n"
        "seen = heads_in_parallel(probe, workers=1, q=np.zeros((2, 3, 4)))\n"
        "print(seen.shape[-1], int(seen.max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2"})
    n_libs, most = map(int, out.stdout.split())
    assert n_libs >= 2  # NumPy's and SciPy's BLAS both loaded and seen
    assert most == 1


POOLED_FORMS = [(name, form) for name in ("linear_attention", "gated_linear_attention", "delta_rule", "gated_delta_rule",
                                          "longhorn", "titans", "mesa")
                for form in ("recurrent", "chunked", "minibatch") if getattr(MEMORIES[name], form, None) is not None]


@pytest.mark.parametrize("name, form", POOLED_FORMS)
def test_public_forms_take_workers_and_give_bitwise_identical_results(name, form):
    """``workers=1`` (the slices in this process) and ``workers=2`` (worker processes, slices through shared
    memory) agree bit for bit; both equal the plain call to the same 1e-12 as above."""
    fn, kw = _form(name, form)
    inputs = MEMORIES[name].make_inputs(6, (2, 2), 13, 4, 3, np, "float64")
    plain = fn(**inputs, **kw)
    one = fn(**inputs, **kw, workers=1)
    two = fn(**inputs, **kw, workers=2)
    for p, a, b in zip(plain, one, two):
        assert a.shape == b.shape == p.shape and a.dtype == b.dtype == p.dtype
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, p, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(p))))


def _count_pool_calls(monkeypatch):
    import refmem.parallel as parallel

    calls = []
    real = parallel._on_workers

    def counted(*args, **kwargs):
        calls.append(args[-1])  # the number of workers
        return real(*args, **kwargs)

    monkeypatch.setattr(parallel, "_on_workers", counted)
    return calls


def test_option_sends_public_forms_to_the_pool(monkeypatch):
    calls = _count_pool_calls(monkeypatch)
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(7, (2, 3), 11, 4, 4, np, "float64")
    one = fn(**inputs, **kw, workers=1)
    assert calls == []  # one worker: the slices in this process
    with refmem.options(workers=2):
        pooled = fn(**inputs, **kw)
    assert calls == [2]
    for a, b in zip(one, pooled):
        assert np.array_equal(a, b)


def test_default_rule_keeps_small_problems_in_one_plain_call(monkeypatch):
    import refmem.parallel as parallel

    calls = _count_pool_calls(monkeypatch)
    fn, kw = _form("delta_rule", "chunked")
    inputs = MEMORIES["delta_rule"].make_inputs(8, (4, 4), 9, 3, 3, np, "float64")
    fn(**inputs, **kw)
    assert calls == []
    assert parallel.pool_work(inputs) == 16 * 9 * 3 * 3
    cores = usable_cores()
    assert resolve_workers(None, 16, work=parallel.POOL_WORK) == min(cores, 16)
    assert resolve_workers(None, 16, work=parallel.POOL_WORK - 1) == 1
    assert resolve_workers(None, cores - 1, work=parallel.POOL_WORK) == 1 or cores == 1


def test_nested_outputs_and_initial_statistics_travel_through_the_pool():
    """Mesa's ``return_stats`` gives ``(o, M, (G, H))``, and its initial state may be a tuple: both cut and stacked."""
    fn = MEMORIES["mesa"].recurrent
    inputs = MEMORIES["mesa"].make_inputs(9, (2, 2), 7, 3, 3, np, "float64")
    one = fn(**inputs, return_stats=True, workers=1)
    two = fn(**inputs, return_stats=True, workers=2)
    assert len(two) == 3 and len(two[2]) == 2
    for a, b in zip((one[0], one[1], *one[2]), (two[0], two[1], *two[2])):
        assert np.array_equal(a, b)
    again = fn(**dict(inputs, initial_state=two[2]), workers=2)
    again_one = fn(**dict(inputs, initial_state=one[2]), workers=1)
    for a, b in zip(again, again_one):
        assert np.array_equal(a, b)


def test_errors_in_a_worker_reach_the_caller():
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(10, (2, 2), 8, 3, 3, np, "float64")
    bad = dict(inputs, alpha=inputs["alpha"].copy())
    bad["alpha"][1, 1, 3] = 2.0  # a forget gate outside [0, 1]
    with pytest.raises(ValueError, match="alpha"):
        fn(**bad, **kw, workers=2)


def test_a_function_that_cannot_be_pickled_is_refused_by_name():
    inputs = MEMORIES["delta_rule"].make_inputs(0, (2,), 5, 3, 3, np, "float64")
    with pytest.raises(TypeError, match="cannot be pickled"):
        heads_in_parallel(lambda **kw: MEMORIES["delta_rule"].recurrent(**kw), workers=2, **inputs)


def test_option_one_worker_is_the_plain_call(monkeypatch):
    """``refmem.options(workers=1)`` switches the pool off even above the default rule's size: the form's own call."""
    import refmem.parallel as parallel

    calls = _count_pool_calls(monkeypatch)
    monkeypatch.setattr(parallel, "POOL_WORK", 1)  # every problem "big enough" for the default rule
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(11, (2, 3), 9, 3, 3, np, "float64")
    with refmem.options(workers=1):
        plain = fn(**inputs, **kw)
    assert calls == []
    pooled = fn(**inputs, **kw)  # the default rule now takes the pool when there are enough slices for the cores
    assert calls == ([min(usable_cores(), 6)] if usable_cores() > 1 else [])
    for a, b in zip(plain, pooled):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(a))))


def _sum_and_first_row(q):
    """A module-level form (picklable by name) returning a NumPy scalar and an array."""
    return np.sum(q), q[..., 0, :]


def test_scalar_outputs_stack_the_same_in_this_process_and_on_the_pool():
    q = np.random.default_rng(13).standard_normal((2, 3, 5, 4))
    one = heads_in_parallel(_sum_and_first_row, workers=1, q=q)
    two = heads_in_parallel(_sum_and_first_row, workers=2, q=q)
    expected = (q.sum(axis=(-2, -1)), q[..., 0, :])  # written here: per (batch, head) sum and first row
    for a, b, e in zip(one, two, expected):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.shape == b.shape == e.shape and np.array_equal(a, b)
        np.testing.assert_allclose(a, e, rtol=1e-14)


def test_workers_follow_the_callers_check_finite_option():
    """A slice computed on a pool process follows the caller's ``refmem.options(check_finite=...)`` as the caller's
    own slices do: with the checks on, a nan input is refused; with them off (as ``refmem bench`` times the forms)
    it runs unchecked and the nan stays in its own head's outputs. The nan sits in slice 0, the first one the pool
    takes (it takes slices from the front, this process from the back)."""
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(5, (2, 2), 12, 3, 3, np, "float64")
    inputs["q"] = inputs["q"].copy()
    inputs["q"][0, 0, 4, 1] = np.nan
    with pytest.raises(ValueError, match="q"):
        heads_in_parallel(fn, workers=2, **inputs, **kw)
    with refmem.options(check_finite=False):
        o, M = heads_in_parallel(fn, workers=2, **inputs, **kw)
    assert np.isnan(o[0, 0]).any()
    assert np.all(np.isfinite(o[0, 1])) and np.all(np.isfinite(o[1])) and np.all(np.isfinite(M[1]))


@pytest.mark.parametrize("n_slices, cores, expected", [
    (16, 2, 4),  # at most SLICES_PER_TASK slices per task, and still 4 tasks for 2 cores
    (16, 8, 2),  # a task for every core: 8 tasks of 2
    (16, 16, 1), (16, 32, 1),  # no more tasks than slices to give
    (6, 2, 3), (7, 2, 1),  # only divisors: every task the same size (7 is prime)
    (1, 1, 1), (12, 1, 4),
])
def test_slices_per_task_divides_and_leaves_a_task_per_core(n_slices, cores, expected):
    from refmem.parallel import SLICES_PER_TASK, slices_per_task

    g = slices_per_task(n_slices, cores)
    assert g == expected
    assert n_slices % g == 0 and g <= SLICES_PER_TASK
    assert n_slices // g >= cores or g == 1


@workers_option
def _record_slices(q):
    """A module-level batched form that reports how many (batch, head) slices one call received."""
    return np.full(q.shape[:-2], float(np.prod(q.shape[:-2]))), q[..., -1, :]


def test_public_forms_compute_groups_of_slices_per_call(monkeypatch):
    """The form wrapped by workers_option receives ``g`` slices stacked along one leading axis, in order, on the
    pool and in this process alike; the stacked outputs are those of the plain call."""
    import refmem.parallel as parallel

    form = _record_slices
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    q = np.random.default_rng(14).standard_normal((2, 4, 3, 2))  # 8 slices -> tasks of 4
    for workers in (1, 2):
        seen, last = form(q, workers=workers)
        assert seen.shape == (2, 4) and np.all(seen == 4.0)
        assert np.array_equal(last, q[..., -1, :])


# ---------------------------------------------------------------- how the tasks reach the workers


def test_a_task_reads_a_c_ordered_run_of_slices_in_place_and_copies_the_rest():
    """``_task_view``: a view (no copy) exactly when the task's slices are one C-ordered run of the input;
    a broadcast (size-1) leading axis, a non-contiguous input or slices that do not follow one another give
    ``None`` (the task then gets a fresh copy). Either way the values are those of the stacked slices."""
    from refmem.parallel import _task_input, _task_view

    x = np.arange(2 * 4 * 3 * 2, dtype=float).reshape(2, 4, 3, 2)
    run = [(0, 2), (0, 3), (1, 0)]  # consecutive in C order across the batch boundary
    view = _task_view(x, run, True)
    assert view is not None and np.shares_memory(view, x) and view.flags.c_contiguous
    assert np.array_equal(view, np.stack([x[i] for i in run]))
    single = _task_view(x, [(1, 3)], False)
    assert np.shares_memory(single, x) and np.array_equal(single, x[1, 3])
    assert _task_view(x, [(0, 1), (0, 3)], True) is None  # not consecutive
    assert _task_view(np.ascontiguousarray(x[:, :1]), [(0, 0), (1, 0)], True) is not None  # q's lead has the 1 too
    broadcast = x[:1]  # (1, 4, ..): broadcast over the batch of q (2, 4)
    assert _task_view(broadcast, [(1, 0), (1, 1)], True) is None
    swapped = np.swapaxes(x, 0, 1)  # (4, 2, ..), not C-contiguous
    assert _task_view(swapped, [(0, 0), (0, 1)], True) is None
    for arr, group in ((broadcast, [(1, 0), (1, 1)]), (swapped, [(0, 0), (0, 1)])):
        copy = _task_input(arr, group, True)
        assert not np.shares_memory(copy, x) and copy.flags.c_contiguous
        assert np.array_equal(copy, np.stack([arr[min(i, arr.shape[0] - 1), j] for i, j in group]))


@pytest.mark.parametrize("layout", ["c_ordered", "strided"])
def test_pool_results_do_not_depend_on_how_the_inputs_lie(layout):
    """The same values as C-ordered arrays (read in place; the state, of leading shape (1, H), broadcast over the
    batch and copied) and as strided views (every task copies) give bitwise the same results for workers 1 and 2
    as the C-ordered call with the state written out for every batch row."""
    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(7, (2, 4), 17, 4, 3, np, "float64")
    inputs["initial_state"] = np.random.default_rng(8).standard_normal((1, 4, 3, 4))
    if layout == "strided":  # the same values, every array a non-contiguous view
        inputs = {k: np.swapaxes(np.swapaxes(x, 0, 1).copy(), 0, 1) for k, x in inputs.items()}
    reference = MEMORIES["gated_delta_rule"].make_inputs(7, (2, 4), 17, 4, 3, np, "float64")
    reference["initial_state"] = np.broadcast_to(np.random.default_rng(8).standard_normal((1, 4, 3, 4)),
                                                 (2, 4, 3, 4)).copy()
    want = fn(**reference, **kw, workers=2)
    for workers in (1, 2):
        got = fn(**inputs, **kw, workers=workers)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


@workers_option
def _where_computed(q):
    """A module-level batched form that reports, per slice, the process that computed it."""
    import os

    return np.full(q.shape[:-2], float(os.getpid())), q[..., -1, :]


def test_the_caller_computes_its_share_of_the_tasks(monkeypatch):
    """With 4 tasks and 2 workers this process computes at least 2 of them (its share from the back; the pool's
    two are sent before it starts, so it has none to take over): the pool is never handed more than its share
    while this process waits."""
    import os

    import refmem.parallel as parallel

    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    q = np.random.default_rng(15).standard_normal((4, 4, 3, 2))  # 16 slices -> 4 tasks of 4
    pids, last = _where_computed(q, workers=2)
    assert np.array_equal(last, q[..., -1, :])
    per_task = pids.reshape(4, 4)
    assert np.all(per_task == per_task[:, :1])  # a task is computed by one process
    mine = int(np.sum(per_task[:, 0] == os.getpid()))
    assert mine >= 2 and mine < 4


def test_from_the_second_call_the_pool_writes_into_the_output_arena(monkeypatch):
    """The outputs' size per task is learnt once per form and input shapes: a second call on the same shapes
    hands nothing back in new blocks (every pool task writes into the persistent output arena)."""
    import refmem.parallel as parallel

    handed_back = []
    real_free = parallel._free

    def counting_free(desc):
        if desc[0] == "array":
            handed_back.append(desc)
        return real_free(desc)

    monkeypatch.setattr(parallel, "_free", counting_free)
    fn, kw = _form("delta_rule", "chunked")
    inputs = MEMORIES["delta_rule"].make_inputs(9, (2, 4), 11, 3, 5, np, "float64")  # a shape no other test uses
    parallel._OUT_STRIDES.clear()
    first = fn(**inputs, **kw, workers=2)
    assert handed_back  # the tasks sent before this process's first own task told the size
    handed_back.clear()
    second = fn(**inputs, **kw, workers=2)
    assert handed_back == []
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def _environment(names):
    import os

    return {name: os.environ.get(name) for name in names}


def test_workers_keep_the_memory_they_free():
    """The pool's processes start with glibc's malloc told to reuse freed memory (module docstring)."""
    from refmem.parallel import _KEEP_FREED_MEMORY, worker_pool

    seen = worker_pool(1).submit(_environment, list(_KEEP_FREED_MEMORY)).result()
    assert seen == _KEEP_FREED_MEMORY
    assert int(seen["MALLOC_MMAP_THRESHOLD_"]) == 32 * 2**20  # glibc's largest accepted threshold


def test_too_little_shared_memory_computes_in_this_process_with_a_warning(monkeypatch):
    """Where /dev/shm cannot hold the pool's share of the slices (a container's 64 MiB default), writing the
    arena would kill the process with SIGBUS; the call says so and computes the slices here, bitwise the same."""
    import refmem.parallel as parallel

    fn, kw = _form("gated_delta_rule", "chunked")
    inputs = MEMORIES["gated_delta_rule"].make_inputs(10, (2, 2), 9, 3, 3, np, "float64")
    want = fn(**inputs, **kw, workers=1)
    parallel.shutdown_pool()  # no arena left from other tests: all of it would be new
    monkeypatch.setattr(parallel, "_shared_memory_free", lambda: 1024)
    sent = []
    monkeypatch.setattr(parallel, "worker_pool", lambda n: sent.append(n))
    with pytest.warns(UserWarning, match=r"shared memory for workers=2 and /dev/shm has 0 MiB free"):
        got = fn(**inputs, **kw, workers=2)
    assert sent == []  # nothing reached the pool
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
