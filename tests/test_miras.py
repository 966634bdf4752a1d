"""The Miras memories Yaad, Memora and Moneta: written-out rules, closed == iterative, SciPy, the deep variants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import to_numpy
from memory_inputs import CLOSED_VS_ITERATIVE, draw
from memory_inputs import EPS
from refmem.checks import deep_memory as deep_checks
from refmem.level import ClosedFormUnavailable
from refmem.memories.deep_memory import deep_memory_recurrent, deep_step
from refmem.memories.residual_mlp import ResidualLoss, deep_loss_grad, make_initial_state
from refmem.metrics import rel_error
from refmem.retentions import ForgetGate


# --- Yaad


def yaad_reference(q, k, v, alpha, eta, delta, M0=None):
    """Miras' explicit Yaad rule written out in NumPy: M = a M - eta clip(M k - v, delta) k^T."""
    batch = k.shape[:-2]
    M = np.zeros(batch + (v.shape[-1], k.shape[-1])) if M0 is None else M0
    out = []
    for t in range(k.shape[-2]):
        r = np.einsum("...ij,...j->...i", M, k[..., t, :]) - v[..., t, :]
        M = alpha[..., t, None, None] * M - eta[..., t, None, None] * np.clip(r, -delta, delta)[..., :, None] * k[..., t, None, :]
        out.append(np.einsum("...ij,...j->...i", M, q[..., t, :]))
    return np.stack(out, -2), M


@given(seed=st.integers(0, 2**16), delta=st.floats(min_value=0.01, max_value=5.0, allow_nan=False))
@settings(max_examples=10)
def test_yaad_explicit_equals_written_out_rule(seed, delta):
    from refmem.memories.yaad import yaad_recurrent

    with refmem.backend("numpy") as xp:
        inp = draw("yaad", seed, xp=xp)
        o, M = yaad_recurrent(**inp, delta=delta)
        o_ref, M_ref = yaad_reference(*(to_numpy(inp[n]) for n in ("q", "k", "v", "alpha", "eta")), delta)
    # the same products in a different order: d_k-term sums, T steps of contraction: 64 d eps
    assert rel_error(np.asarray(o), o_ref, np) <= 64 * 4 * EPS * 6
    assert rel_error(np.asarray(M), M_ref, np) <= 64 * 4 * EPS * 6


@pytest.mark.parametrize("mode", ["coordinate", "norm"])
@pytest.mark.parametrize("step", ["explicit", "implicit"])
def test_yaad_closed_equals_iterative(xp, mode, step):
    from refmem.memories.yaad import yaad_recurrent

    inp = draw("yaad", 7, T=4, xp=xp)
    M0 = xp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4)))
    o, M = yaad_recurrent(**inp, delta=0.4, mode=mode, step=step, initial_state=M0)
    o_it, M_it = yaad_recurrent(**inp, delta=0.4, mode=mode, step=step, initial_state=M0, method="iterative")
    # each step: strongly convex, kappa <= 1 + eta ||k||^2 < 10; solvers stop at 1e-12 relative
    assert rel_error(o_it, o, xp) <= CLOSED_VS_ITERATIVE
    assert rel_error(M_it, M, xp) <= CLOSED_VS_ITERATIVE


def test_yaad_implicit_is_bounded_where_explicit_diverges(xp):
    # Huber's gradient is bounded by delta ||k||: the explicit step cannot blow up like the delta rule's,
    # but with eta ||k||^2 > 2 it oscillates; the implicit step contracts the residual (MATH.md 3 analogue).
    from refmem.memories.yaad import yaad_recurrent

    g = np.random.default_rng(0)
    k1 = g.standard_normal(4)
    k1 = 2.0 * k1 / np.linalg.norm(k1)  # ||k||^2 = 4
    T = 30
    k = xp.asarray(np.tile(k1, (T, 1)))
    v = xp.asarray(np.tile(g.standard_normal(3) * 0.1, (T, 1)))
    ones, eta = xp.ones((T,), dtype=xp.float64), xp.full((T,), 1.0, dtype=xp.float64)  # eta ||k||^2 = 4 > 2
    _, M_imp = yaad_recurrent(k, k, v, ones, eta, delta=1e6, step="implicit")
    _, M_exp = yaad_recurrent(k, k, v, ones, eta, delta=1e6, step="explicit")
    r_imp = float(xp.max(xp.abs((M_imp @ k[0, :, None])[:, 0] - v[0, :])))
    r_exp = float(xp.max(xp.abs((M_exp @ k[0, :, None])[:, 0] - v[0, :])))
    assert r_imp <= 1e-12 and r_exp >= 1e6  # (1 - 4)^30 ~ 2e14 growth vs (1/5)^30 contraction


