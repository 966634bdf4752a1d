"""NumPy-only ``refmem verify`` checks: Moneta's and Memora's steps against SciPy.

This module is NumPy-only (SciPy works on NumPy arrays): whatever backend
``refmem verify`` runs on, its problems are built in NumPy. The witness
minimises each level's *stated* objective (:func:`refmem.level.problem`, the
objective's and retention's values and gradients, nothing of any closed form)
with SciPy: MINPACK's hybrid Powell method on the optimality condition
``grad F = 0`` (with L-BFGS first when that alone does not reach it; L-BFGS's
line search compares values and stalls near gradients of ``sqrt(eps)``, the
root finder does not). These problems are convex, so the stationary point
is the minimiser. On the scaled simplex
(Memora) the rows are parametrised as ``M = c softmax(z)`` with the last
logit of each row fixed to 0, so the problem is unconstrained and its
stationary points are the simplex minimiser.

Moneta's implicit step and Memora's implicit step have no closed form: there
the compared pair is refmem's iterative solver and SciPy.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, root

import array_api_compat.numpy as npx

from ..level import problem, solve
from ..metrics import rel_error
from ..problems import rng
from .registry import register_check


def _polish(fun_grad, x0, scale):
    """Root of the gradient by MINPACK's hybrid Powell method; L-BFGS first only if that does not get there."""
    sol = root(lambda x: fun_grad(x)[1], x0, method="hybr", tol=1e-15)
    cands = [sol.x]
    if not np.linalg.norm(fun_grad(sol.x)[1]) <= 1e-13 * scale:
        res = minimize(fun_grad, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-14 * scale, "ftol": 0.0,
                                                                           "maxiter": 20000})
        cands += [res.x, root(lambda x: fun_grad(x)[1], res.x, method="hybr", tol=1e-15).x]
    # hybr may report "no progress" once it sits at rounding: judge by the gradient it reaches
    best = min(cands, key=lambda y: np.linalg.norm(fun_grad(y)[1]) if np.all(np.isfinite(y)) else np.inf)
    return best, float(np.linalg.norm(fun_grad(best)[1]))


def scipy_argmin(level, M_t, k, v):
    """Minimiser of the level's stated objective by SciPy (batch flattened), and its final gradient norm."""
    prob = problem(level, M_t, k, v)
    shape = tuple(prob.x0.shape)

    def fg(x):
        X = npx.asarray(x.reshape(shape))
        return float(np.sum(prob.value(X))), np.asarray(prob.grad(X)).ravel()

    x0 = np.asarray(prob.x0).ravel()
    x, g = _polish(fg, x0, max(np.linalg.norm(fg(x0)[1]), 1e-300))
    return x.reshape(shape), g


def scipy_argmin_simplex(level, M_t, k, v, c):
    """As :func:`scipy_argmin` over rows ``c softmax(z)`` (last logit 0): the KL retention's domain."""
    prob = problem(level, M_t, k, v)
    shape = tuple(prob.x0.shape)
    d = shape[-1]

    def to_M(z):
        Z = np.concatenate([z.reshape(shape[:-1] + (d - 1,)), np.zeros(shape[:-1] + (1,))], axis=-1)
        E = np.exp(Z - Z.max(-1, keepdims=True))
        return c * E / E.sum(-1, keepdims=True)

    def fg(z):
        M = to_M(z)
        G = np.asarray(prob.grad(npx.asarray(M)))
        S = M / c
        dZ = c * S * (G - np.sum(S * G, axis=-1, keepdims=True))  # chain rule through the row softmax
        return float(np.sum(prob.value(npx.asarray(M)))), dZ[..., :-1].ravel()

    Z0 = np.log(np.asarray(prob.x0))
    z0 = (Z0 - Z0[..., -1:])[..., :-1].ravel()
    z, g = _polish(fg, z0, max(np.linalg.norm(fg(z0)[1]), 1e-300))
    return to_M(z), g


def _moneta_problem(seed):
    g = rng(seed)
    M_t = npx.asarray(g.standard_normal((1, 3, 4)))  # one problem: SciPy's root finder differences every variable
    k = npx.asarray(g.standard_normal((1, 4)) / 2.0)
    v = npx.asarray(g.standard_normal((1, 3)))
    return M_t, k, v


def _memora_problem(seed, c):
    from ..memories.memora import make_initial_state

    g = rng(seed)
    M_t = make_initial_state(seed + 1, (1,), 4, 3, npx, c=c)
    k = npx.asarray(g.standard_normal((1, 4)) / 2.0)
    v = npx.asarray(g.standard_normal((1, 3)))
    return M_t, k, v


# Tolerance. SciPy's solution solves grad F = 0 to rounding; the closed form is an explicit formula
# (forward error ~ a few eps per operation). Their difference is bounded by (rounding of grad F) /
# (local strong convexity), i.e. ~eps * kappa_loc; kappa_loc = (largest / smallest curvature of Ret
# at the solution) is below 1e3 for these problems (|M| entries within 1e-1..1e1: the lq Hessian
# scales like |M|^(q-2), the KL Hessian like 1/M on rows of sum c). 1e-10 leaves a margin of ~1e3.
SCIPY_TOL = 1e-10


@register_check("moneta", "explicit step closed == SciPy argmin of the stated objective (p = 3, q = 4, NumPy)",
                SCIPY_TOL)
def _moneta_explicit_scipy(xp):
    from ..memories.moneta import moneta_level

    M_t, k, v = _moneta_problem(1)
    level = moneta_level(0.9, 0.4, p=3.0, lq=4.0, step="explicit")
    closed, _ = solve(level, M_t, k, v)
    ref, _ = scipy_argmin(level, M_t, k, v)
    return rel_error(closed, npx.asarray(ref), npx)


@register_check("moneta", "implicit step: refmem iterative == SciPy (p = 3, q = 4, NumPy)", SCIPY_TOL)
def _moneta_implicit_scipy(xp):
    from ..memories.moneta import moneta_level

    M_t, k, v = _moneta_problem(2)
    level = moneta_level(0.9, 0.4, p=3.0, lq=4.0, step="implicit")
    it, _ = solve(level, M_t, k, v, method="iterative")
    ref, _ = scipy_argmin(level, M_t, k, v)
    return rel_error(it, npx.asarray(ref), npx)


@register_check("memora", "explicit step closed (softmax) == SciPy argmin on the simplex (NumPy)", SCIPY_TOL)
def _memora_explicit_scipy(xp):
    from ..memories.memora import memora_level

    M_t, k, v = _memora_problem(3, 1.5)
    level = memora_level(0.5, a=2.0, c=1.5, step="explicit")
    closed, _ = solve(level, M_t, k, v)
    ref, _ = scipy_argmin_simplex(level, M_t, k, v, 1.5)
    return rel_error(closed, npx.asarray(ref), npx)


@register_check("memora", "implicit step: mirror descent == SciPy argmin on the simplex (NumPy)", SCIPY_TOL)
def _memora_implicit_scipy(xp):
    from ..memories.memora import memora_level

    M_t, k, v = _memora_problem(4, 1.5)
    level = memora_level(0.5, a=2.0, c=1.5, step="implicit")
    it, _ = solve(level, M_t, k, v, method="iterative")
    ref, _ = scipy_argmin_simplex(level, M_t, k, v, 1.5)
    return rel_error(it, npx.asarray(ref), npx)
