"""``refmem verify`` checks for the gated / delta family, Titans and Omega (MATH.md 5, issue 3 part 4).

Per memory: the scan's step (the recurrent function run for one token from a
given state) == ``solve(step_level(...), method="closed")`` == ``solve(...,
method="iterative")``. Identities: gated linear attention with ``alpha = 1``
== linear attention; the delta rule with unit keys and ``b in (0, 1)`` == the
implicit l2 step with ``eta = b / (1 - b)``; the gated delta rule == an
explicit l2 step at ``a M``; Longhorn stays bounded where the explicit delta
rule diverges; Omega with ``c = 1`` == the delta rule.

Tolerances (float64 unless the backend's dtype says otherwise):

- closed vs iterative: :data:`CLOSED_VS_ITERATIVE_TOL` = 1e-10 relative (the
  solvers stop at relative optimality 1e-12; these steps have condition
  number ``<= 1 + eta ||k||^2 < 10``);
- two algebraically equal expressions (scan vs closed form, identities):
  :func:`rounding_tol` ``= 64 d eps`` relative, ``d`` the longest inner
  product (each entry is a sum of ``O(d)`` products of O(1) numbers, so the
  two roundings differ by at most ``~2 d eps`` per step; 64 covers ``T <= 16``
  steps of accumulation with margin).
"""

from __future__ import annotations

from ..level import solve
from ..memories import MEMORIES
from ..metrics import rel_error
from ..problems import rng, to_backend
from . import register_check

CLOSED_VS_ITERATIVE_TOL = 1e-10
SHAPE = dict(batch=(2,), T=6, d_k=4, d_v=3)


def rounding_tol(xp, dtype, d: int) -> float:
    """Tolerance for two algebraically equal float computations with inner products of length ``d``."""
    return 64 * d * float(xp.finfo(dtype).eps)


def gate_at(g, k, t: int):
    """Gate ``g`` at step ``t``: ``g[..., t]`` (one per step) or ``g[..., t, :]`` (per channel)."""
    return g[..., t] if tuple(g.shape) == tuple(k.shape[:-1]) else g[..., t, :]


def is_per_channel(g, k) -> bool:
    return tuple(g.shape) != tuple(k.shape[:-1])


def slice_step(inputs: dict, gates: tuple, t: int) -> dict:
    """The inputs of token ``t`` alone, as a length-1 sequence (gates sliced along their step axis)."""
    k = inputs["k"]
    out = {n: inputs[n][..., t:t + 1, :] for n in ("q", "k", "v")}
    for n in gates:
        g = inputs[n]
        out[n] = g[..., t:t + 1] if not is_per_channel(g, k) else g[..., t:t + 1, :]
    return out


def step_problem(spec, inputs, t, M_prev):
    """``(level, keys, values)`` that step ``t`` of memory ``spec`` solves from ``M_prev``, read off the registry.

    The level is ``spec.step_level(**gates at t)``; it is applied to ``(k_t, v_t)``,
    or to ``(k_t, spec.step_value(M_prev, k_t, v_t))`` when the memory fits another
    value (DGD), or to the window of the last ``c`` tokens when ``spec.windowed``
    (Omega: keys ``[..., c, d_k]`` and values ``[..., c, d_v]``, absent tokens as zero rows).
    """
    k, v = inputs["k"], inputs["v"]
    gates = {}
    per_channel = False
    for n in spec.gates:
        g = inputs[n]
        if g.ndim < k.ndim - 1:  # a gate shared by all steps (Omega's gamma [c])
            gates[n] = g
            continue
        gates[n] = gate_at(g, k, t)
        per_channel = per_channel or (is_per_channel(g, k) and not spec.windowed)
    level = spec.step_level(**gates, per_channel=True) if per_channel else spec.step_level(**gates)
    if spec.windowed:
        from ..backends import namespace_of
        from ..memories.omega import _windows

        c = inputs["gamma"].shape[-1]
        xp = namespace_of(k)
        return level, _windows(k, c, xp)[..., t:t + c, :], _windows(v, c, xp)[..., t:t + c, :]  # (.., c, d)
    k_t, v_t = k[..., t, :], v[..., t, :]  # (.., d_k), (.., d_v)
    if spec.step_value is not None:
        v_t = spec.step_value(M_prev, k_t, v_t)
    return level, k_t, v_t


