"""NumPy-only ``refmem verify`` check: the deep memory's implicit step against SciPy (BFGS + MINPACK root).

This module is NumPy-only (SciPy works on NumPy arrays): whatever backend
``refmem verify`` runs on, the check builds its problem in NumPy. The implicit
step of the deep memory has no closed form, so the independent witness is a
different solver (SciPy: BFGS, then MINPACK's root finder on the optimality
condition) of the same stated objective
``l(W; k, v) + 1/(2 eta) ||W - alpha W_t||^2``; both use the hand-written
gradient, itself checked against finite differences in
:mod:`refmem.checks.deep_memory`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, root

from ..memories.deep_memory import deep_step
from ..memories.residual_mlp import ResidualLoss, deep_loss_grad
from ..metrics import rel_error
from ..retentions import ForgetGate
from .deep_memory import deep_problem
from .registry import register_check


def lbfgs_deep_implicit(W1t, W2t, k, v, loss, eta, alpha):
    """Minimiser of ``l(W) + 1/(2 eta)||W - alpha W_t||^2`` for one (unbatched) problem by SciPy (BFGS, then the root of grad F)."""
    import array_api_compat.numpy as npx

    d, h = W1t.shape
    C = np.concatenate([alpha * np.asarray(W1t).ravel(), alpha * np.asarray(W2t).ravel()])

    def fg(x):
        A, B = x[:d * h].reshape(d, h), x[d * h:].reshape(h, d)
        val, g1, g2 = deep_loss_grad(A, B, k, v, loss, npx)
        diff = x - C
        return float(val) + diff @ diff / (2 * eta), np.concatenate([np.ravel(g1), np.ravel(g2)]) + diff / eta

    # The problem is non-convex: a descent method (SciPy's BFGS) first finds the minimiser's basin;
    # its value-based line search stalls near gradients of sqrt(eps), so MINPACK's hybrid Powell
    # method then solves the optimality condition grad F = 0 from there, to rounding. hybr may report
    # "no progress" once it sits at rounding: the gradient it reaches decides, among points no
    # higher than BFGS's.
    res = minimize(fg, C, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 5000})
    f_bfgs = fg(res.x)[0]
    cands = [res.x] + [y for y in [root(lambda x: fg(x)[1], res.x, method="hybr", tol=1e-15).x]
                       if np.all(np.isfinite(y)) and fg(y)[0] <= f_bfgs + 1e-12 * max(1.0, abs(f_bfgs))]
    x = min(cands, key=lambda y: np.linalg.norm(fg(y)[1]) if np.all(np.isfinite(y)) else np.inf)
    g = np.linalg.norm(fg(x)[1])
    if not g <= 1e-12 * max(1.0, np.linalg.norm(x) / eta):
        raise RuntimeError(f"scipy did not reach the optimality condition: ||grad F|| = {g:.2e}")
    return x[:d * h].reshape(d, h), x[d * h:].reshape(h, d)


def _register(lname, loss):
    @register_check("deep_memory", f"implicit step (GD) == SciPy BFGS + root of grad F ({lname}, NumPy)")
    def check(xp, loss=loss):
        # The SciPy solution solves grad F = 0 to rounding (~1e-15 relative); GD stops at relative
        # gradient 1e-12 against mu ||W||, mu = 1/eta - |negative curvature of l| >= 1/eta / 2 here, so
        # it is within ~2e-12 relative of the minimiser: 1e-10 bounds the difference with margin.
        import array_api_compat.numpy as npx

        W1, W2, k, v = deep_problem(npx, seed=8, batch=())
        eta, alpha = 0.3, 0.9
        (A, B), _ = deep_step((W1, W2), k, v, retention=ForgetGate(eta=eta, alpha=alpha), loss=loss,
                              step="implicit", method="iterative")
        A_ref, B_ref = lbfgs_deep_implicit(W1, W2, k, v, loss, eta, alpha)
        return max(rel_error(A, npx.asarray(A_ref), npx), rel_error(B, npx.asarray(B_ref), npx)), 1e-10


for _lname, _loss in {"l2": ResidualLoss("l2"), "lp(p=3)": ResidualLoss("lp", p=3.0),
                      "huber": ResidualLoss("huber", delta=0.5)}.items():
    _register(_lname, _loss)
