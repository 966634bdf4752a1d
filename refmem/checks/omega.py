"""``refmem verify`` checks of Omega: a level over the window of the last ``c`` tokens, explicit and implicit.

The scan's step == its solved window level (:mod:`refmem.checks.scan_steps`,
the registry's ``windowed`` memories), with per-step or shared ``gamma``;
``c = 1, a = 1`` is the delta rule (explicit) and Longhorn (implicit); the
implicit step's solve in the SVD basis of the weighted keys == the direct ``d_k x d_k`` solve.
"""

from __future__ import annotations

from ..memories import MEMORIES
from ..metrics import rel_error
from ..problems import rng, to_backend
from .registry import register_check
from .scan_steps import SHAPE, register_step_checks, rounding_tol

def _omega_shared_gamma_inputs(xp):
    inputs = MEMORIES["omega"].make_inputs(71, SHAPE["batch"], SHAPE["T"], SHAPE["d_k"], SHAPE["d_v"], xp)
    inputs["gamma"] = to_backend([0.1, 0.2, 0.3, 0.4], xp)  # [c], c = 4 > 1: shared by every step
    return inputs


for _name in ("omega", "omega_implicit"):
    register_step_checks(_name, SHAPE["d_k"])
register_step_checks("omega", SHAPE["d_k"], label="shared gamma [c]", make=_omega_shared_gamma_inputs)


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


@register_check("omega_implicit", "SVD-basis step == direct d_k x d_k normal-equation solve")
def _omega_svd_basis_vs_direct(xp):
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
