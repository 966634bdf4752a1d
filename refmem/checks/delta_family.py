"""``refmem verify`` checks of the linear / delta family: gated linear attention, the (gated) delta rule, Longhorn, DGD.

Per memory, the scan step == its solved level (:mod:`refmem.checks.scan_steps`),
with per-channel gates where the memory has them. Identities: gated linear
attention with ``alpha = 1`` == linear attention; the delta rule with unit keys
and ``b in (0, 1)`` == the implicit l2 step with ``eta = b / (1 - b)``; the gated
delta rule == an explicit l2 step at ``a M``; Longhorn stays bounded where the
explicit delta rule diverges; DGD with the squared-error surprise == its hand form.
Tolerances: :mod:`refmem.checks.scan_steps`.
"""

from __future__ import annotations

from ..level import solve
from ..memories import MEMORIES
from ..metrics import rel_error
from ..problems import rng, to_backend
from .registry import register_check
from .scan_steps import SHAPE, register_step_checks, rounding_tol, slice_step

# --- gated linear attention

register_step_checks("gated_linear_attention", SHAPE["d_k"])


def _gla_per_channel_inputs(xp):
    from ..memories.gated_linear_attention import make_inputs

    return make_inputs(3, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp, per_channel=True)


register_step_checks("gated_linear_attention", SHAPE["d_k"], label="per-channel alpha", make=_gla_per_channel_inputs)


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


# --- gated delta rule

register_step_checks("gated_delta_rule", SHAPE["d_k"])


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


# --- Longhorn

def _longhorn_per_channel_inputs(xp):
    from ..memories.longhorn import make_inputs

    return make_inputs(5, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp, per_channel=True)


register_step_checks("longhorn", SHAPE["d_k"])
register_step_checks("longhorn", SHAPE["d_k"], label="per-channel beta", make=_longhorn_per_channel_inputs)

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


# --- the delta rule as an implicit step

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


# --- DGD (value generated by the layer)

register_step_checks("dgd", SHAPE["d_k"])


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
