"""The Dask overhead: the chunked gated delta rule (B=2 T=4096 H=8 d=64 C=64 float64) on the in-process pool
(refmem.parallel.heads_in_parallel, 2 worker processes) and on a two-worker LocalCluster (refmem.distributed,
2 single-threaded worker processes), BLAS pinned to one thread per worker in both; prints both times (best of
--repeat after a warm-up call), their ratio, and whether the outputs are bitwise equal. Run on an idle machine:
    .venv/bin/python scripts/dask_overhead.py [--repeat 3] [--seq-len 4096]
"""

import argparse
import time

import numpy as np

from refmem import bench


def best_time(fn, repeat):
    return bench.best_time(fn, np, repeat)  # after a warm-up: imports on the workers, allocator, BLAS


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=4096)
    args = p.parse_args()

    from distributed import Client, LocalCluster

    from refmem.distributed import heads_on_cluster
    from refmem.memories import MEMORIES
    from refmem.parallel import heads_in_parallel
    from refmem.validation import options

    B, T, H, d, C = 2, args.seq_len, 8, 64, 64
    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(0, (B, H), T, d, d, np, "float64")
    with options(check_finite=False):
        pool_s = best_time(lambda: heads_in_parallel(spec.chunked, workers=2, **inputs, chunk_size=C), args.repeat)
        pooled = heads_in_parallel(spec.chunked, workers=2, **inputs, chunk_size=C)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster, set_as_default=False)
    start_s = time.perf_counter() - t0
    try:
        with options(check_finite=False):
            dask_s = best_time(lambda: heads_on_cluster(spec.chunked, client=client, **inputs, chunk_size=C),
                               args.repeat)
        remote = heads_on_cluster(spec.chunked, client=client, **inputs, chunk_size=C)
    finally:
        client.close()
        cluster.close()
    same = all(np.array_equal(a, b) for a, b in zip(pooled, remote))
    print(f"chunked gated delta rule B={B} T={T} H={H} d={d} C={C} float64, {B * H} slices, best of {args.repeat}")
    print(f"in-process pool, 2 worker processes:         {pool_s:.3f} s")
    print(f"LocalCluster, 2 worker processes (1 thread): {dask_s:.3f} s  (cluster start {start_s:.1f} s, not counted)")
    print(f"Dask / in-process: {dask_s / pool_s:.2f}x; outputs bitwise equal: {same}")


if __name__ == "__main__":
    main()
