"""``refmem bench``: throughput of the recurrent, chunked and mini-batch forms of each memory.

For every memory (default: every memory with a chunked form, and the
per-channel variants of :data:`VARIANTS` under their own names, e.g.
``longhorn/per_channel``), every dtype and
every form it has, the benchmark times the form on random inputs of shape
``B x H x T x d`` (``d_k = d_v = d``) and reports one row:

- ``head_tokens_per_s = B H T / seconds`` (best of ``--repeat`` timed calls,
  after one untimed warm-up call);
- ``flops``: the form's useful FLOP count (:func:`form_flops`, multiply-add = 2,
  structural zeros such as the upper triangles of in-chunk products not
  counted; never more than the implementation performs);
- ``peak_fraction = (flops / seconds) / peak_flops_per_s``: the fraction of the
  machine's peak for the dtype, a large ``[n, n] @ [n, n]`` product on every
  usable core (:func:`machine_peak`, BLAS threads pinned with threadpoolctl),
  measured in the same run, before and after the dtype's rows (the best of the
  two, so one measurement taken while the machine was busy does not lower it);
  ``peak_one_core_fraction`` against the same product on one core (``None`` off the host);
- ``ceiling_fraction = (flops / seconds) / (workers * matmul_flops_per_s)`` (secondary):
  against the rate of a batched small product of the chunked forms' shape,
  ``[b, C, d] @ [b, d, d]`` (:func:`matmul_rate`, same run, backend and dtype), on
  as many cores as the row's workers used (all usable cores for a Dask row). On the
  host ``b = min(B H N, SMALL_BATCH)``, the products a form's block of chunks
  makes at a time, which stay in cache (``N = ceil(T / C)``); off the host
  ``b = B H N``, one call over every chunk as a GPU runs it;
- ``workers``: the number of processes the form used (:mod:`refmem.parallel`):
  1 for one plain call in this process, ``N > 1`` for this process and ``N - 1``
  pool processes, each computing groups of (batch, head) slices with BLAS on
  one thread; ``--workers N`` asks for ``N``, the default follows refmem's rule
  (the pool on every core when ``B H`` is at least the number of cores and the
  problem is big enough). ``None`` ("dask" in the table) with ``--scheduler``;
- ``peak_extra_bytes``: the peak memory allocated during one extra (untimed)
  call above what was allocated before it, outputs included. On ``numpy``
  and ``array_api_strict`` it is measured with :mod:`tracemalloc`, which
  NumPy reports its data buffers to. A backend may provide an extra
  ``peak_bytes(fn) -> int`` (:func:`refmem.backends.extra`); otherwise the field
  is ``None`` and ``memory_method`` says "not measured". ``peak_extra_per_BHTd``
  divides it by ``B H T d x itemsize``: a form that kept the state of every step
  would need about ``d`` of those; an O(B H T d) form needs a constant.

GPU timing: every timed call is followed by the backend's ``synchronize`` extra
(a no-op where absent). Finiteness/range checks of the inputs are switched
off while timing (``refmem.options(check_finite=False)``: the inputs are valid
by construction) so that the rows time the computation, not the validation.
BLAS threads are whatever the environment gives (``OPENBLAS_NUM_THREADS`` ...)
unless ``--threads N`` is given (the benchmark then runs in a child process
started with ``OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = N``);
each row records the setting. The chunked forms' products are small
(``C x d`` by ``d x d``): on a busy 2-core machine two BLAS threads per product
can be many times slower than one.
"""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc

from . import backends
from .memories import MEMORIES
from .parallel import workers_used
from .validation import options

FORMS = ("recurrent", "chunked", "minibatch")

# Rows beyond the memory table's own names: a memory run on other inputs (bench name -> (memory, make_inputs
# keywords)). Per-channel gates take their own path in the chunked forms (a decay per key channel for GLA, one
# triangular system per value channel for Longhorn), so they get their own rows.
VARIANTS = {
    "gated_linear_attention/per_channel": ("gated_linear_attention", {"per_channel": True}),
    "longhorn/per_channel": ("longhorn", {"per_channel": True}),
}


