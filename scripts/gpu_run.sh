#!/usr/bin/env bash
# GPU runs of refmem on a CUDA machine with CuPy preinstalled (the lent H200 machine), from the repository root.
#
#   bash scripts/gpu_run.sh STAGE...      STAGE in: env test cupy-tests verify bench bench-cpu all
#
# env        machine, driver, CuPy, `refmem backends`
# test       the whole test suite, cupy enabled (HYPOTHESIS_PROFILE=ci), `pytest -rs`
# cupy-tests only tests/test_cupy.py
# verify     `refmem verify --backend cupy` (table + JSON)
# bench      `refmem bench --backend cupy`: gated_delta_rule and linear_attention, recurrent and
#            chunked, B=8 T=8192 H=16 d=128 C=64, float32 and float64 (ceiling: the same run's matmul rate)
# bench-cpu  the same float64 problem with NumPy on this machine's CPU (for the GPU/CPU ratio)
# all        every stage above, in that order (may exceed one 10-minute device command: split it)
#
# Needs: the wheels of array-api-compat and array-api-strict in .whl/ (carry ".whl"), since the
# machine has no registry access. refmem itself is not pip-installed: the repository goes on
# PYTHONPATH, and a dist-info with the entry points of pyproject.toml is written to /tmp/site so
# `refmem.backends` discovers numpy, array_api_strict and cupy. Outputs go to $OUT (or ./out), at most
# 8 files: env.txt, test_all.txt (or test_cupy.txt), agreement.jsonl, verify_cupy.txt, verify_cupy.json,
# bench.txt (both bench stages append), bench_cupy.json, bench_numpy.json.
#
# Timings measured on the H200 machine (2026-11-25): machine start ~30 s; tests/test_cupy.py 33 s;
# refmem verify --backend cupy ~15 s; the whole suite serially 476 s (hence xdist below).
# Suggested final runs (each one device command):
#   run(command="bash scripts/gpu_run.sh env test verify", carry=[".whl"], timeout_s=600)
#   run(command="bash scripts/gpu_run.sh bench", carry=[".whl"], timeout_s=600)
#   run(command="bash scripts/gpu_run.sh bench-cpu", carry=[".whl"], timeout_s=600)
# bench-cpu is the long one (estimate, not measured: the recurrent NumPy scans stream a 16 MB float64
# state per step, ~10 ms a step, ~80 s a call, three calls per row with warm-up and memory pass).
#
# Example for the device tool:  run(command="bash scripts/gpu_run.sh env test verify", carry=[".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=ci

setup() {
    [ -n "${REFMEM_GPU_SETUP_DONE:-}" ] && return 0
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "wheel install failed"; return 1; }
    fi
    # entry points without an install: a dist-info generated from pyproject.toml
    $PY - <<'EOF' || return 1
import pathlib, tomllib
proj = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
d = pathlib.Path("/tmp/site") / f"refmem-{proj['version']}.dist-info"
d.mkdir(parents=True, exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: refmem\nVersion: {proj['version']}\n")
lines = []
for group, eps in proj.get("entry-points", {}).items():
    lines.append(f"[{group}]")
    lines += [f"{k} = {v}" for k, v in eps.items()]
    lines.append("")
scripts = proj.get("scripts", {})
if scripts:
    lines.append("[console_scripts]")
    lines += [f"{k} = {v}" for k, v in scripts.items()]
(d / "entry_points.txt").write_text("\n".join(lines) + "\n")
(d / "top_level.txt").write_text("refmem\nrefmem_cupy\n")
EOF
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export REFMEM_GPU_SETUP_DONE=1
}

stage_env() {
    {
        date -u; uname -a; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
        nproc; $PY --version
        $PY -c "import cupy, numpy, scipy, array_api_compat, array_api_strict, hypothesis, pytest; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'array_api_compat', array_api_compat.__version__, 'array_api_strict', array_api_strict.__version__, 'hypothesis', hypothesis.__version__, 'pytest', pytest.__version__)"
        $PY -c "import cupy, cupyx; print('CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion(), 'allow_synchronize', hasattr(cupyx, 'allow_synchronize'))"
        $PY -m refmem backends
    } 2>&1 | tee "$OUT/env.txt"
}

# pytest-xdist (in the machine's image) spreads the suite over the CPU cores: serially the whole
# suite took 476 s on the H200 machine (2026-11-25), too close to the 10-minute command limit.
# Set PYTEST_WORKERS=0 to run serially. Each worker holds its own CUDA context (~0.5 GB of GPU memory).
xdist_args() {
    local n=${PYTEST_WORKERS:-8}
    if [ "$n" != 0 ] && $PY -c "import xdist" 2>/dev/null; then echo "-n $n"; fi
}

# Agreement errors of tests/test_cupy.py (one JSON line per compared case) go to $OUT/agreement.jsonl.
# The suite's matrices are tiny: one BLAS thread per test process (16 threads on tiny products only
# add overhead; the same suite took 197 s serially on a 2-core CPU machine against 476 s there).
# (set per command, not exported, so that bench-cpu later in the same call keeps every core)
ONE_BLAS_THREAD=(env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)

stage_test() {
    rm -f "$OUT/agreement.jsonl"
    "${ONE_BLAS_THREAD[@]}" REFMEM_AGREEMENT_LOG="$OUT/agreement.jsonl" $PY -m pytest -q -rs -p no:cacheprovider $(xdist_args) 2>&1 \
        | tee "$OUT/test_all.txt"
}

stage_cupy_tests() {
    rm -f "$OUT/agreement.jsonl"
    "${ONE_BLAS_THREAD[@]}" REFMEM_AGREEMENT_LOG="$OUT/agreement.jsonl" $PY -m pytest -q -rs -p no:cacheprovider $(xdist_args) \
        tests/test_cupy.py 2>&1 | tee "$OUT/test_cupy.txt"
}

stage_verify() {
    $PY -m refmem verify --backend cupy --json "$OUT/verify_cupy.json" 2>&1 | tee "$OUT/verify_cupy.txt"
}

BENCH_ARGS=(--memory gated_delta_rule --memory linear_attention --batch 8 --seq-len 8192 --heads 16 --dim 128 --chunk 64)

stage_bench() {
    $PY -m refmem bench "${BENCH_ARGS[@]}" --dtype float32 --dtype float64 --backend cupy \
        --json "$OUT/bench_cupy.json" 2>&1 | tee -a "$OUT/bench.txt"
}

stage_bench_cpu() {
    # BENCH_CPU_MEMORIES="gated_delta_rule" limits the (slow) CPU run to some memories
    local args=("${BENCH_ARGS[@]}")
    if [ -n "${BENCH_CPU_MEMORIES:-}" ]; then
        args=(); for m in $BENCH_CPU_MEMORIES; do args+=(--memory "$m"); done
        args+=("${BENCH_ARGS[@]:4}")
    fi
    $PY -m refmem bench "${args[@]}" --dtype float64 --backend numpy --repeat 1 \
        --json "$OUT/bench_numpy.json" 2>&1 | tee -a "$OUT/bench.txt"
}

setup || exit 1
[ $# -eq 0 ] && set -- all
status=0
for s in "$@"; do
    case "$s" in
        all) for t in env test verify bench bench_cpu; do echo "== $t"; "stage_$t" || status=1; done ;;
        env|test|verify|bench) echo "== $s"; "stage_$s" || status=1 ;;
        cupy-tests) echo "== $s"; stage_cupy_tests || status=1 ;;
        bench-cpu) echo "== $s"; stage_bench_cpu || status=1 ;;
        *) echo "unknown stage $s"; exit 2 ;;
    esac
done
exit $status