def test_yaad_numpy_equals_strict_and_deep():
    from refmem.memories.yaad import yaad_deep_recurrent, yaad_recurrent

    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("yaad", 2, batch=(2, 2), d_v=4, xp=xp)
            o, M = yaad_recurrent(**inp, delta=0.5, mode="norm", step="implicit")
            od, W = yaad_deep_recurrent(**inp, delta=0.5, hidden=3)
            outs.append([to_numpy(o), to_numpy(M), to_numpy(od), to_numpy(W[0]), to_numpy(W[1])])
    for a, b in zip(*outs):
        assert rel_error(a, b, np) <= 64 * 6 * EPS


def test_yaad_deep_is_deep_memory_with_huber(xp):
    from refmem.memories.yaad import yaad_deep_recurrent

    inp = draw("yaad", 3, T=4, d_v=4, xp=xp)
    o, W = yaad_deep_recurrent(**inp, delta=0.3)
    o2, W2 = deep_memory_recurrent(inp["q"], inp["k"], inp["v"], inp["eta"], inp["alpha"],
                                   loss=ResidualLoss("huber", delta=0.3))
    assert rel_error(o, o2, xp) == 0.0 and rel_error(W[0], W2[0], xp) == 0.0


def test_yaad_bad_inputs(xp):
    from refmem.memories.yaad import yaad_recurrent

    inp = draw("yaad", 0, xp=xp)
    with pytest.raises(ValueError, match="alpha"):
        yaad_recurrent(**dict(inp, alpha=inp["alpha"] + 1.0))
    with pytest.raises(ValueError, match="eta"):
        yaad_recurrent(**dict(inp, eta=-inp["eta"]))
    with pytest.raises(ValueError, match="alpha must have shape"):
        yaad_recurrent(**dict(inp, alpha=inp["alpha"][..., :2]))
    with pytest.raises(ValueError, match="delta"):
        yaad_recurrent(**inp, delta=0.0)
    with pytest.raises(ValueError, match="mode"):
        yaad_recurrent(**inp, mode="rows")
    with pytest.raises(ValueError, match="initial_state"):
        yaad_recurrent(**inp, initial_state=xp.zeros((2, 4, 3), dtype=xp.float64))
    with pytest.raises(ValueError, match="non-finite"):
        yaad_recurrent(**dict(inp, q=inp["q"] * xp.asarray(float("nan"))))


# --- Memora


def np_softmax_rows(Z):
    E = np.exp(Z - Z.max(-1, keepdims=True))
    return E / E.sum(-1, keepdims=True)


def memora_reference(q, k, v, eta, a, c, M0):
    """Miras' Memora rule written out: M = c softmax((1 - lam) log M - eta' (M k - v) k^T), eta' = 1/(1/a + 1/eta)."""
    M, out = M0, []
    for t in range(k.shape[-2]):
        e = eta[..., t, None, None]
        ep = 1.0 / (1.0 / a + 1.0 / e)
        lam = (1.0 / a) * ep
        r = np.einsum("...ij,...j->...i", M, k[..., t, :]) - v[..., t, :]
        M = c * np_softmax_rows((1 - lam) * np.log(M) - ep * r[..., :, None] * k[..., t, None, :])
        out.append(np.einsum("...ij,...j->...i", M, q[..., t, :]))
    return np.stack(out, -2), M


@given(seed=st.integers(0, 2**16), a=st.floats(min_value=0.1, max_value=100.0, allow_nan=False),
       c=st.floats(min_value=0.2, max_value=5.0, allow_nan=False))