def bench_names() -> list[str]:
    """Every name ``refmem bench`` takes: the memories with a chunked form and :data:`VARIANTS`, sorted."""
    return sorted([n for n, s in MEMORIES.items() if s.chunked is not None] + list(VARIANTS))


def _memory_and_inputs(name: str):
    """``(spec, make_inputs keywords)`` of a bench name (a memory of the table or a :data:`VARIANTS` entry)."""
    memory, keywords = VARIANTS.get(name, (name, {}))
    return MEMORIES[memory], keywords


def tril_product_flops(C: int, m: int, *, strict: bool = False) -> int:
    """Useful FLOPs of ``tril(X) @ Y`` for ``X [C, C]``, ``Y [C, m]`` (or of forming that triangle of ``A B^T`` with an inner size ``m``).

    Only the entries on and below the diagonal (strictly below when ``strict``)
    are counted: ``C (C + 1) / 2`` (``C (C - 1) / 2``) multiply-adds per column, 2 FLOPs each.
    """
    entries = C * (C - 1) // 2 if strict else C * (C + 1) // 2
    return 2 * entries * m


def titans_chunk_flops(C: int, d: int, form: str) -> int:
    """Useful FLOPs of one chunked Titans chunk of ``C`` steps, ``d_k = d_v = d`` (:func:`form_flops`, Notes)."""
    gates = 2 * ((C - 1) * C * (C + 1) // 6) + C * (C + 1)  # D^a strict(D^eta): t - s terms per t > s; D^a gamma^eta
    outputs = 2 * tril_product_flops(C, d) + (8 if form == "chunked" else 6) * C * d * d + 4 * C * d * d
    if form != "chunked":
        return gates + outputs
    return gates + outputs + tril_product_flops(C, d, strict=True) + tril_product_flops(C, 3 * d, strict=True)


def form_flops(name: str, form: str, B: int, H: int, T: int, d: int, C: int) -> float:
    r"""Useful FLOPs of one call: the matrix products, structural zeros not counted (multiply-add = 2).

    Notes
    -----
    A product whose result (or whose left factor) is causally masked counts only its
    triangle (:func:`tril_product_flops`): ``tril(Q K^T)`` is ``C (C + 1) d``,
    not ``2 C^2 d``. Elementwise gate algebra is not counted. The count never
    exceeds the multiply-adds the implementation performs (a lower bound
    where a term is uncertain), so ``flops / seconds`` can never exceed what the
    hardware did. Per head, with ``N = ceil(T / C)`` chunks (``d_k = d_v = d``):

    - recurrent: per step, one read ``M q`` (``2 d^2``) plus the update: linear
      attention ``2 d^2``; GLA ``3 d^2``; delta / Longhorn ``4 d^2`` (``M k`` and the
      rank-one write); gated delta ``5 d^2`` (and ``a M``); Titans ``8 d^2``;
      Mesa an LU solve of ``d x d`` with ``d`` right-hand sides (``8/3 d^3``) and
      ``4 d^2`` of statistics.
    - chunked linear attention family: ``tril(Q K^T)`` and ``P V`` (each
      ``C (C + 1) d``), ``V^T K~`` and ``Q M^T`` (``2 C d^2`` each).
    - chunked delta family (UT form): ``tril(Q K^T)`` ``C (C + 1) d``, strict
      ``tril(K K^T)`` ``C (C - 1) d``, the unit triangular solve with ``2 d``
      right-hand sides ``2 d C (C - 1)``, ``P U`` ``C (C + 1) d``; ``W M^T``,
      ``U^T K~``, ``Q M^T`` (``6 C d^2``): ``(5 C^2 - C) d + 6 C d^2`` per chunk.
      Mini-batch: no ``K K^T`` and no solve, ``2 C (C + 1) d + 6 C d^2``.
    - chunked Titans (pair state ``[M, S]``, ``d x 2d``; :func:`titans_chunk_flops`):
      the gate products ``D^a strict(D^eta)`` (two triangles: ``(C - 1) C (C + 1) / 3``)
      and ``D^a gamma^eta`` (``C (C + 1)``), ``tril(Q K^T)`` and ``P U``
      (``C (C + 1) d`` each), ``[W; Q_g] X^T`` (``8 C d^2``) and ``U^T K~``
      (``4 C d^2``); the exact form adds strict ``tril(K K^T)`` ``C (C - 1) d``
      and the unit triangular solve with ``3 d`` right-hand sides ``3 d C (C - 1)``;
      the mini-batch form multiplies only ``M`` by ``W`` (``[C, d] @ [d, d]``,
      ``2 C d^2`` instead of ``4 C d^2``). The last chunk has ``T mod C`` steps
      when ``C`` does not divide ``T`` (Titans does not pad).
    - chunked Mesa: per chunk the statistics ``K^T K``, ``V^T K`` (``4 C d^2``),
      the outputs ``Y G^T`` and ``tril(Y K^T) V`` (``2 C d^2 + 2 C (C + 1) d``),
      and ONE conjugate-gradient iteration (``2 C d^2 + 2 C (C + 1) d``), plus one
      iteration of the final state's solve (``2 d^3``): a lower bound, since CG
      takes between 1 and about ``d`` iterations depending on the data.
    """
    if name in VARIANTS:
        return _variant_flops(name, form, B, H, T, d, C)
    heads = B * H
    N = max(1, math.ceil(T / C))
    delta_family = {"delta_rule", "gated_delta_rule", "longhorn"}
    if form == "recurrent":
        per_step = {"linear_attention": 4, "gated_linear_attention": 5, "delta_rule": 6, "longhorn": 6,
                    "gated_delta_rule": 7, "titans": 10}
        if name == "mesa":
            return heads * T * (8 / 3 * d**3 + 6 * d**2)
        return heads * T * per_step.get(name, 6) * d**2
    dense = 2 * C * d * d  # one [C, d] @ [d, d] product
    if name in ("linear_attention", "gated_linear_attention"):
        per_chunk = 2 * tril_product_flops(C, d) + 2 * dense
    elif name in delta_family:
        per_chunk = 2 * tril_product_flops(C, d) + 3 * dense
        if form == "chunked":
            per_chunk += tril_product_flops(C, d, strict=True) + tril_product_flops(C, 2 * d, strict=True)
    elif name == "titans":
        full, rest = divmod(T, C)
        return heads * (full * titans_chunk_flops(C, d, form) + (titans_chunk_flops(rest, d, form) if rest else 0))
    elif name == "mesa":
        per_chunk = 4 * dense + 4 * tril_product_flops(C, d)
        return heads * (N * per_chunk + 2 * d**3)
    else:
        per_chunk = 2 * tril_product_flops(C, d, strict=True) + 2 * dense
    return heads * N * per_chunk


def _variant_flops(name: str, form: str, B: int, H: int, T: int, d: int, C: int) -> float:
    r"""Useful FLOPs of a :data:`VARIANTS` row (per-channel gates), in :func:`form_flops`' model.

    Notes
    -----
    - ``gated_linear_attention/per_channel``: the model of scalar GLA. Recurrent:
      ``M diag(a_t)`` costs the same ``d^2`` as ``a_t M``. Chunked: the scores
      :math:`S_{ts} = \sum_c q_{tc} k_{sc} D^{(c)}_{ts}` are counted as the
      triangle ``tril(Q K^T)`` (``C (C + 1) d`` multiply-adds; the decay factors
      are gate algebra, not counted), then ``S V``, ``V^T (K \odot D_C)`` and
      ``(\gamma \odot Q) M_0^T`` as for the scalar gate.
    - ``longhorn/per_channel``: recurrent as scalar Longhorn (the step size
      scales a vector). Chunked, per chunk: ``tril(Q K^T)`` and strict
      ``tril(K K^T)``, ``[Q; K] M_0^T`` (``4 C d^2``), ``d_v`` unit triangular
      solves with ONE right-hand side each (``C (C - 1) d`` in all, where the
      scalar UT form solves once with ``2 d`` right-hand sides), ``U^T K``
      (``2 C d^2``) and ``tril(Q K^T) U`` (``C (C + 1) d``): the scalar count
      less ``C (C - 1) d``. Forming ``diag(e_i) K K^T`` per channel is gate
      algebra, not counted.
    """
    memory, _ = VARIANTS[name]
    flops = form_flops(memory, form, B, H, T, d, C)
    if memory == "longhorn" and form == "chunked":
        flops -= B * H * max(1, math.ceil(T / C)) * tril_product_flops(C, d, strict=True)
    return flops


# Peak memory of one call, per head, in array elements (the largest over every form and memory), from
# tracemalloc measurements of every form at d in {16, 48}, C in {16, 64} (at most 56 T d, 2 T C, 10 N d^2
# and 4 d^2 in the worst form: chunked Titans), each coefficient doubled or more for what was not measured.
_PEAK_PER_TD, _PEAK_PER_TC, _PEAK_PER_ND2, _PEAK_PER_D2 = 128, 8, 32, 16


def estimate_peak_bytes(batch: int, seq_len: int, heads: int, dim: int, chunk: int) -> int:
    """An upper estimate of the memory ``refmem bench`` needs at these sizes (bytes, float64).

    Notes
    -----
    Per head (``N = ceil(T / C)`` chunks): the inputs and outputs (``q, k, v``,
    gates, ``o``: at most ``8 T d``) and the peak of one call, the largest over
    the forms: ``128 T d + 8 T C + 32 N d^2 + 16 d^2`` elements (the chunked
    forms hold ``C x C`` blocks per chunk and a ``d x d`` state per chunk;
    Titans a pair of them); plus the matrix-product ceiling's operands
    ``[B H N, C, d]`` and ``[B H N, d, d]``. Measured peaks (``/BHTd`` column)
    stay below half of this.
    """
    B, T, H, d, C = (int(x) for x in (batch, seq_len, heads, dim, chunk))
    N = math.ceil(T / C)
    per_head = (8 + _PEAK_PER_TD) * T * d + _PEAK_PER_TC * T * C + _PEAK_PER_ND2 * N * d * d + _PEAK_PER_D2 * d * d
    ceiling_operands = N * C * d + N * d * d
    return 8 * B * H * (per_head + ceiling_operands)


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate: ``MemAvailable`` of ``/proc/meminfo``, else physical memory; None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _sync(xp):
    fn = backends.extra(xp, "synchronize")
    if fn is not None:
        fn()


def best_time(fn, xp, repeat: int) -> float:
    """The best wall time of ``repeat`` calls of ``fn()`` (at least one) after one untimed warm-up, each followed by
    the backend's ``synchronize`` extra (a no-op where absent): how every figure of the bench is timed."""
    fn()  # warm-up (allocator, BLAS threads, caches)
    _sync(xp)
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        best = min(best, time.perf_counter() - t0)
    return best


SMALL_BATCH = 32  # products per call of the small-product rate on the host: 8 chunks of a pool task's 4 slices


def matmul_rate(xp, dtype, batch: int, C: int, d: int, repeat: int) -> float:
    """FLOP/s of ``[batch, C, d] @ [batch, d, d]`` on ``xp`` (best of ``repeat``): the small-product rate (secondary column)."""
    import numpy as np  # randomness only

    g = np.random.default_rng(0)
    A = xp.asarray(np.asarray(g.standard_normal((batch, C, d)), dtype=dtype))
    Bm = xp.asarray(np.asarray(g.standard_normal((batch, d, d)), dtype=dtype))
    seconds = best_time(lambda: A @ Bm, xp, max(3, repeat))
    return 2.0 * batch * C * d * d / seconds


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_peak(xp, dtype, n: int, repeat: int, *, threads: int | None) -> float:
    """FLOP/s of one large ``[n, n] @ [n, n]`` product (``2 n^3`` FLOPs, best of ``repeat``): the machine's peak.

    ``threads``: BLAS threads during the product (pinned with :mod:`threadpoolctl`;
    ``None`` leaves them as they are, e.g. on a GPU backend). The all-core peak
    uses every usable core, the one-core peak a single thread.
    """
    import numpy as np  # randomness only
    from threadpoolctl import threadpool_limits

    g = np.random.default_rng(1)
    A = xp.asarray(np.asarray(g.standard_normal((n, n)), dtype=dtype))
    Bm = xp.asarray(np.asarray(g.standard_normal((n, n)), dtype=dtype))
    if threads is None:
        seconds = best_time(lambda: A @ Bm, xp, max(3, repeat))
    else:
        with threadpool_limits(limits=threads, user_api="blas"):
            seconds = best_time(lambda: A @ Bm, xp, max(3, repeat))
    return 2.0 * n**3 / seconds


def peak_extra_bytes(fn, xp, backend_name: str):
    """``(bytes, method)``: peak memory allocated by ``fn()`` above what was allocated before it."""
    custom = backends.extra(xp, "peak_bytes")
    if custom is not None:
        return int(custom(fn)), "backend peak_bytes extra"
    if backend_name not in ("numpy", "array_api_strict"):
        return None, "not measured (no tracemalloc view of this backend's memory)"
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
        del out
    finally:
        if started:
            tracemalloc.stop()
    return int(peak - before), "tracemalloc"


def _threads() -> str:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            return f"{var}={os.environ[var]}"
    return f"default ({os.cpu_count()} cpus)"


def run_bench(memories=None, *, batch=1, seq_len=1024, heads=4, dim=64, chunk=64, dtypes=("float64", "float32"),
              backend="numpy", repeat=3, forms=FORMS, seed=0, progress=None, peak_size=2048,
              client=None, workers=None) -> list[dict]:
    """Benchmark rows (module docstring) for ``memories`` (default: :func:`bench_names`, every memory with a
    chunked form and the per-channel :data:`VARIANTS`).

    ``progress``: called with each row when it is done. ``workers``: passed to
    every form (``None``: refmem's default rule, :mod:`refmem.parallel`); each
    row's ``workers`` is the number of processes the form used. ``client``: a
    :class:`dask.distributed.Client`; every form then runs as one task per
    (batch, head) slice on its cluster (:func:`refmem.distributed.heads_on_cluster`,
    transfers included in the time) and the peak memory is not measured (it is
    spent on the workers).
    """
    if client is not None:
        from .distributed import check_client, heads_on_cluster

        check_client(client)
    known = bench_names()
    if not memories:
        memories = known
    unknown = [m for m in memories if m not in known]
    if unknown:
        raise ValueError(f"unknown memory {unknown}; known: {', '.join(known)}")
    for n, v in (("batch", batch), ("seq_len", seq_len), ("heads", heads), ("dim", dim), ("chunk", chunk),
                 ("repeat", repeat), ("peak_size", peak_size)):
        if int(v) < 1:
            raise ValueError(f"{n} must be >= 1; got {v}")
    if workers is not None:
        from .pool import check_workers

        workers = check_workers(workers)
    B, T, H, d, C = int(batch), int(seq_len), int(heads), int(dim), int(chunk)
    rows = []
    xp = backends.get_backend(backend).namespace()
    for dtype in dtypes:
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32; got {dtype!r}")
        N = max(1, math.ceil(T / C))
        host = backend in ("numpy", "array_api_strict")
        ceiling = matmul_rate(xp, dtype, min(B * H * N, SMALL_BATCH) if host else B * H * N, C, d, repeat)
        peak_all = machine_peak(xp, dtype, int(peak_size), repeat, threads=usable_cores() if host else None)
        peak_one = machine_peak(xp, dtype, int(peak_size), repeat, threads=1) if host else None
        first_row = len(rows)
        for name in memories:
            spec, keywords = _memory_and_inputs(name)
            inputs = spec.make_inputs(seed, (B, H), T, d, d, xp, dtype, **keywords)
            base_rate = None
            for form in forms:
                fn = spec.recurrent if form == "recurrent" else getattr(spec, form)
                if fn is None:
                    continue
                kw = {} if form == "recurrent" else {"chunk_size": C}
                if client is None:
                    kw = kw if workers is None else dict(kw, workers=workers)
                    call = lambda fn=fn, kw=kw: fn(**inputs, **kw)  # noqa: E731
                    used = workers_used(inputs, workers)
                else:
                    call = lambda fn=fn, kw=kw: heads_on_cluster(fn, client=client, **inputs, **kw)  # noqa: E731
                    used = None  # the cluster's workers
                with options(check_finite=False):
                    seconds = best_time(call, xp, repeat)
                    if client is None:
                        extra_bytes, method = peak_extra_bytes(call, xp, backend)
                    else:
                        extra_bytes, method = None, "not measured (spent on the Dask cluster's workers)"
                rate = B * H * T / seconds
                flops = form_flops(name, form, B, H, T, d, C)
                itemsize = 8 if dtype == "float64" else 4
                row = {
                    "memory": name, "form": form, "dtype": dtype, "backend": backend,
                    "B": B, "T": T, "H": H, "d": d, "C": C if form != "recurrent" else None,
                    "seconds": seconds, "head_tokens_per_s": rate,
                    "flops": flops, "flops_per_s": flops / seconds,
                    "peak_flops_per_s": peak_all, "peak_fraction": flops / seconds / peak_all,
                    "peak_one_core_flops_per_s": peak_one,
                    "peak_one_core_fraction": None if peak_one is None else flops / seconds / peak_one,
                    "peak_size": int(peak_size),
                    "matmul_flops_per_s": ceiling,
                    "ceiling_fraction": flops / seconds / (ceiling * (usable_cores() if used is None else used)),
                    "peak_extra_bytes": extra_bytes,
                    "peak_extra_per_BHTd": None if extra_bytes is None else extra_bytes / (B * H * T * d * itemsize),
                    "memory_method": method,
                    "speedup_vs_recurrent": None,
                    "threads": _threads(),
                    "workers": used,
                    "scheduler": None if client is None else client.scheduler.address,
                }
                if form == "recurrent":
                    base_rate = rate
                elif base_rate is not None:
                    row["speedup_vs_recurrent"] = rate / base_rate
                rows.append(row)
                if progress is not None:
                    progress(row)
        again_all = machine_peak(xp, dtype, int(peak_size), repeat, threads=usable_cores() if host else None)
        again_one = machine_peak(xp, dtype, int(peak_size), repeat, threads=1) if host else None
        _best_peak(rows[first_row:], again_all, again_one)
    return rows


def _best_peak(rows: list[dict], peak_all: float, peak_one: float | None) -> None:
    """Each row's peaks become the best of the measurements before and after the rows (``peak_one=None``: off the host).

    A peak measured while another process held the cores is too low; the best
    of two measurements (before and after a dtype's rows) is the machine's peak
    whenever either ran undisturbed, so a row cannot pass 100% for that reason.
    """
    for row in rows:
        row["peak_flops_per_s"] = max(row["peak_flops_per_s"], peak_all)
        row["peak_fraction"] = row["flops_per_s"] / row["peak_flops_per_s"]
        if peak_one is not None and row["peak_one_core_flops_per_s"] is not None:
            row["peak_one_core_flops_per_s"] = max(row["peak_one_core_flops_per_s"], peak_one)
            row["peak_one_core_fraction"] = row["flops_per_s"] / row["peak_one_core_flops_per_s"]


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    head = ("memory", "form", "dtype", "B", "T", "H", "d", "C", "workers", "head-tok/s", "x recur", "GFLOP/s", "% peak",
            "% 1-core", "% small", "peak extra", "/BHTd")
    body = []
    for r in rows:
        extra = "-" if r["peak_extra_bytes"] is None else _bytes(r["peak_extra_bytes"])
        per = "-" if r["peak_extra_per_BHTd"] is None else f"{r['peak_extra_per_BHTd']:.1f}"
        body.append((r["memory"], r["form"], r["dtype"], str(r["B"]), str(r["T"]), str(r["H"]), str(r["d"]),
                     "-" if r["C"] is None else str(r["C"]), "dask" if r.get("workers") is None else str(r["workers"]),
                     f"{r['head_tokens_per_s']:.3g}",
                     "-" if r["speedup_vs_recurrent"] is None else f"{r['speedup_vs_recurrent']:.2f}",
                     f"{r['flops_per_s'] / 1e9:.2f}", f"{100 * r['peak_fraction']:.1f}%",
                     "-" if r["peak_one_core_fraction"] is None else f"{100 * r['peak_one_core_fraction']:.1f}%",
                     f"{100 * r['ceiling_fraction']:.1f}%", extra, per))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body]
    if rows:
        n = rows[0]["peak_size"]
        peaks = sorted({(r["dtype"], r["peak_flops_per_s"], r["peak_one_core_flops_per_s"]) for r in rows})
        out.append(f"machine peak ([{n}, {n}] @ [{n}, {n}], same run; all {usable_cores()} cores / 1 core): "
                   + ", ".join(f"{dt} {a / 1e9:.2f} / " + ("-" if o is None else f"{o / 1e9:.2f}") + " GFLOP/s"
                               for dt, a, o in peaks))
        ceilings = sorted({(r["dtype"], r["matmul_flops_per_s"]) for r in rows})
        batch = f"min(B H N, {SMALL_BATCH})" if rows[0]["backend"] in ("numpy", "array_api_strict") else "B H N"
        out.append(f"small products ([b, C, d] @ [b, d, d], b = {batch}, one core per worker, same run): "
                   + ", ".join(f"{dt} {rate / 1e9:.2f} GFLOP/s" for dt, rate in ceilings)
                   + f"; backend {rows[0]['backend']}; BLAS threads {rows[0]['threads']}; "
                   + f"memory: {rows[0]['memory_method']}")
        if rows[0].get("scheduler"):
            out.append(f"every form ran as one Dask task per (batch, head) slice on the cluster at "
                       f"{rows[0]['scheduler']} (transfers included)")
    return "\n".join(out)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _rerun_with_threads(args) -> int:
    """Run this benchmark in a child process whose BLAS libraries start with ``args.threads`` threads.

    BLAS reads its thread count when it is loaded, so the only portable way to
    change it is a fresh process with the environment set.
    """
    import subprocess
    import sys

    env = dict(os.environ, **{var: str(args.threads) for var in THREAD_VARS})
    argv = [sys.executable, "-m", "refmem", "bench", "--batch", str(args.batch), "--seq-len", str(args.seq_len),
            "--heads", str(args.heads), "--dim", str(args.dim), "--chunk", str(args.chunk),
            "--backend", args.backend, "--repeat", str(args.repeat),
            "--peak-size", str(getattr(args, "peak_size", 2048))]
    for m in args.memory or []:
        argv += ["--memory", m]
    for dt in args.dtype or []:
        argv += ["--dtype", dt]
    if args.json:
        argv += ["--json", args.json]
    if getattr(args, "workers", None) is not None:
        argv += ["--workers", str(args.workers)]
    if getattr(args, "scheduler", None):
        argv += ["--scheduler", args.scheduler]
    return subprocess.run(argv, env=env, check=False).returncode


