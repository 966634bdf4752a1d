"""Mesa: the closed form against NumPy's lstsq and conjugate gradient, the statistics split, bad inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import to_numpy
from memory_inputs import CLOSED_VS_ITERATIVE, assert_check_passes, draw
from memory_inputs import EPS
from refmem.memories.mesa import make_initial_state as mesa_stats
from refmem.memories.mesa import mesa_iterative, mesa_objective, mesa_recurrent
from refmem.metrics import rel_error
from refmem.solvers import default_rtol


def mesa_reference(q, k, v, lam, G0=None, H0=None):
    """Per step, per batch element: numpy.linalg.lstsq on the stacked system [K; sqrt(Lam)] M^T = [V; 0]."""
    batch = q.shape[:-2]
    T, d_k, d_v = k.shape[-2], k.shape[-1], v.shape[-1]
    out = np.zeros(batch + (T, d_v))
    for b in np.ndindex(*batch):
        for t in range(T):
            lam_t = lam if np.ndim(lam) == 0 else lam[b + (t,)]
            D = np.diag(np.sqrt(np.broadcast_to(lam_t, (d_k,))))
            A = np.concatenate([k[b][: t + 1], D])
            B = np.concatenate([v[b][: t + 1], np.zeros((d_k, d_v))])
            if H0 is not None:  # earlier data with statistics (G0, H0): any factor F^T F = H0 and F^T Y = G0^T
                w, Q = np.linalg.eigh(H0[b])
                keep = w > 1e-12 * w.max()
                F = (Q[:, keep] * np.sqrt(w[keep])).T
                Y = (Q[:, keep] / np.sqrt(w[keep])).T @ G0[b].T
                A, B = np.concatenate([F, A]), np.concatenate([Y, B])
            Mt = np.linalg.lstsq(A, B, rcond=None)[0].T  # (d_v, d_k)
            out[b + (t,)] = Mt @ q[b][t]
    return out


@given(seed=st.integers(0, 2**16), lam=st.floats(min_value=0.05, max_value=5.0, allow_nan=False))
@settings(max_examples=15)
def test_mesa_closed_equals_lstsq(seed, lam):
    with refmem.backend("numpy") as xp:
        inp = draw("mesa", seed, xp=xp)
        inp["lam"] = lam
        o, _ = mesa_recurrent(**inp)
        ref = mesa_reference(*(to_numpy(inp[n]) for n in "qkv"), lam)
    # Both are backward-stable solves of systems with condition number kappa <= (T + lam)/lam <= 130:
    # relative error <= ~ kappa * d * eps each; 64 * 130 * eps = 2e-12.
    assert rel_error(np.asarray(o), ref, np) <= 64 * 130 * EPS


def test_mesa_per_channel_lam_and_stats_equal_lstsq(xp):
    inp = draw("mesa", 3, xp=xp)
    g = np.random.default_rng(0)
    lam = g.uniform(0.2, 2.0, size=tuple(inp["k"].shape))
    inp["lam"] = xp.asarray(lam)
    G0, H0 = mesa_stats(4, (2,), 4, 3, xp)
    o, _ = mesa_recurrent(**inp, initial_state=(G0, H0))
    ref = mesa_reference(*(to_numpy(inp[n]) for n in "qkv"), lam, to_numpy(G0), to_numpy(H0))
    # kappa <= (5 earlier + 6 tokens + lam_max) / lam_min < 70; as above with margin
    assert rel_error(to_numpy(o), ref, np) <= 64 * 130 * EPS


@given(seed=st.integers(0, 2**16), T=st.integers(1, 7))
@settings(max_examples=10)
def test_mesa_closed_equals_cg(seed, T):
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("mesa", seed, T=T, xp=xp)
            o, M = mesa_recurrent(**inp)
            o_it, M_it, rep = mesa_iterative(**inp)
            _, kappa = mesa_objective(**inp)
            assert rep.converged
            # CG's relative error is at most rtol * kappa (mesa_iterative's Notes); closed-form rounding ~ kappa eps
            bound = max(CLOSED_VS_ITERATIVE, 4 * default_rtol(xp.float64, xp, condition=kappa) * kappa)
            assert rel_error(o_it, o, xp) <= bound
            assert rel_error(M_it, M, xp) <= bound


def test_mesa_split_scan_equals_one_scan(xp):
    assert_check_passes(xp, "mesa", "scan of x[:s] then x[s:] from its statistics == scan of x")


def test_mesa_numpy_equals_strict():
    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            outs.append([to_numpy(a) for a in mesa_recurrent(**draw("mesa", 5, batch=(2, 3), xp=xp))])
    for a, b in zip(*outs):  # the same operations in the same order on the same (NumPy) kernels
        assert rel_error(a, b, np) <= 64 * 6 * EPS


def test_mesa_large_lam_shrinks_to_zero_and_small_lam_interpolates(xp):
    # hand facts: lam -> inf gives M -> G/lam -> 0; with T >= d_k independent keys and lam -> 0 the
    # memory reproduces the stored values exactly: M k_i = v_i when the v_i are M* k_i.
    g = np.random.default_rng(1)
    K = g.standard_normal((6, 3))
    Mstar = g.standard_normal((2, 3))
    q, k, v = xp.asarray(K), xp.asarray(K), xp.asarray(K @ Mstar.T)
    # lam = 1e-6 (1e-12 is refused: the first step's H_1 = k_1 k_1^T is rank one, condition ~ 1e12). M - M* = -lam M* (H + lam I)^{-1}: relative bias
    # at most lam / (sigma_min(K)^2 + lam) in the spectral norm, i.e. 3 lam / sigma_min^2 entrywise here, plus rounding
    lam = 1e-6
    _, M = mesa_recurrent(q, k, v, lam)
    s_min = np.linalg.svd(K, compute_uv=False).min()
    assert rel_error(M, xp.asarray(Mstar), xp) <= 3 * lam / s_min ** 2 + 1e-10
    _, M_big = mesa_recurrent(q, k, v, 1e12)
    assert float(xp.max(xp.abs(M_big))) <= 1e-10


def test_mesa_bad_inputs(xp):
    inp = draw("mesa", 0, xp=xp)
    with pytest.raises(ValueError, match="lam"):
        mesa_recurrent(**dict(inp, lam=0.0))
    with pytest.raises(ValueError, match="lam"):
        mesa_recurrent(**dict(inp, lam=-inp["lam"]))
    with pytest.raises(ValueError, match="lam must be a number, or have shape"):
        mesa_recurrent(**dict(inp, lam=inp["lam"][..., :3]))
    with pytest.raises(TypeError, match="sufficient statistics"):
        mesa_recurrent(**inp, initial_state=xp.zeros((2, 3, 4), dtype=xp.float64))
    G0, H0 = mesa_stats(1, (2,), 4, 3, xp)
    with pytest.raises(ValueError, match="G_0"):
        mesa_recurrent(**inp, initial_state=(G0[..., :2, :], H0))
    with pytest.raises(ValueError, match="symmetric"):
        mesa_recurrent(**inp, initial_state=(G0, H0 + xp.reshape(xp.arange(32, dtype=xp.float64), (2, 4, 4))))
    with pytest.raises(ValueError, match="non-finite"):
        mesa_recurrent(**dict(inp, v=inp["v"] * xp.asarray(float("nan"))))
    with pytest.raises(ValueError, match="q and k"):
        mesa_recurrent(**dict(inp, q=inp["q"][..., :3]))
    with pytest.raises(ValueError, match="at least one step"):
        mesa_recurrent(inp["q"][..., :0, :], inp["k"][..., :0, :], inp["v"][..., :0, :], 1.0)