@settings(max_examples=10)
def test_memora_explicit_equals_written_out_rule(seed, a, c):
    from refmem.memories.memora import make_initial_state as simplex_state
    from refmem.memories.memora import memora_recurrent

    with refmem.backend("numpy") as xp:
        inp = draw("memora", seed, xp=xp)
        M0 = simplex_state(seed + 1, (2,), 4, 3, xp, c=c)
        o, M = memora_recurrent(**inp, a=a, c=c, initial_state=M0)
        o_ref, M_ref = memora_reference(*(to_numpy(inp[n]) for n in ("q", "k", "v", "eta")), a, c, to_numpy(M0))
    # softmax of the same logits in another order of operations: logits err by ~8 eps |logit|, T = 6 steps
    assert rel_error(np.asarray(M), M_ref, np) <= 1e-12
    assert rel_error(np.asarray(o), o_ref, np) <= 1e-12
    assert np.all(np.asarray(M) > 0) and np.allclose(np.asarray(M).sum(-1), c, rtol=16 * 4 * EPS, atol=0)


def memora_reference_decimal(q, k, v, eta, a, c, M0, digits=60):
    """Miras' softmax rule M = c exp(Z) / sum exp(Z) written out in 60-digit decimals (no max shift needed:
    Decimal's exponent range holds exp(+-1e12)); the read-outs rounded to float64 at the end."""
    import decimal

    with decimal.localcontext(decimal.Context(prec=digits, Emin=decimal.MIN_EMIN, Emax=decimal.MAX_EMAX)):
        return _memora_decimal_steps(decimal.Decimal, q.tolist(), k.tolist(), v.tolist(), eta.tolist(), a, c,
                                     M0.tolist())


def _memora_decimal_steps(D, q, k, v, eta, a, c, M0):
    M = [[D(x) for x in row] for row in M0]
    outs = []
    for t in range(len(k)):
        kt, vt = [D(x) for x in k[t]], [D(x) for x in v[t]]
        ep = 1 / (1 / D(a) + 1 / D(eta[t]))  # eta' = 1/(1/a + 1/eta)
        lam = ep / D(a)
        r = [sum(m * x for m, x in zip(row, kt)) - vi for row, vi in zip(M, vt)]
        new = []
        for row, ri in zip(M, r):
            E = [((1 - lam) * m.ln() - ep * ri * kj).exp() for m, kj in zip(row, kt)]
            total = sum(E)
            new.append([D(c) * e / total for e in E])
        M = new
        outs.append([float(sum(m * D(x) for m, x in zip(row, q[t]))) for row in M])
    return np.array(outs), np.array([[float(m) for m in row] for row in M])


@pytest.mark.parametrize("key_scale", [1.0, 1e3, 1e6])
def test_memora_with_large_keys_equals_the_rule_in_decimals(key_scale):
    # keys of 1e3 drove rows to entries of exp(-1e6): 0 in float64, and log 0 = -inf at the next step
    import warnings

    from refmem.memories.memora import make_initial_state as simplex_state
    from refmem.memories.memora import memora_recurrent

    with refmem.backend("numpy") as xp:
        inp = draw("memora", 3, batch=(), T=5, xp=xp)
        inp["k"] = key_scale * inp["k"]
        M0 = simplex_state(4, (), 4, 3, xp)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            o, M = memora_recurrent(**inp, a=2.0, initial_state=M0)
    o_ref, M_ref = memora_reference_decimal(*(to_numpy(inp[n]) for n in ("q", "k", "v", "eta")), 2.0, 1.0,
                                            to_numpy(M0))
    # logits of size |eta' r k| ~ key_scale^2 lose ~eps of that in float64: entries whose log differs from
    # the row maximum by more than ~745 are 0 either way; the rest agree to rounding of the softmax
    assert np.all(np.isfinite(o))
    assert np.max(np.abs(np.asarray(o) - o_ref)) <= 1e-12 * max(1.0, np.max(np.abs(o_ref)))
    assert np.max(np.abs(np.asarray(M) - M_ref)) <= 1e-12


