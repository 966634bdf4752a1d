"""The tour's figures: every plotted number against an independent computation, then the PNGs themselves.

The data functions (:mod:`refmem.figures`) are checked against updates written
out plainly here (textbook loops, SciPy's polar decomposition, the closed
forms of MATH.md 3), without plotting. The drawing (:mod:`refmem.plots`)
is checked for one PNG per figure, non-empty, of the stated pixel size (read
from the PNG header, not through matplotlib); without matplotlib the command
names the ``plot`` extra and exits 2.
"""

import struct
import sys

import numpy as np
import pytest
import scipy.linalg

from refmem import figures, plots
from refmem.cli import main as cli_main


def test_recall_matches_the_three_updates_written_out():
    d, N, beta = 8, 20, 1.5
    data = figures.recall_vs_pairs(d=d, max_pairs=N, beta=beta, seed=3)
    rng = np.random.default_rng(3)  # the documented sampling: keys N(0, 1/d), unit values
    K = rng.standard_normal((N, d)) / np.sqrt(d)
    V = rng.standard_normal((N, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    for n in range(1, N + 1):
        la, dr, lh = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
        for k, v in zip(K[:n], V[:n]):
            la = la + np.outer(v, k)
            dr = dr - beta * np.outer(dr @ k - v, k)
            lh = lh - beta / (1 + beta * (k @ k)) * np.outer(lh @ k - v, k)
        for name, M in (("linear_attention", la), ("delta_rule", dr), ("longhorn", lh)):
            expected = np.mean([np.linalg.norm(M @ k - v) for k, v in zip(K[:n], V[:n])])
            # n <= 20 rank-one updates of O(1) entries: rounding ~ n d eps
            assert abs(data[name][n - 1] - expected) <= 1e-12 * max(1.0, expected), (name, n)
    assert list(data["pairs"]) == list(range(1, N + 1))


def test_momentum_weights_and_horizons():
    a = 0.9
    data = figures.momentum_weights(alpha=a, n=60)
    j = np.arange(60)
    np.testing.assert_allclose(data["weight"], (1 - a) * a ** j, rtol=1e-14)
    np.testing.assert_allclose(data["mass"], 1 - a ** (j + 1), rtol=1e-13)
    brute = {f: next(n for n in range(1, 1000) if 1 - a ** n >= f) for f in (0.5, 0.99)}
    assert (data["half"], data["most"]) == (brute[0.5], brute[0.99]) == (7, 44)
    assert (data["paper_half"], data["paper_most"]) == (6, 43)


def test_delta_step_factors_are_the_closed_forms():
    x = np.array([0.01, 0.5, 1.5, 2.0, 3.0, 50.0])
    data = figures.delta_step_stability(eta_k2=x)
    # one rank-one step of O(1) entries, d = 8: rounding ~ d eps relative to ||M_t k - v||
    np.testing.assert_allclose(data["explicit"], np.abs(1 - x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(data["implicit"], 1 / (1 + x), rtol=1e-12, atol=1e-13)


def test_cms_timeline_is_every_C_steps():
    C = (1, 3, 4)
    data = figures.cms_timeline(chunk_sizes=C, T=13)
    expected = np.array([[t % c == 0 for t in range(1, 14)] for c in C])
    np.testing.assert_array_equal(data["updates"], expected)


def _plain_cubic(X, s):
    X = X / np.linalg.norm(X)
    for _ in range(s):
        X = 1.5 * X - 0.5 * X @ X.T @ X
    return X


def _plain_quintic(X, s, a=3.4445, b=-4.7750, c=2.0315):
    X = X / max(np.linalg.norm(X), 1e-7)
    for _ in range(s):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def test_newton_schulz_iterates_against_scipy_polar():
    data = figures.newton_schulz_convergence(n=6, condition=50.0, max_steps=25, seed=1)
    rng = np.random.default_rng(1)  # the documented construction
    U, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    V, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    M = (U * np.geomspace(1.0, 1 / 50.0, 6)) @ V.T
    O, _ = scipy.linalg.polar(M)
    for s in range(26):
        # kappa 50: the iterates' rounding is amplified by at most ~kappa; 1e-11 is far above it and far below the curves
        assert abs(data["cubic"][s] - np.linalg.norm(_plain_cubic(M, s) - O, 2)) <= 1e-11
        assert abs(data["quintic"][s] - np.linalg.norm(_plain_quintic(M, s) - O, 2)) <= 1e-11
    assert data["cubic"][-1] <= 1e-12  # converged
    assert data["quintic"][-1] >= 0.1  # Muon's map stops short of the polar factor


def test_throughput_rows_are_finite_and_the_forms_agree():
    data = figures.chunked_vs_recurrent_throughput(seq_lens=(16, 48), heads=2, d=8, chunk=16, repeat=1)
    assert list(data["seq_len"]) == [16, 48]
    for form in ("recurrent", "chunked"):
        assert np.all(np.isfinite(data[form])) and np.all(data[form] > 0)
    # chunked reorders float64 sums over T <= 48 unit-key steps: a few hundred eps at most
    assert np.all(data["max_diff"] <= 1e-12)


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_every_figure_is_a_png_of_the_stated_size(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    rc = cli_main(["tour", "--plots", str(tmp_path / "figs")])
    assert rc == 0
    for name in plots.FIGURES:
        path = tmp_path / "figs" / f"{name}.png"
        assert path.stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
        assert _png_size(path) == (plots.WIDTH, plots.HEIGHT), name


def test_without_matplotlib_the_command_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(plots.PlotExtraMissing, match=r"refmem\[plot\]"):
        plots.write_figures(str(tmp_path))
    rc = cli_main(["tour", "--plots", str(tmp_path / "figs")])
    err = capsys.readouterr()
    assert rc == 2 and err.out == ""
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "--plots" in lines[0] and "pip install 'refmem[plot]'" in lines[0]
    assert not (tmp_path / "figs").exists()  # refused before any work


def test_an_unknown_figure_name_is_named():
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    with pytest.raises(ValueError, match="'nosuch'"):
        plots.write_figures("unused", ["nosuch"])
