#!/usr/bin/env bash
# The figures to compare on an IDLE machine (nothing else running): run from the repository root,
#   scripts/bench_report.sh [BASE_COMMIT]   (default: the first parent of the commit that added this script)
# 1. the bench table of BASE_COMMIT and of the working tree, same machine, same session;
# 2. the chunked gated delta rule at B=2 T=4096 H=8 d=64 C=64 float64 with 1 and 2 BLAS threads;
# 3. workers 1 -> 2 for the chunked and recurrent gated delta rule (thread pool, BLAS pinned to one thread).
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
base=${1:-$(git log --format=%H --diff-filter=A -1 -- scripts/bench_report.sh)~1}
sizes=(--memory gated_delta_rule --batch 2 --seq-len 4096 --heads 8 --dim 64 --chunk 64 --dtype float64 --repeat 5)
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

echo "== before: $(git rev-parse --short "$base")"
git worktree add --detach "$tmp/base" "$base" >/dev/null 2>&1
(cd "$tmp/base" && PYTHONPATH="$tmp/base" "$OLDPWD/$py" -m refmem bench "${sizes[@]}" --threads 1)
echo "== after: working tree"
"$py" -m refmem bench "${sizes[@]}" --threads 1
echo "== after, BLAS threads = every core"
"$py" -m refmem bench "${sizes[@]}" --threads "$(nproc)"
echo "== every memory, default sizes, one BLAS thread"
"$py" -m refmem bench --dtype float64 --threads 1
echo "== workers 1 -> 2 (refmem.parallel.heads_in_parallel), gated delta rule B=2 T=4096 H=8 d=64 C=64 float64"
"$py" - <<'PY'
import time
import numpy as np
from refmem.memories import MEMORIES
from refmem.parallel import heads_in_parallel
from refmem.validation import options

spec = MEMORIES["gated_delta_rule"]
inputs = spec.make_inputs(0, (2, 8), 4096, 64, 64, np, "float64")
for form, fn, kw in (("chunked", spec.chunked, {"chunk_size": 64}), ("recurrent", spec.recurrent, {})):
    best = {}
    with options(check_finite=False):
        for w in (1, 2):
            heads_in_parallel(fn, workers=w, **inputs, **kw)  # warm-up
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                heads_in_parallel(fn, workers=w, **inputs, **kw)
                times.append(time.perf_counter() - t0)
            best[w] = min(times)
    print(f"{form:9s}  1 worker {best[1]:.3f} s  2 workers {best[2]:.3f} s  speed-up {best[1] / best[2]:.2f}x")
PY