def test_memora_closed_equals_mirror_descent(xp):
    from refmem.memories.memora import make_initial_state as simplex_state
    from refmem.memories.memora import memora_recurrent

    inp = draw("memora", 11, T=3, xp=xp)
    M0 = simplex_state(12, (2,), 4, 3, xp)
    o, M = memora_recurrent(**inp, a=2.0, initial_state=M0)
    o_it, M_it = memora_recurrent(**inp, a=2.0, initial_state=M0, method="iterative")
    # mirror descent stops at relative mirror-gradient 1e-12; the problem's Hessian is (1/eta + 1/a) diag(1/M)
    # on rows with entries in ~[0.05, 0.7]: kappa < 20
    assert rel_error(M_it, M, xp) <= CLOSED_VS_ITERATIVE
    assert rel_error(o_it, o, xp) <= CLOSED_VS_ITERATIVE


def test_memora_implicit_equals_scipy_and_has_no_closed_form():
    from refmem.checks.miras_scipy import _memora_problem, scipy_argmin_simplex
    from refmem.level import solve
    from refmem.memories.memora import memora_level

    import array_api_compat.numpy as npx

    M_t, k, v = _memora_problem(21, 1.0)
    level = memora_level(0.7, a=3.0, c=1.0, step="implicit")
    with pytest.raises(ClosedFormUnavailable):
        solve(level, M_t, k, v)
    it, rep = solve(level, M_t, k, v, method="iterative")
    ref, g = scipy_argmin_simplex(level, M_t, k, v, 1.0)
    assert g <= 1e-12  # SciPy reached the optimality condition
    assert rel_error(it, ref, npx) <= 1e-10  # see refmem.checks.miras_scipy.SCIPY_TOL


def test_memora_numpy_equals_strict_and_deep():
    from refmem.memories.memora import memora_deep_recurrent, memora_recurrent

    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("memora", 2, batch=(2, 2), d_v=4, xp=xp)
            o, M = memora_recurrent(**inp, a=3.0, c=2.0)
            od, W = memora_deep_recurrent(**inp, a=3.0, c=2.0)
            outs.append([to_numpy(x) for x in (o, M, od, W[0], W[1])])
    for x, y in zip(*outs):
        assert rel_error(x, y, np) <= 64 * 6 * EPS
    W1, W2 = outs[0][3], outs[0][4]
    assert np.all(W1 > 0) and np.all(W2 > 0)  # rows of both matrices stay on the simplex
    assert np.allclose(W1.sum(-1), 2.0, rtol=64 * EPS, atol=0) and np.allclose(W2.sum(-1), 2.0, rtol=64 * EPS, atol=0)


def test_memora_deep_explicit_closed_equals_softmax_rule_per_matrix(xp):
    from refmem.memories.memora import memora_deep_recurrent

    inp = draw("memora", 5, T=1, d_v=3, d_k=3, xp=xp)
    _, (W1, W2) = memora_deep_recurrent(**inp, a=2.0)
    A, B = xp.full((2, 3, 3), 1 / 3, dtype=xp.float64), xp.full((2, 3, 3), 1 / 3, dtype=xp.float64)
    _, g1, g2 = deep_loss_grad(A, B, inp["k"][:, 0, :], inp["v"][:, 0, :], ResidualLoss("l2"), xp)
    e = inp["eta"][:, 0, None, None]
    ep = 1 / (1 / 2.0 + 1 / e)
    for W, W0, g in ((W1, A, g1), (W2, B, g2)):
        Z = (1 - ep / 2.0) * xp.log(W0) - ep * g
        E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
        assert rel_error(W, E / xp.sum(E, axis=-1, keepdims=True), xp) <= 64 * 3 * EPS