def prefix(inputs: dict, gates: tuple, t: int) -> dict:
    """The inputs of tokens ``0 .. t - 1`` (gates of shape ``[c]``, shared by all steps, kept whole)."""
    k = inputs["k"]
    out = {n: inputs[n][..., :t, :] for n in ("q", "k", "v")}
    for n in gates:
        g = inputs[n]
        if g.ndim < k.ndim - 1:  # a gate shared by all steps (Omega's gamma [c])
            out[n] = g
        else:
            out[n] = g[..., :t] if not is_per_channel(g, k) else g[..., :t, :]
    return out



def step_errors(name: str, xp, *, seed: int = 0, inputs=None, shape=None):
    """Largest relative errors over a scan: (scan step vs closed, closed vs iterative).

    Starts from a random state, so the first step is as informative as the others.
    The scan's step is the recurrent function run for token ``t`` alone from
    ``M_{t-1}``, or (windowed memories) the scan of tokens ``0..t`` from ``M_0``.
    """
    spec = MEMORIES[name]
    shape = dict(SHAPE, **(shape or {}))
    if inputs is None:
        inputs = spec.make_inputs(seed, shape["batch"], shape["T"], shape["d_k"], shape["d_v"], xp)
    k, v = inputs["k"], inputs["v"]
    M0 = to_backend(rng(seed + 1).standard_normal(tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])), xp)
    M = M0
    e_scan = e_iter = 0.0
    for t in range(k.shape[-2]):
        if spec.windowed:  # the step depends on earlier tokens: the scan of the prefix
            _, M_next = spec.recurrent(**prefix(inputs, spec.gates, t + 1), initial_state=M0)
        else:
            _, M_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M)
        level, k_t, v_t = step_problem(spec, inputs, t, M)
        M_closed, _ = solve(level, M, k_t, v_t, method="closed")
        M_iter, _ = solve(level, M, k_t, v_t, method="iterative")
        e_scan = max(e_scan, rel_error(M_next, M_closed, xp))
        e_iter = max(e_iter, rel_error(M_iter, M_closed, xp))
        M = M_next
    return e_scan, e_iter


def _register_step_checks(name: str, d: int, *, label: str = "", make=None):
    """Register the two per-step checks of memory ``name`` (``make(xp)`` gives other inputs than its make_inputs)."""
    suffix = f" ({label})" if label else ""

    def errors(xp):
        return step_errors(name, xp, inputs=None if make is None else make(xp))

    @register_check(name, "scan step == solve(step_level, closed)" + suffix)
    def _scan_vs_closed(xp):
        return errors(xp)[0], rounding_tol(xp, xp.float64, d)

    @register_check(name, "step closed == iterative" + suffix, CLOSED_VS_ITERATIVE_TOL)
    def _closed_vs_iterative(xp):
        return errors(xp)[1]


# --- gated linear attention ------------------------------------------------------------------

_register_step_checks("gated_linear_attention", SHAPE["d_k"])


def _gla_per_channel_inputs(xp):
    from ..memories.gated_linear_attention import _make_inputs

    return _make_inputs(3, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp, per_channel=True)


_register_step_checks("gated_linear_attention", SHAPE["d_k"], label="per-channel alpha", make=_gla_per_channel_inputs)


@register_check("gated_linear_attention", "alpha = 1 == linear attention")
def _gla_alpha_one(xp):
    from ..memories.gated_linear_attention import gated_linear_attention_recurrent
    from ..memories.linear_attention import linear_attention_recurrent

    inputs = MEMORIES["linear_attention"].make_inputs(4, (2,), 8, 4, 3, xp)
    ones = xp.ones(tuple(inputs["k"].shape[:-1]), dtype=xp.float64)
    o1, M1 = gated_linear_attention_recurrent(**inputs, alpha=ones)
    o2, M2 = linear_attention_recurrent(**inputs)
    # multiplying by exactly 1.0 is exact: the two must agree to the last bit
    return max(rel_error(o1, o2, xp), rel_error(M1, M2, xp)), rounding_tol(xp, xp.float64, 1)


# --- gated delta rule ------------------------------------------------------------------------

_register_step_checks("gated_delta_rule", SHAPE["d_k"])


