"""``refmem bench``: runs on tiny sizes, prints the table, writes the JSON rows.

No test asserts a time. One test checks memory: the chunked gated delta rule
keeps no per-step state history (its peak extra memory, measured by tracemalloc,
is far below the ``B H T d^2`` bytes a history would need).
"""

import json

import pytest

from refmem.bench import estimate_peak_bytes, form_flops, run_bench
from refmem.cli import main
from refmem.memories import MEMORIES

FIELDS = {"memory", "form", "dtype", "backend", "B", "T", "H", "d", "C", "head_tokens_per_s", "ceiling_fraction",
          "peak_extra_bytes", "peak_fraction", "peak_one_core_fraction", "peak_flops_per_s"}


def test_cli_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["bench", "--memory", "gated_delta_rule", "--memory", "linear_attention", "--batch", "1",
               "--seq-len", "20", "--heads", "2", "--dim", "4", "--chunk", "8", "--dtype", "all", "--repeat", "1",
               "--peak-size", "64", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "head-tok/s" in out and "gated_delta_rule" in out and "machine peak" in out and "% peak" in out
    rows = json.loads(path.read_text())
    assert {(r["memory"], r["form"], r["dtype"]) for r in rows} == {
        (m, f, dt) for dt in ("float64", "float32")
        for m, f in [("gated_delta_rule", "recurrent"), ("gated_delta_rule", "chunked"),
                     ("gated_delta_rule", "minibatch"), ("linear_attention", "recurrent"),
                     ("linear_attention", "chunked")]}
    for r in rows:
        assert FIELDS <= set(r)
        assert (r["B"], r["T"], r["H"], r["d"]) == (1, 20, 2, 4)
        assert r["C"] == (None if r["form"] == "recurrent" else 8)
        assert r["backend"] == "numpy"
        assert r["head_tokens_per_s"] > 0 and r["ceiling_fraction"] > 0
        assert isinstance(r["peak_extra_bytes"], int) and r["peak_extra_bytes"] > 0
        assert r["peak_size"] == 64 and r["peak_flops_per_s"] > 0 and r["peak_one_core_flops_per_s"] > 0
        assert r["peak_fraction"] == pytest.approx(r["flops_per_s"] / r["peak_flops_per_s"], rel=1e-12)
        assert r["workers"] == 1
        assert r["ceiling_fraction"] == pytest.approx(r["flops_per_s"] / r["matmul_flops_per_s"], rel=1e-12)


def test_default_memories_are_those_with_a_chunked_form_and_the_per_channel_variants():
    rows = run_bench(None, batch=1, seq_len=9, heads=1, dim=3, chunk=4, dtypes=("float64",), repeat=1,
                     forms=("chunked",), peak_size=64)
    assert {r["memory"] for r in rows} == {n for n, s in MEMORIES.items() if s.chunked is not None} | {
        "gated_linear_attention/per_channel", "longhorn/per_channel"}


@pytest.mark.parametrize("name, module", [("gated_linear_attention/per_channel", "gated_linear_attention"),
                                          ("longhorn/per_channel", "longhorn")])
def test_per_channel_rows_time_the_per_channel_path(monkeypatch, name, module):
    """A per-channel row runs the chunked form's per-channel path (counted where it is entered), its recurrent
    row the recurrent form on the same per-channel gates ([B, H, T, d] instead of [B, H, T])."""
    import importlib

    chunked = importlib.import_module(f"refmem.chunked.{module}")
    entered, real = [], chunked._per_channel
    monkeypatch.setattr(chunked, "_per_channel", lambda *a, **k: entered.append(1) or real(*a, **k))
    rows = run_bench([name], batch=1, seq_len=12, heads=2, dim=3, chunk=4, dtypes=("float64",), repeat=1,
                     peak_size=64)
    assert [r["form"] for r in rows] == ["recurrent", "chunked"] and all(r["memory"] == name for r in rows)
    assert len(entered) >= 2  # the timed calls and the memory measurement all took the per-channel path
    assert main(["bench", "--memory", name, "--seq-len", "8", "--heads", "1", "--dim", "3", "--chunk", "4",
                 "--dtype", "float64", "--repeat", "1", "--peak-size", "64"]) == 0


def test_strict_backend_runs():
    rows = run_bench(["delta_rule"], batch=1, seq_len=9, heads=1, dim=3, chunk=4, dtypes=("float32",),
                     backend="array_api_strict", repeat=1, peak_size=64)
    assert [r["form"] for r in rows] == ["recurrent", "chunked", "minibatch"]
    assert all(r["dtype"] == "float32" and r["backend"] == "array_api_strict" for r in rows)


def test_no_state_history():
    """Chunked gated delta rule: peak extra memory O(B H T d), not the B H T d^2 of a per-step history.

    B=1, H=1, T=512, d=64, C=64, float64: a history is T d^2 8 bytes = 16 MiB; the chunked form holds
    a constant number of [T, d] and [T, C] arrays plus N = T/C chunk matrices [d, d] (another T d), so
    its peak must stay below half the history (it measures ~15 T d 8 bytes, about a quarter)."""
    rows = run_bench(["gated_delta_rule"], batch=1, seq_len=512, heads=1, dim=64, chunk=64, dtypes=("float64",),
                     repeat=1, forms=("chunked",), peak_size=64)
    history = 512 * 64 * 64 * 8
    assert rows[0]["memory_method"] == "tracemalloc"
    assert rows[0]["peak_extra_bytes"] < history / 2


def test_flop_model_orders():
    """The chunked delta form's FLOPs grow like T C d + T d^2 (not T^2): doubling T doubles them."""
    a = form_flops("gated_delta_rule", "chunked", 1, 1, 1024, 64, 64)
    b = form_flops("gated_delta_rule", "chunked", 1, 1, 2048, 64, 64)
    assert b == 2 * a
    assert form_flops("gated_delta_rule", "minibatch", 1, 1, 1024, 64, 64) < a


@pytest.mark.parametrize("bad, named", [(["--seq-len", "0"], "--seq-len"), (["--chunk", "-1"], "--chunk"),
                                        (["--heads", "x"], "--heads")])
def test_bad_sizes_are_one_line_exit_2(bad, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--repeat", "1", "--dim", "3", "--seq-len", "5", *bad])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_unknown_memory_is_exit_status_2(capsys):
    assert main(["bench", "--memory", "nope", "--repeat", "1"]) == 2
    assert "known: " in capsys.readouterr().err


def test_raw_api_still_refuses_bad_sizes():
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        run_bench(["delta_rule"], seq_len=0)


def test_memory_estimate_bounds_every_form():
    """The estimate the CLI refuses oversized runs with is an upper bound: measured peaks stay below half of it.

    Every memory with a chunked form, every form, two chunk sizes and two head sizes; the measured peak is
    tracemalloc's (independent of the estimate's formula)."""
    for d, C in ((16, 16), (16, 64), (48, 16)):
        rows = run_bench(None, batch=1, seq_len=256, heads=1, dim=d, chunk=C, dtypes=("float64",), repeat=1,
                         peak_size=64)
        bound = estimate_peak_bytes(1, 256, 1, d, C)
        worst = max(rows, key=lambda r: r["peak_extra_bytes"])
        assert worst["peak_extra_bytes"] < bound / 2, (worst["memory"], worst["form"], d, C)
        # and not absurdly loose: within 100x of the worst measured form
        assert bound < 100 * worst["peak_extra_bytes"]


def test_chunk_longer_than_the_sequence_is_the_sequence(tmp_path):
    path = tmp_path / "b.json"
    assert main(["bench", "--memory", "delta_rule", "--seq-len", "6", "--heads", "1", "--dim", "3", "--chunk", "1000000",
                 "--dtype", "float64", "--repeat", "1", "--peak-size", "64", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert {r["C"] for r in rows if r["form"] != "recurrent"} == {6}


def test_threads_option_runs_in_a_child(tmp_path):
    """``--threads 1`` re-runs the benchmark with the BLAS thread variables set; the rows say so."""
    path = tmp_path / "b.json"
    rc = main(["bench", "--memory", "delta_rule", "--seq-len", "6", "--heads", "1", "--dim", "3", "--chunk", "4",
               "--dtype", "float64", "--repeat", "1", "--peak-size", "64", "--threads", "1", "--json", str(path)])
    assert rc == 0
    rows = json.loads(path.read_text())
    assert rows and all(r["threads"] == "OPENBLAS_NUM_THREADS=1" for r in rows)


def _tril_nonzeros(C, strict):
    """Entries of a C x C lower triangle, counted one by one."""
    return sum(1 for t in range(C) for s in range(C) if (s < t if strict else s <= t))


def _solve_multiply_adds(C, m):
    """Multiply-adds of forward substitution with a unit lower-triangular C x C matrix and m right-hand sides."""
    return sum(t for t in range(C)) * m  # row t subtracts t earlier unknowns, per column


@pytest.mark.parametrize("C, d", [(1, 3), (4, 4), (8, 5), (64, 64)])
def test_flop_model_hand_counts(C, d):
    """The useful-FLOP model equals a hand count of the products the chunked forms perform, triangles counted entry by entry."""
    B, H, T = 2, 3, 5 * C  # five full chunks
    tri, strict = _tril_nonzeros(C, False), _tril_nonzeros(C, True)
    dense = 2 * C * d * d  # [C, d] @ [d, d]
    la = 2 * (tri * d) * 2 + 2 * dense  # tril(Q K^T), P V; V^T K, Q M^T
    delta = 2 * (2 * tri * d) + 2 * strict * d + 2 * _solve_multiply_adds(C, 2 * d) + 3 * dense
    mini = 2 * (2 * tri * d) + 3 * dense
    heads_chunks = B * H * 5
    assert form_flops("linear_attention", "chunked", B, H, T, d, C) == heads_chunks * la
    assert form_flops("gated_linear_attention", "chunked", B, H, T, d, C) == heads_chunks * la
    for name in ("delta_rule", "gated_delta_rule", "longhorn"):
        assert form_flops(name, "chunked", B, H, T, d, C) == heads_chunks * delta
    assert form_flops("gated_delta_rule", "minibatch", B, H, T, d, C) == heads_chunks * mini
    # per-channel gates: GLA's scores counted as the triangle of Q K^T; Longhorn solves d_v systems with one
    # right-hand side each (instead of one system with 2 d) after [Q; K] M_0^T and before U^T K and P U
    assert form_flops("gated_linear_attention/per_channel", "chunked", B, H, T, d, C) == heads_chunks * la
    longhorn_channels = 2 * (2 * tri * d) + 2 * strict * d + d * 2 * _solve_multiply_adds(C, 1) + 3 * dense
    assert form_flops("longhorn/per_channel", "chunked", B, H, T, d, C) == heads_chunks * longhorn_channels
    for name in ("gated_linear_attention", "longhorn"):  # the recurrent forms: as with scalar gates
        assert form_flops(f"{name}/per_channel", "recurrent", B, H, T, d, C) == form_flops(name, "recurrent", B, H, T, d, C)
    # the triangular model counts at most the dense products of the same shapes (never over-counts)
    assert form_flops("gated_delta_rule", "chunked", B, H, T, d, C) <= heads_chunks * (8 * C * C * d + 6 * C * d * d)


@pytest.mark.parametrize("C, d", [(1, 3), (4, 4), (8, 5), (16, 16)])
@pytest.mark.parametrize("rest", [0, 3])
def test_titans_flop_model_hand_count(C, d, rest):
    """Chunked and mini-batch Titans: the model equals a count of its products written entry by entry.

    Per chunk of c steps: D^a strict(D^eta) has t - s terms per entry t > s; D^a gamma^eta t + 1 per row;
    tril(Q K^T) and P U a lower triangle each times d; [W; Q_g] X^T is [2c, 2d] @ [2d, d], U^T K~ [d, c] @ [c, 2d];
    the exact form adds strict tril(K K^T) times d and the solve with 3 d right-hand sides; the mini-batch form
    multiplies [c, d] @ [d, d] (W M^T) and [c, 2d] @ [2d, d] (Q_g X^T) instead. A last chunk of ``rest`` steps."""
    rest = min(rest, C - 1)

    def chunk(c, form):
        gates = 2 * sum(t - s for t in range(c) for s in range(t)) + 2 * sum(t + 1 for t in range(c))
        tri = _tril_nonzeros(c, False)
        common = gates + 2 * (2 * tri * d) + 2 * d * c * 2 * d
        if form == "chunked":
            return common + 2 * (2 * c) * (2 * d) * d + 2 * _tril_nonzeros(c, True) * d + 2 * _solve_multiply_adds(c, 3 * d)
        return common + 2 * c * d * d + 2 * c * (2 * d) * d

    B, H, T = 2, 3, 4 * C + rest
    for form in ("chunked", "minibatch"):
        want = B * H * (4 * chunk(C, form) + (chunk(rest, form) if rest else 0))
        assert form_flops("titans", form, B, H, T, d, C) == want, form


@pytest.mark.parametrize("C, d", [(1, 3), (4, 4), (8, 5), (16, 16)])
def test_mesa_flop_model_hand_count(C, d):
    """Chunked Mesa: per chunk the statistics K^T K and V^T K ([d, C] @ [C, d] each), one conjugate-gradient
    iteration (Y H_start [C, d] @ [d, d], tril(Y K^T) and its product with K, a triangle times d each) and the
    outputs (Y G_start^T, tril(Y K^T) and its product with V); once, one iteration of the final state's solve
    ([d, d] @ [d, d])."""
    tri = _tril_nonzeros(C, False)
    product = 2 * C * d * d  # [C, d] @ [d, d] or [d, C] @ [C, d]
    per_chunk = 2 * product + (product + 2 * (2 * tri * d)) + (product + 2 * (2 * tri * d))
    B, H, N = 2, 3, 5
    assert form_flops("mesa", "chunked", B, H, N * C, d, C) == B * H * (N * per_chunk + 2 * d**3)


def _count_products(monkeypatch):
    """Count the multiply-adds of every ``@`` on array_api_strict arrays (2 FLOPs each, every entry, zeros included)."""
    import math

    from array_api_strict._array_object import Array

    counted = [0]
    original = Array.__matmul__

    def counting(self, other):
        out = original(self, other)
        counted[0] += 2 * self.shape[-1] * math.prod(out.shape)  # out entries x inner size
        return out

    monkeypatch.setattr(Array, "__matmul__", counting)
    return counted


@pytest.mark.parametrize("name, form", [(n, f) for n, spec in sorted(MEMORIES.items()) for f in ("chunked", "minibatch")
                                        if getattr(spec, f) is not None])
@pytest.mark.parametrize("T, d, C", [(64, 8, 16), (45, 6, 8)])
def test_flop_model_within_the_products_performed(monkeypatch, name, form, T, d, C):
    """The model never exceeds the products a form actually performs (counted at every ``@`` it calls).

    The rate a row reports is the model over the time, so a model within the work done cannot report more than
    the hardware did; a model that counted a product the form does not perform (or counted a triangle as a full
    square) on top of the dense products would exceed the count."""
    import array_api_strict as xps

    B, H = 1, 2
    inputs = MEMORIES[name].make_inputs(0, (B, H), T, d, d, xps, "float64")
    counted = _count_products(monkeypatch)
    getattr(MEMORIES[name], form)(**inputs, chunk_size=C)
    assert 0 < form_flops(name, form, B, H, T, d, C) <= counted[0]


def test_no_row_can_exceed_the_work_done():
    """Every form's useful FLOPs are at most the dense products of the shapes it multiplies.

    An upper bound on the work of each chunked form, written plainly: every in-chunk product counted
    dense (2 C^2 d per [C, C] x [C, d] or [C, d] x [d, C]), every solve dense (2 C^2 per right-hand
    side), CG at its most d + 1 iterations. The rate a row reports is the model over the time,
    so a model within the work done cannot report more than the hardware did."""
    for d, C in ((4, 4), (16, 8), (64, 64), (64, 32)):
        T, N = 4 * C, 4
        dense_cc = 2 * C * C * d
        upper = {
            "linear_attention": 2 * dense_cc + 4 * C * d * d,
            "gated_linear_attention": 2 * dense_cc + 4 * C * d * d,
            "delta_rule": 3 * dense_cc + 2 * C * C * 2 * d + 6 * C * d * d,
            "gated_delta_rule": 3 * dense_cc + 2 * C * C * 2 * d + 6 * C * d * d,
            "longhorn": 3 * dense_cc + 2 * C * C * 2 * d + 6 * C * d * d,
            # per channel: the scores' sum over d_k channels of the C x C decays (dense), S V, two [C, d] x [d, d]
            "gated_linear_attention/per_channel": 2 * dense_cc + 4 * C * d * d,
            # per channel: [Q; K] K^T, d_v dense solves of one right-hand side, P U, [Q; K] M^T, U^T K
            "longhorn/per_channel": 3 * dense_cc + d * 2 * C * C + 6 * C * d * d,
            "titans": 3 * dense_cc + 2 * C * C * 3 * d + 2 * C**3 + 2 * C * C + 12 * C * d * d,
            "mesa": (d + 1) * (2 * dense_cc + 2 * C * d * d) + 2 * dense_cc + 6 * C * d * d,
        }
        for name, per_chunk in upper.items():
            assert form_flops(name, "chunked", 1, 1, T, d, C) <= N * per_chunk, (name, d, C)


def test_peak_fraction_is_against_the_large_product():
    rows = run_bench(["linear_attention"], batch=1, seq_len=16, heads=1, dim=4, chunk=8, dtypes=("float64",),
                     repeat=1, forms=("chunked",), peak_size=32)
    r = rows[0]
    assert r["peak_size"] == 32
    assert r["peak_fraction"] == pytest.approx(r["flops"] / r["seconds"] / r["peak_flops_per_s"], rel=1e-12)
    assert r["peak_one_core_fraction"] == pytest.approx(r["flops"] / r["seconds"] / r["peak_one_core_flops_per_s"],
                                                        rel=1e-12)


def test_peak_is_the_best_of_the_measurements_before_and_after_the_rows(monkeypatch):
    """A peak measured while the machine was busy (here: the first, made low on purpose) is replaced by the later one."""
    import refmem.bench as bench

    measured = iter([1e9, 0.5e9, 4e9, 2e9])  # all cores, one core (before the rows); again after them
    monkeypatch.setattr(bench, "machine_peak", lambda *args, **kwargs: next(measured))
    rows = run_bench(["linear_attention"], batch=1, seq_len=16, heads=1, dim=4, chunk=8, dtypes=("float64",),
                     repeat=1, forms=("recurrent", "chunked"), peak_size=32)
    for r in rows:
        assert r["peak_flops_per_s"] == 4e9 and r["peak_one_core_flops_per_s"] == 2e9
        assert r["peak_fraction"] == pytest.approx(r["flops"] / r["seconds"] / 4e9, rel=1e-12)
        assert r["peak_one_core_fraction"] == pytest.approx(r["flops"] / r["seconds"] / 2e9, rel=1e-12)


def _takes_per_channel(spec):
    import inspect

    return "per_channel" in inspect.signature(spec.make_inputs).parameters


# every chunked and mini-batch form of the memory table, with per-channel gates where the memory has them
BLOCKED_FORMS = [(name, form, per_channel) for name, spec in sorted(MEMORIES.items()) for form in ("chunked", "minibatch")
                 if getattr(spec, form) is not None
                 for per_channel in ((False, True) if _takes_per_channel(spec) else (False,))]


def test_blocked_forms_cover_titans_mesa_and_per_channel_gates():
    assert {("titans", "chunked", False), ("titans", "minibatch", False), ("mesa", "chunked", False),
            ("gated_linear_attention", "chunked", True), ("longhorn", "chunked", True)} <= set(BLOCKED_FORMS)


@pytest.mark.parametrize("name, form, per_channel", BLOCKED_FORMS)
@pytest.mark.parametrize("T, d, C", [(1024, 32, 32), (600, 16, 16)])
def test_blocked_forms_peak_extra_memory(name, form, per_channel, T, d, C):
    """Every chunked and mini-batch form holds at most 3 B H T d values above its inputs, outputs included (tracemalloc), C <= d.

    The outputs alone are B H T d values (two while the blocks' outputs are joined); the per-block temporaries
    are a bounded fraction of T (a block is at most an eighth or a sixteenth of the sequence), so 3 is a bound
    that a form materialising every chunk's pieces (measured 3.9 to 39 before blocking) fails."""
    import tracemalloc

    import numpy as np

    B, H = 2, 2
    spec = MEMORIES[name]
    inputs = spec.make_inputs(0, (B, H), T, d, d, np, "float64", **({"per_channel": True} if per_channel else {}))
    fn = getattr(spec, form)
    fn(**inputs, chunk_size=C)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        out = fn(**inputs, chunk_size=C)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out[0].shape == (B, H, T, d)
    assert peak - before <= 3 * B * H * T * d * 8, (peak - before) / (B * H * T * d * 8)


def test_workers_column_states_the_processes_each_row_used(tmp_path, capsys):
    """``--workers 2`` runs every form on the pool (B H = 2 slices, so two tasks); without it refmem's default
    rule keeps this small problem in one plain call (1); the table has the column, the JSON the number."""
    path = tmp_path / "bench.json"
    argv = ["bench", "--memory", "delta_rule", "--batch", "1", "--seq-len", "16", "--heads", "2", "--dim", "4",
            "--chunk", "8", "--dtype", "float64", "--repeat", "1", "--peak-size", "64", "--json", str(path)]
    assert main(argv + ["--workers", "2"]) == 0
    pooled = json.loads(path.read_text())
    assert [r["workers"] for r in pooled] == [2, 2, 2]
    for r in pooled:  # the small-product rate on as many cores as the row used
        assert r["ceiling_fraction"] == pytest.approx(r["flops_per_s"] / (2 * r["matmul_flops_per_s"]), rel=1e-12)
    assert main(argv) == 0
    assert [r["workers"] for r in json.loads(path.read_text())] == [1, 1, 1]
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "workers" in header and header.index("workers") == header.index("C") + 1
    rows = run_bench(["delta_rule"], batch=1, seq_len=16, heads=3, dim=4, chunk=8, dtypes=("float64",), repeat=1,
                     forms=("recurrent",), peak_size=64, workers=5)
    assert rows[0]["workers"] == min(5, 3)  # never more processes than tasks
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_bench(["delta_rule"], seq_len=8, dim=3, dtypes=("float64",), repeat=1, workers=0)


@pytest.mark.parametrize("args", [[], ["{tmp}/no-fla-here"]])
def test_fla_comparison_script_skips_in_one_line_without_torch_or_a_checkout(args, tmp_path):
    """scripts/fla_naive_comparison.py compares only with torch, einops and an fla checkout; without one of them it
    says which in one line and exits 0 (CI has no torch and no checkout)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "fla_naive_comparison.py"
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("skipped: ") and lines[0].endswith("nothing compared")
    assert any(why in lines[0] for why in ("torch is not installed", "einops is not installed",
                                           "no fla checkout given", "holds no fla/ops/gated_delta_rule/naive.py"))


def test_small_product_rate_is_taken_on_a_cache_sized_batch_on_the_host(monkeypatch):
    """The secondary column's small products: on the host at most SMALL_BATCH per call (a pool task's block of
    chunks, in cache), fewer when the problem has fewer chunks; a memory-bound batch of every chunk would let a
    blocked form beat its own ceiling (100.9% was measured that way)."""
    import refmem.bench as bench

    seen = []
    real = bench.matmul_rate
    monkeypatch.setattr(bench, "matmul_rate", lambda xp, dtype, batch, C, d, repeat: seen.append(batch) or real(
        xp, dtype, batch, C, d, repeat))
    run_bench(["delta_rule"], batch=2, seq_len=64, heads=4, dim=4, chunk=4, dtypes=("float64",), repeat=1,
              forms=("chunked",), peak_size=64)
    run_bench(["delta_rule"], batch=1, seq_len=8, heads=2, dim=4, chunk=4, dtypes=("float64",), repeat=1,
              forms=("chunked",), peak_size=64)
    assert seen == [bench.SMALL_BATCH, 1 * 2 * 2]  # 2 * 4 * 16 chunks capped; 4 chunks as they are