def test_memora_bad_inputs(xp):
    from refmem.memories.memora import memora_recurrent

    inp = draw("memora", 0, xp=xp)
    with pytest.raises(ValueError, match="eta"):
        memora_recurrent(**dict(inp, eta=-inp["eta"]))
    with pytest.raises(ValueError, match="a must lie"):
        memora_recurrent(**inp, a=0.0)
    with pytest.raises(ValueError, match="c must lie"):
        memora_recurrent(**inp, c=-1.0)
    with pytest.raises(TypeError, match="a must be a positive number"):
        memora_recurrent(**inp, a=inp["eta"])
    with pytest.raises(ValueError, match="positive"):
        memora_recurrent(**inp, initial_state=xp.zeros((2, 3, 4), dtype=xp.float64))
    with pytest.raises(ValueError, match="sum to c"):
        memora_recurrent(**inp, initial_state=xp.full((2, 3, 4), 0.3, dtype=xp.float64))
    with pytest.raises(ValueError, match="eta must have shape"):
        memora_recurrent(**dict(inp, eta=inp["eta"][..., :2]))


# --- Moneta


def np_lq_mirror(M, q):
    n = np.sum(np.abs(M) ** q, axis=(-2, -1), keepdims=True) ** (1 / q)
    n = np.where(n > 0, n, 1.0)
    return np.sign(M) * np.abs(M) ** (q - 1) * n ** (2 - q)


def moneta_reference(q, k, v, alpha, eta, p, lq, M0, printed=False):
    """Moneta written out in NumPy: A = alpha grad psi(M) - eta p sign(r)|r|^(p-1) k^T, M = grad psi*(A).

    ``printed=True``: the printed read-out M = A / ||A||_q^(q-2) with the FTRL accumulator A carried along.
    """
    qs = lq / (lq - 1)
    M, A, out = M0, np_lq_mirror(M0, lq), []
    for t in range(k.shape[-2]):
        r = np.einsum("...ij,...j->...i", M, k[..., t, :]) - v[..., t, :]
        g = (p * np.sign(r) * np.abs(r) ** (p - 1))[..., :, None] * k[..., t, None, :]
        A = alpha[..., t, None, None] * (A if printed else np_lq_mirror(M, lq)) - eta[..., t, None, None] * g
        if printed:
            n = np.sum(np.abs(A) ** lq, axis=(-2, -1), keepdims=True) ** (1 / lq)
            M = A / n ** (lq - 2)
        else:
            M = np_lq_mirror(A, qs)
        out.append(np.einsum("...ij,...j->...i", M, q[..., t, :]))
    return np.stack(out, -2), M


@given(seed=st.integers(0, 2**16), lq=st.floats(min_value=1.2, max_value=6.0, allow_nan=False),
       p=st.floats(min_value=1.0, max_value=4.0, allow_nan=False))
@settings(max_examples=10)
def test_moneta_explicit_equals_written_out_rule(seed, lq, p):
    from refmem.memories.moneta import moneta_recurrent

    with refmem.backend("numpy") as xp:
        inp = draw("moneta", seed, xp=xp)
        M0 = np.random.default_rng(seed).standard_normal((2, 3, 4))
        o, M = moneta_recurrent(**inp, p=p, lq=lq, initial_state=xp.asarray(M0))
        o_ref, M_ref = moneta_reference(*(to_numpy(inp[n]) for n in ("q", "k", "v", "alpha", "eta")), p, lq, M0)
    # powers |x|^(q-1) and norms re-associated: ~ 16 (q + p) eps per step relative, 6 steps, entries of
    # both signs (relative to max |M|): 1e-11 bounds it with margin
    assert rel_error(np.asarray(M), M_ref, np) <= 1e-11
    assert rel_error(np.asarray(o), o_ref, np) <= 1e-11