@register_check("gated_delta_rule", "== explicit l2 step at a M: a M - b (a M k - v) k^T")
def _gdr_explicit_at_aM(xp):
    """The scan against the stated formula built from the generic l2 gradient at the retained state."""
    from ..objectives import L2

    spec = MEMORIES["gated_delta_rule"]
    inputs = spec.make_inputs(7, (2,), 6, 4, 3, xp)
    k, v, a, b = inputs["k"], inputs["v"], inputs["alpha"], inputs["beta"]
    M = to_backend(rng(8).standard_normal((2, 3, 4)), xp)
    err = 0.0
    for t in range(k.shape[-2]):
        _, M_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M)
        aM = a[..., t, None, None] * M
        ref = aM - b[..., t, None, None] * L2().grad(aM, k[..., t, :], v[..., t, :], xp)
        err = max(err, rel_error(M_next, ref, xp))
        M = M_next
    return err, rounding_tol(xp, xp.float64, 4)


# --- Longhorn ---------------------------------------------------------------------------------


def _longhorn_per_channel_inputs(xp):
    from ..memories.longhorn import _make_inputs

    return _make_inputs(5, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp, per_channel=True)


_register_step_checks("longhorn", SHAPE["d_k"])
_register_step_checks("longhorn", SHAPE["d_k"], label="per-channel beta", make=_longhorn_per_channel_inputs)

LONGHORN_T = 8


def longhorn_vs_delta_residuals(xp, T: int = LONGHORN_T, b: float = 3.0):
    """``(||r_T|| delta, ||r_T|| Longhorn, ||r_0||)`` for a constant unit key, constant value, step ``b``.

    With ``||k|| = 1`` the residual ``r = M k - v`` obeys ``r <- (1 - b) r`` under the
    explicit delta step and ``r <- r / (1 + b)`` under the implicit step, so for
    ``b = 3`` (``b ||k||^2 > 2``) the first grows as ``2^T`` and the second decays as ``4^-T``.
    """
    from ..linalg import matvec
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.longhorn import longhorn_recurrent

    g = rng(31)
    k1 = g.standard_normal(4)
    k1 = k1 / (k1 @ k1) ** 0.5
    v1 = g.standard_normal(3)
    q = to_backend(g.standard_normal((T, 4)), xp)
    k = to_backend([k1] * T, xp)
    v = to_backend([v1] * T, xp)
    beta = to_backend([b] * T, xp)
    M0 = to_backend(g.standard_normal((3, 4)), xp)
    _, M_delta = delta_rule_recurrent(q, k, v, beta, initial_state=M0)
    _, M_long = longhorn_recurrent(q, k, v, beta, initial_state=M0)

    def res(M):
        r = matvec(M, k[0, :]) - v[0, :]
        return float(xp.sqrt(xp.sum(r * r)))

    return res(M_delta), res(M_long), res(M0)


@register_check("longhorn", "bounded where the explicit delta rule diverges (b ||k||^2 = 3): residual 4^-T vs 2^T")
def _longhorn_bounded(xp):
    r_delta, r_long, r0 = longhorn_vs_delta_residuals(xp)
    T = LONGHORN_T
    err = max(abs(r_delta / (2.0**T * r0) - 1), abs(r_long / (4.0**-T * r0) - 1))
    # rounding in r_T is ~ d eps (||M|| ||k|| + ||v||) per step; relative to ||r_T|| = 4^-T ||r_0||
    # that is amplified by 4^T (Longhorn); the delta rule's relative error stays ~ T d eps.
    return err, rounding_tol(xp, xp.float64, 4) * T * 4.0**T


# --- delta rule identity ----------------------------------------------------------------------