def needs_threads_rerun(args) -> bool:
    """Whether ``--threads N`` asks for BLAS threads this process did not start with (then :func:`main` re-runs itself)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return False
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    return any(os.environ.get(var) != str(threads) for var in THREAD_VARS)


def count_rows(memories, dtypes, forms=FORMS) -> int:
    """How many rows :func:`run_bench` will print (for the progress bar)."""
    specs = [_memory_and_inputs(n)[0] for n in memories or bench_names()]
    per_dtype = sum(1 for spec in specs for f in forms
                    if (spec.recurrent if f == "recurrent" else getattr(spec, f)) is not None)
    return per_dtype * len(dtypes)


def main(args, client=None) -> int:
    from .progress import progress_bar

    if needs_threads_rerun(args):
        return _rerun_with_threads(args)
    dtypes = []
    for dt in args.dtype or ["all"]:
        dtypes.extend(["float64", "float32"] if dt == "all" else [dt])
    dtypes = tuple(dict.fromkeys(dtypes))
    with progress_bar(count_rows(args.memory, dtypes), "bench") as bar:
        rows = run_bench(args.memory, batch=args.batch, seq_len=args.seq_len, heads=args.heads, dim=args.dim,
                         chunk=args.chunk, dtypes=dtypes, backend=args.backend, repeat=args.repeat,
                         peak_size=getattr(args, "peak_size", 2048), client=client,
                         workers=getattr(args, "workers", None),
                         progress=lambda row: bar.update(1))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0
