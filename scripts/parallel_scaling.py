"""Workers 1 -> 2 (refmem's process pool) for the chunked and the recurrent form of one memory.

Run from the repository root (a benchmark: needs an idle machine for the wall-clock figures):

    .venv/bin/python scripts/parallel_scaling.py [--memory gated_delta_rule] [--seq-len 4096] [--repeat 10]

Shape B=2, H=8, d=64, C=64, float64 (the issue's target problem). The three calls are timed in
turn, ``--repeat`` rounds (a virtual machine whose speed drifts by tens of percent over a minute
then slows all three alike, not the last one timed). For each form it prints
the best wall time of the plain one-process call (``refmem.options(workers=1)``, BLAS on one
thread), of ``workers=1`` (the same batch/head slices in this process) and of ``workers=2``
(two worker processes), the 1 -> 2 speed-up (``workers=1`` against ``workers=2``: the same tasks), the
plain -> 2 speed-up (the plain call against ``workers=2``: what switching the pool on gains), the
1 -> 2 speed-up of the median times too, and the CPU seconds of the caller and of the
workers. On a loaded machine the wall clock cannot show a speed-up, but the CPU seconds still
show the pool's overhead: ``cpu(2) / cpu(1)`` near 1 means two idle cores would give close to
``2 / (cpu(2) / cpu(1))``; "CPU-bound bound" is the plain call's CPU seconds over the larger of the
caller's and the workers' CPU seconds with two workers: what two idle cores could give at most if
nothing but CPU time counted (an estimate from CPU seconds, not a measured wall time). The load average is printed before and after.
"""

import argparse
import os
import time

import numpy as np

import refmem
import refmem.parallel as parallel
from refmem.memories import MEMORIES


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers_cpu() -> float:
    executor = parallel._POOL["executor"]
    return 0.0 if executor is None else sum(_process_cpu(p) for p in list(executor._processes))


def _sample(call):
    """``(wall, caller cpu, workers cpu)`` seconds of one call."""
    c0, w0, t0 = time.process_time(), _workers_cpu(), time.perf_counter()
    call()
    return time.perf_counter() - t0, time.process_time() - c0, _workers_cpu() - w0


def _interleaved(calls: dict, repeat: int) -> dict:
    """Each call's samples, the calls taken in turn ``repeat`` times (after one untimed warm-up each): a machine
    whose speed drifts during the run slows every call alike instead of the ones timed last."""
    for call in calls.values():
        call()  # warm-up: the pool's processes start, caches fill
    samples = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            samples[name].append(_sample(call))
    return samples


def _best(samples: list):
    return min(samples, key=lambda s: s[0])


def _median(samples: list) -> float:
    walls = sorted(s[0] for s in samples)
    return walls[len(walls) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="gated_delta_rule")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    spec = MEMORIES[args.memory]
    inputs = spec.make_inputs(0, (2, 8), args.seq_len, 64, 64, np, "float64")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {parallel.usable_cores()} cores")
    for form in ("chunked", "recurrent"):
        fn = getattr(spec, form)
        kw = {} if form == "recurrent" else {"chunk_size": 64}
        with refmem.options(check_finite=False):
            def plain_call():
                with refmem.options(workers=1), parallel.pinned_blas():
                    fn(**inputs, **kw)

            samples = _interleaved({"plain": plain_call, "one": lambda: fn(**inputs, **kw, workers=1),
                                    "two": lambda: fn(**inputs, **kw, workers=2)}, args.repeat)
        plain, one, two = (_best(samples[name]) for name in ("plain", "one", "two"))
        print(f"{form:9s} plain {plain[0]:.3f} s | workers=1 {one[0]:.3f} s (cpu {one[1]:.3f}) | workers=2 {two[0]:.3f} s "
              f"(cpu caller {two[1]:.3f} + workers {two[2]:.3f}) | 1 -> 2 {one[0] / two[0]:.2f}x "
              f"(medians {_median(samples['one']) / _median(samples['two']):.2f}x) | "
              f"plain -> 2 {plain[0] / two[0]:.2f}x | cpu(2)/cpu(1) {(two[1] + two[2]) / one[1]:.2f} | "
              f"CPU-bound bound plain -> 2 {plain[1] / max(two[1], two[2]):.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    parallel.shutdown_pool()


if __name__ == "__main__":
    main()