@register_check("delta_rule", "unit keys, b in (0,1): explicit step == implicit step with eta = b/(1-b)")
def _delta_is_implicit(xp):
    from ..level import Level
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.longhorn import longhorn_recurrent
    from ..objectives import L2
    from ..retentions import LocalL2

    spec = MEMORIES["delta_rule"]
    g = rng(41)
    k = g.standard_normal((2, 8, 4))
    k = k / ((k * k).sum(-1, keepdims=True)) ** 0.5
    inputs = spec.make_inputs(41, (2,), 8, 4, 3, xp)
    inputs["k"] = to_backend(k, xp)
    b = inputs["beta"]
    eta = b / (1 - b)
    M0 = to_backend(g.standard_normal((2, 3, 4)), xp)
    # whole scan: the delta rule vs Longhorn with eta = b / (1 - b)
    o1, M1 = delta_rule_recurrent(**inputs, initial_state=M0)
    o2, M2 = longhorn_recurrent(inputs["q"], inputs["k"], inputs["v"], eta, initial_state=M0)
    err = max(rel_error(o1, o2, xp), rel_error(M1, M2, xp))
    # each step: the delta scan's step vs solve(implicit l2 level, eta = b/(1-b)) in closed form
    M = M0
    for t in range(8):
        _, M_next = delta_rule_recurrent(**slice_step(inputs, ("beta",), t), initial_state=M)
        M_imp, _ = solve(Level(L2(), LocalL2(eta=eta[..., t]), "implicit"), M, inputs["k"][..., t, :],
                         inputs["v"][..., t, :], method="closed")
        err = max(err, rel_error(M_next, M_imp, xp))
        M = M_next
    # eta = b/(1-b) loses ~eps/(1-b) relative; b <= 0.95 bounds that by 20 eps per step
    return err, rounding_tol(xp, xp.float64, 4) * 20


# --- Titans (two levels per step) -------------------------------------------------------------


def titans_step_errors(xp, *, seed: int = 0, shape=None, inputs=None):
    """Largest relative errors over a scan of Titans: (scan step vs the two closed solves, closed vs iterative).

    Each step solves the momentum level (value = the surprise at ``M_{t-1}``), then
    the memory level (value = the new momentum), from a random ``(M_0, S_0)``.
    """
    from ..memories.titans import surprise, titans_levels

    spec = MEMORIES["titans"]
    shape = dict(SHAPE, **(shape or {}))
    if inputs is None:
        inputs = spec.make_inputs(seed, shape["batch"], shape["T"], shape["d_k"], shape["d_v"], xp)
    k, v = inputs["k"], inputs["v"]
    g = rng(seed + 1)
    state_shape = tuple(k.shape[:-2]) + (v.shape[-1], k.shape[-1])
    M, S = to_backend(g.standard_normal(state_shape), xp), to_backend(g.standard_normal(state_shape), xp)
    e_scan = e_iter = 0.0
    for t in range(k.shape[-2]):
        _, M_next, S_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M,
                                           initial_momentum=S, return_momentum=True)
        mom, mem = titans_levels(inputs["alpha"][..., t], inputs["eta"][..., t], inputs["theta"][..., t])
        u = surprise(M, k[..., t, :], v[..., t, :])
        S_closed, _ = solve(mom, S, None, u, method="closed")
        S_iter, _ = solve(mom, S, None, u, method="iterative")
        M_closed, _ = solve(mem, M, None, S_closed, method="closed")
        M_iter, _ = solve(mem, M, None, S_closed, method="iterative")
        e_scan = max(e_scan, rel_error(S_next, S_closed, xp), rel_error(M_next, M_closed, xp))
        e_iter = max(e_iter, rel_error(S_iter, S_closed, xp), rel_error(M_iter, M_closed, xp))
        M, S = M_next, S_next
    return e_scan, e_iter


@register_check("titans", "scan step == solve(momentum level) then solve(memory level), closed")
def _titans_scan_vs_closed(xp):
    return titans_step_errors(xp)[0], rounding_tol(xp, xp.float64, SHAPE["d_k"])


@register_check("titans", "both levels closed == iterative", CLOSED_VS_ITERATIVE_TOL)
def _titans_closed_vs_iterative(xp):
    return titans_step_errors(xp)[1]


@register_check("titans", "eta = 0, alpha = 0 (no momentum, no forgetting) == delta rule with b = theta")
def _titans_is_delta(xp):
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.titans import titans_recurrent

    inputs = MEMORIES["titans"].make_inputs(51, (2,), 8, 4, 3, xp)
    zeros = xp.zeros_like(inputs["alpha"])
    M0 = to_backend(rng(52).standard_normal((2, 3, 4)), xp)
    o1, M1 = titans_recurrent(inputs["q"], inputs["k"], inputs["v"], zeros, zeros, inputs["theta"],
                                     initial_state=M0)
    o2, M2 = delta_rule_recurrent(inputs["q"], inputs["k"], inputs["v"], inputs["theta"], initial_state=M0)
    return max(rel_error(o1, o2, xp), rel_error(M1, M2, xp)), rounding_tol(xp, xp.float64, 4) * 8


# --- DGD (value generated by the layer) -------------------------------------------------------