def test_moneta_printed_rule_differs_unless_q_is_2(xp):
    # Erratum (MATH.md 4, Moneta row): the printed read-out A/||A||_q^(q-2) is the consistent FTRL map only
    # for q = 2; for q = 4 it is a different memory, and it scales like eta^(3-q) instead of eta.
    from refmem.memories.moneta import moneta_recurrent

    inp = draw("moneta", 3, xp=xp)
    args = [to_numpy(inp[n]) for n in ("q", "k", "v", "alpha", "eta")]
    M0 = np.zeros((2, 3, 4))
    for lq, differs in ((2.0, False), (4.0, True)):
        _, M = moneta_recurrent(**inp, lq=lq)
        _, M_printed = moneta_reference(*args, 3.0, lq, M0, printed=True)
        err = rel_error(to_numpy(M), M_printed, np)
        assert (err > 0.1) if differs else (err <= 64 * 6 * EPS)
    # homogeneity of one step from M = 0: consistent M_1 is linear in eta, the printed one has degree 3 - q = -1
    one = {n: (a[..., :1, :] if a.ndim == 3 else a[..., :1]) for n, a in inp.items()}
    _, M_a = moneta_recurrent(**one, lq=4.0)
    _, M_b = moneta_recurrent(**dict(one, eta=2.0 * one["eta"]), lq=4.0)
    assert rel_error(M_b, 2.0 * M_a, xp) <= 16 * EPS
    one_np = [to_numpy(one[n]) for n in ("q", "k", "v", "alpha", "eta")]
    _, P_a = moneta_reference(*one_np, 3.0, 4.0, M0, printed=True)
    one_np[4] = 2.0 * one_np[4]
    _, P_b = moneta_reference(*one_np, 3.0, 4.0, M0, printed=True)
    assert rel_error(P_b, 0.5 * P_a, np) <= 16 * EPS


def test_moneta_closed_equals_iterative_and_scipy():
    from refmem.checks.miras_scipy import _moneta_problem, scipy_argmin
    from refmem.level import solve
    from refmem.memories.moneta import moneta_level

    import array_api_compat.numpy as npx

    for seed in (31, 32):
        M_t, k, v = _moneta_problem(seed)
        for step in ("explicit", "implicit"):
            level = moneta_level(0.9, 0.3, p=3.0, lq=4.0, step=step)
            ref, g = scipy_argmin(level, M_t, k, v)
            assert g <= 1e-12
            if step == "explicit":
                closed, _ = solve(level, M_t, k, v)
                assert rel_error(closed, ref, npx) <= 1e-10  # refmem.checks.miras_scipy.SCIPY_TOL
            else:
                with pytest.raises(ClosedFormUnavailable):
                    solve(level, M_t, k, v)
            it, _ = solve(level, M_t, k, v, method="iterative")
            assert rel_error(it, ref, npx) <= 1e-10


def test_moneta_numpy_equals_strict_and_deep():
    from refmem.memories.moneta import moneta_deep_recurrent, moneta_recurrent

    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("moneta", 2, batch=(2, 2), d_v=4, xp=xp)
            o, M = moneta_recurrent(**inp)
            od, W = moneta_deep_recurrent(**inp, hidden=3)
            outs.append([to_numpy(x) for x in (o, M, od, W[0], W[1])])
    for x, y in zip(*outs):
        assert rel_error(x, y, np) <= 1e-13  # identical operations; powers may round differently by an ulp


def test_moneta_deep_explicit_closed_equals_mirror_step_per_matrix(xp):
    from refmem.memories.moneta import moneta_deep_recurrent

    inp = draw("moneta", 6, T=1, d_v=3, d_k=3, xp=xp)
    W0 = make_initial_state(1, (2,), 3, xp, h=2)
    _, (W1, W2) = moneta_deep_recurrent(**inp, p=3.0, lq=4.0, initial_state=W0)
    _, g1, g2 = deep_loss_grad(W0[0], W0[1], inp["k"][:, 0, :], inp["v"][:, 0, :], ResidualLoss("lp", p=3.0), xp)
    a, e = to_numpy(inp["alpha"][:, 0])[:, None, None], to_numpy(inp["eta"][:, 0])[:, None, None]
    for W, Wt, g in ((W1, W0[0], g1), (W2, W0[1], g2)):
        A = a * np_lq_mirror(to_numpy(Wt), 4.0) - e * to_numpy(g)
        assert rel_error(to_numpy(W), np_lq_mirror(A, 4.0 / 3.0), np) <= 1e-13


