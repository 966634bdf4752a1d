#!/usr/bin/env bash
# The figures to compare on an IDLE machine (nothing else running): run from the repository root,
#   scripts/bench_report.sh [BASE_COMMIT]   (default 1d2d936: main before the process pool and the factored decays)
# 1. the bench table of BASE_COMMIT and of the working tree (one process, BLAS on one thread), same machine, same session;
# 2. the working tree's table with refmem's defaults (the process pool on every core for problems big enough);
# 3. every memory at the default sizes (and the per-channel variants), one process;
# 4. workers 1 -> 2 (refmem's process pool) for the chunked and the recurrent gated delta rule, wall and CPU seconds;
# 5. the chunk size study (C = 32, 64, 128: FLOP model, measured rate, the small-product bound);
# 6. the same problem on a two-worker Dask LocalCluster against the in-process pool: both times and the ratio;
# 7. fla's naive torch chunk reference against refmem, one thread each (FLA=PATH of an fla checkout, with torch and
#    einops installed; otherwise one line says what is missing);
# 8. the floor NumPy's own calls put on the chunked gated delta rule (each call timed alone, scripts/chunked_floor.py).
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
base=${1:-1d2d936}
sizes=(--memory gated_delta_rule --batch 2 --seq-len 4096 --heads 8 --dim 64 --chunk 64 --dtype float64 --repeat 5)
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
one_thread=(env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)

echo "== before: $(git rev-parse --short "$base") (one process, one BLAS thread)"
git worktree add --detach "$tmp/base" "$base" >/dev/null 2>&1
(cd "$tmp/base" && PYTHONPATH="$tmp/base" "$OLDPWD/$py" -m refmem bench "${sizes[@]}" --threads 1)
echo "== after: working tree, one process (refmem.options(workers=1)), one BLAS thread"
"${one_thread[@]}" "$py" - <<'PY'
import refmem
from refmem.bench import format_table, run_bench
with refmem.options(workers=1):
    rows = run_bench(["gated_delta_rule"], batch=2, seq_len=4096, heads=8, dim=64, chunk=64, dtypes=("float64",), repeat=5)
print(format_table(rows))
PY
echo "== after: working tree, refmem's defaults (B*H >= cores and B H T d^2 >= 2**27: the pool on every core;"
echo "   peak extra memory then counts the caller only, not the workers nor the shared blocks)"
"$py" -m refmem bench "${sizes[@]}" --threads 1
echo "== every memory, default sizes, one process, one BLAS thread"
"$py" -m refmem bench --dtype float64 --threads 1
echo "== workers 1 -> 2 (refmem's process pool), gated delta rule B=2 T=4096 H=8 d=64 C=64 float64"
"$py" scripts/parallel_scaling.py
echo "== chunk size C = 32, 64, 128 (one process, one BLAS thread)"
"${one_thread[@]}" "$py" scripts/chunk_size_study.py
echo "== the same problem on a two-worker Dask LocalCluster against the in-process pool (needs refmem[dask])"
"$py" scripts/dask_overhead.py
echo "== fla's naive torch chunk reference against refmem's chunked form, one thread each (FLA=${FLA:-unset})"
"$py" scripts/fla_naive_comparison.py ${FLA:+"$FLA"}
echo "== what NumPy's own calls allow the chunked gated delta rule (each call alone; one BLAS thread)"
"${one_thread[@]}" "$py" scripts/chunked_floor.py