_register_step_checks("dgd", SHAPE["d_k"])


@register_check("dgd", "squared-error surprise: scan == hand form M - e (2 M k - v) k^T")
def _dgd_hand_form(xp):
    from ..linalg import matvec, outer, sq_norm

    spec = MEMORIES["dgd"]
    inputs = spec.make_inputs(61, (2,), 6, 4, 3, xp)
    k, v, b = inputs["k"], inputs["v"], inputs["beta"]
    M = to_backend(rng(62).standard_normal((2, 3, 4)), xp)
    err = 0.0
    for t in range(6):
        _, M_next = spec.recurrent(**slice_step(inputs, spec.gates, t), initial_state=M)
        e = b[..., t] / (1 + b[..., t] * sq_norm(k[..., t, :], xp))
        ref = M - e[..., None, None] * outer(2 * matvec(M, k[..., t, :]) - v[..., t, :], k[..., t, :])
        err = max(err, rel_error(M_next, ref, xp))
        M = M_next
    return err, rounding_tol(xp, xp.float64, 4)


# --- Omega (windowed) -------------------------------------------------------------------------


def _omega_shared_gamma_inputs(xp):
    inputs = MEMORIES["omega"].make_inputs(71, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp)
    inputs["gamma"] = to_backend([0.1, 0.2, 0.3, 0.4], xp)  # [c], c = 4 > 1: shared by every step
    return inputs


for _name in ("omega", "omega_implicit"):
    _register_step_checks(_name, SHAPE["d_k"])
_register_step_checks("omega", SHAPE["d_k"], label="shared gamma [c]", make=_omega_shared_gamma_inputs)


@register_check("omega", "c = 1, a = 1: explicit == delta rule, implicit == Longhorn (gamma = b)")
def _omega_c1(xp):
    from ..memories.delta_rule import delta_rule_recurrent
    from ..memories.longhorn import longhorn_recurrent
    from ..memories.omega import omega_recurrent

    inputs = MEMORIES["delta_rule"].make_inputs(72, (2,), 8, 4, 3, xp)
    q, k, v, b = inputs["q"], inputs["k"], inputs["v"], inputs["beta"]
    ones = xp.ones_like(b)
    M0 = to_backend(rng(73).standard_normal((2, 3, 4)), xp)
    err = 0.0
    for step, ref in (("explicit", delta_rule_recurrent), ("implicit", longhorn_recurrent)):
        o1, M1 = omega_recurrent(q, k, v, ones, b[..., None], step=step, initial_state=M0)
        o2, M2 = ref(q, k, v, b, initial_state=M0)
        err = max(err, rel_error(o1, o2, xp), rel_error(M1, M2, xp))
    return err, rounding_tol(xp, xp.float64, 4) * 8


@register_check("omega_implicit", "Woodbury c x c step == direct d_k x d_k normal-equation solve")
def _omega_woodbury_vs_direct(xp):
    from ..memories.omega import _windows, omega_implicit_recurrent

    spec = MEMORIES["omega_implicit"]
    inputs = spec.make_inputs(74, (2,), 6, 4, 3, xp, c=5)
    k, v, a, gam = inputs["k"], inputs["v"], inputs["alpha"], inputs["gamma"]
    c = gam.shape[-1]
    Kp, Vp = _windows(k, c, xp), _windows(v, c, xp)
    M0 = to_backend(rng(75).standard_normal((2, 3, 4)), xp)
    _, M_scan = omega_implicit_recurrent(**inputs, initial_state=M0)
    M = M0
    eye = xp.eye(4, dtype=k.dtype)
    for t in range(6):
        K, V, g = Kp[..., t:t + c, :], Vp[..., t:t + c, :], gam[..., t, :, None]  # (.., c, d)
        A = eye + xp.matrix_transpose(K) @ (g * K)  # (.., d_k, d_k): I + K^T G K, symmetric
        rhs = a[..., t, None, None] * M + xp.matrix_transpose(V) @ (g * K)  # (.., d_v, d_k)
        M = xp.matrix_transpose(xp.linalg.solve(A, xp.matrix_transpose(rhs)))  # M A = rhs
    # both solve systems with condition <= 1 + sum gam ||k||^2 (~ 10 here): ~ 10 d eps per step
    return rel_error(M_scan, M, xp), rounding_tol(xp, xp.float64, 4) * 10
