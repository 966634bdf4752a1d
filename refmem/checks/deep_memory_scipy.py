"""NumPy-only ``refmem verify`` check: the deep memory's implicit step against SciPy's L-BFGS.

This module is NumPy-only (SciPy works on NumPy arrays): whatever backend
``refmem verify`` runs on, the check builds its problem in NumPy. The implicit
step of the deep memory has no closed form, so the independent witness is a
different minimiser (L-BFGS-B, SciPy) of the same stated objective
``l(W; k, v) + 1/(2 eta) ||W - alpha W_t||^2``; both use the hand-written
gradient, itself checked against finite differences in
:mod:`refmem.checks.sequence_memories_b`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, root

from ..memories.deep_memory import ResidualLoss, deep_loss_grad, deep_step
from ..metrics import rel_error
from ..retentions import ForgetGate
from .sequence_memories_b import deep_problem
from . import register_check


def lbfgs_deep_implicit(W1t, W2t, k, v, loss, eta, alpha):
    """Minimise ``l(W) + 1/(2 eta)||W - alpha W_t||^2`` for one (unbatched) problem with SciPy's L-BFGS-B."""
    import array_api_compat.numpy as npx

    d, h = W1t.shape
    C = np.concatenate([alpha * np.asarray(W1t).ravel(), alpha * np.asarray(W2t).ravel()])

    def fg(x):
        A, B = x[:d * h].reshape(d, h), x[d * h:].reshape(h, d)
        val, g1, g2 = deep_loss_grad(A, B, k, v, loss, npx)
        diff = x - C
        return float(val) + diff @ diff / (2 * eta), np.concatenate([np.ravel(g1), np.ravel(g2)]) + diff / eta

    res = minimize(fg, C, jac=True, method="L-BFGS-B", options={"gtol": 1e-13, "ftol": 0.0, "maxiter": 5000})
    # L-BFGS's line search compares values, so it stalls near gradient ~sqrt(eps); MINPACK's hybrid
    # Powell method then solves the optimality condition grad F = 0 itself, to rounding.
    # It may report "no good progress" once it sits at rounding level: judge it by the gradient it reaches.
    sol = root(lambda x: fg(x)[1], res.x, method="hybr", tol=1e-15)
    x = min((res.x, sol.x), key=lambda y: np.linalg.norm(fg(y)[1]) if np.all(np.isfinite(y)) else np.inf)
    g = np.linalg.norm(fg(x)[1])
    if not g <= 1e-12 * max(1.0, np.linalg.norm(x) / eta):
        raise RuntimeError(f"scipy did not reach the optimality condition: ||grad F|| = {g:.2e}")
    return x[:d * h].reshape(d, h), x[d * h:].reshape(h, d)


def _register(lname, loss):
    @register_check("deep_memory", f"implicit step (GD) == scipy L-BFGS + root polish ({lname}, NumPy)")
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