def test_moneta_bad_inputs(xp):
    from refmem.memories.moneta import moneta_recurrent

    inp = draw("moneta", 0, xp=xp)
    with pytest.raises(ValueError, match="q must be"):
        moneta_recurrent(**inp, lq=1.0)
    with pytest.raises(ValueError, match="p must be"):
        moneta_recurrent(**inp, p=0.5)
    with pytest.raises(ValueError, match="alpha"):
        moneta_recurrent(**dict(inp, alpha=inp["alpha"] * 2.0))
    with pytest.raises(ValueError, match="eta"):
        moneta_recurrent(**dict(inp, eta=inp["eta"] * 0.0))
    with pytest.raises(ValueError, match="initial_state"):
        moneta_recurrent(**inp, initial_state=xp.zeros((3, 4), dtype=xp.float64))


# --- on the deep memory


def _deep_F(W, W_t, k, v, loss, ret, xp):
    """The implicit level's stated objective l(W) + Ret(W1, W1_t) + Ret(W2, W2_t) (for comparisons)."""
    from refmem.memories.residual_mlp import deep_loss

    r = ret.bind(xp, xp.float64)
    return deep_loss(W[0], W[1], k, v, loss, xp) + r.value(W[0], W_t[0], xp) + r.value(W[1], W_t[1], xp)


@pytest.mark.parametrize("model", ["yaad", "moneta", "memora"])
def test_deep_miras_steps_closed_equals_iterative_and_implicit_is_a_minimiser(xp, model):
    from refmem.memories.memora import make_initial_state as simplex_state
    from refmem.retentions.kl_simplex import KLSimplex
    from refmem.retentions.lq_moneta import LqMoneta

    W1, W2, k, v = deep_checks.deep_problem(xp, seed=13, d=3, h=3)
    if model == "yaad":
        ret, loss, W0 = ForgetGate(eta=0.3, alpha=0.9), ResidualLoss("huber", delta=0.5), (W1, W2)
    elif model == "moneta":
        ret, loss, W0 = LqMoneta(q=4.0, alpha=0.9, eta=0.3), ResidualLoss("lp", p=3.0), (W1, W2)
    else:
        ret, loss = KLSimplex(eta=0.5, a=2.0, c=1.0), ResidualLoss("l2")
        W0 = (simplex_state(1, (2,), 3, 3, xp), simplex_state(2, (2,), 3, 3, xp))
    (A, B), _ = deep_step(W0, k, v, retention=ret, loss=loss)
    (A2, B2), rep = deep_step(W0, k, v, retention=ret, loss=loss, method="iterative")
    assert rep.converged
    # explicit level: <g, W> + Ret(W, W_t), Ret strictly convex near the solution; solvers stop at 1e-12
    assert max(rel_error(A2, A, xp), rel_error(B2, B, xp)) <= CLOSED_VS_ITERATIVE
    if xp.__name__ == "array_api_strict" and model != "memora":
        return  # the implicit deep solves are slow on the strict backend; numpy covers them
    (Ai, Bi), rep_i = deep_step(W0, k, v, retention=ret, loss=loss, step="implicit", method="iterative")
    assert rep_i.converged
    # the implicit step minimises F = l + Ret: no point tried here may beat it (the explicit step's
    # result and the start are feasible points; on the simplex too)
    F_imp = to_numpy(_deep_F((Ai, Bi), W0, k, v, loss, ret, xp))
    for W in ((A, B), W0):
        assert np.all(F_imp <= to_numpy(_deep_F(W, W0, k, v, loss, ret, xp)) + 1e-12)


def test_deep_miras_scans_numpy_equals_strict():
    from refmem.memories.memora import memora_deep_recurrent
    from refmem.memories.moneta import moneta_deep_recurrent

    outs = []
    for name in ("numpy", "array_api_strict"):
        with refmem.backend(name) as xp:
            inp = draw("moneta", 4, T=2, d_k=3, d_v=3, xp=xp)
            W0 = make_initial_state(3, (2,), 3, xp)
            o1, W = moneta_deep_recurrent(**inp, initial_state=W0, method="iterative")
            inp = draw("memora", 4, T=2, d_k=3, d_v=3, xp=xp)
            o2, U = memora_deep_recurrent(**inp, method="iterative")
            outs.append([to_numpy(x) for x in (o1, W[0], W[1], o2, U[0], U[1])])
    for x, y in zip(*outs):  # the same iterations on the same kernels
        assert rel_error(x, y, np) <= 1e-12
