"""Per-channel retentions (channel_local_l2, channel_forget_gate): closed form == iterative solver."""

import numpy as np
import pytest

from conftest import to_numpy
from memory_inputs import rel, tol_same
from refmem.checks.scan_steps import CLOSED_VS_ITERATIVE_TOL


def test_channel_local_l2_closed_vs_iterative(xp):
    from refmem import ClosedFormUnavailable, Level, solve
    from refmem.objectives import L2, Dot, Inner
    from refmem.retentions.channel_local_l2 import ChannelLocalL2

    g = np.random.default_rng(36)
    M_t, k, v = (xp.asarray(g.standard_normal(s)) for s in ((2, 3, 4), (2, 4), (2, 3)))
    eta = xp.asarray(g.uniform(0.1, 2.0, size=(2, 3)))
    for obj in (L2(), Dot()):
        for step in ("explicit", "implicit"):
            lvl = Level(obj, ChannelLocalL2(eta=eta), step)
            Mc, _ = solve(lvl, M_t, k, v, method="closed")
            Mi, _ = solve(lvl, M_t, k, v, method="iterative")
            assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    # hand form of the explicit l2 step: M_t - diag(eta) (M_t k - v) k^T
    Mc, _ = solve(Level(L2(), ChannelLocalL2(eta=eta), "explicit"), M_t, k, v)
    Mn, kn, vn, en = (to_numpy(a) for a in (M_t, k, v, eta))
    r = np.einsum("bij,bj->bi", Mn, kn) - vn
    assert rel(Mc, Mn - en[..., None] * r[..., None] * kn[:, None, :]) <= tol_same(4)
    with pytest.raises(ClosedFormUnavailable):
        solve(Level(Inner(), ChannelLocalL2(eta=eta), "implicit"), M_t, None, M_t)
    with pytest.raises(ValueError, match="eta must lie in"):
        solve(Level(L2(), ChannelLocalL2(eta=-eta), "implicit"), M_t, k, v)


def test_channel_forget_gate_closed_vs_iterative(xp):
    from refmem import Level, solve
    from refmem.objectives import L2, Dot
    from refmem.retentions.channel_forget_gate import ChannelForgetGate

    g = np.random.default_rng(37)
    M_t, k, v = (xp.asarray(g.standard_normal(s)) for s in ((2, 3, 4), (2, 4), (2, 3)))
    alpha = xp.asarray(g.uniform(0.0, 1.0, size=(2, 4)))
    for obj in (L2(), Dot()):
        for step in ("explicit", "implicit"):
            lvl = Level(obj, ChannelForgetGate(eta=0.7, alpha=alpha), step)
            Mc, _ = solve(lvl, M_t, k, v, method="closed")
            Mi, _ = solve(lvl, M_t, k, v, method="iterative")
            assert rel(Mi, to_numpy(Mc)) <= CLOSED_VS_ITERATIVE_TOL
    Mc, _ = solve(Level(Dot(), ChannelForgetGate(eta=0.7, alpha=alpha), "explicit"), M_t, k, v)
    Mn, kn, vn, an = (to_numpy(a) for a in (M_t, k, v, alpha))
    assert rel(Mc, Mn @ np.stack([np.diag(a) for a in an]) + 0.7 * vn[..., None] * kn[:, None, :]) <= tol_same(4)
    with pytest.raises(ValueError, match="alpha must lie in"):
        solve(Level(Dot(), ChannelForgetGate(eta=0.7, alpha=alpha + 1.5), "explicit"), M_t, k, v)
