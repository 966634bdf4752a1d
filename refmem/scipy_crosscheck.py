"""Cross-check any level against SciPy's L-BFGS (NumPy-only module).

This module is a deliberate NumPy/SciPy boundary: it converts the inputs to
NumPy float64, minimises the level's stated objective (P) with
``scipy.optimize.minimize(method="L-BFGS-B")`` using refmem's objective and
retention *values and gradients* only, and returns a NumPy array. It is an
extra, independent witness next to refmem's own iterative solvers; the core
never imports it.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

import array_api_compat.numpy as npx

from .level import Level, problem
from .solvers.report import ConvergenceError, SolveReport


def lbfgs_solve(level: Level, M_t, k, v, *, gtol: float = 1e-12, max_iter: int = 10000):
    """Minimise (P) for one level with SciPy's L-BFGS-B; returns ``(M, report)`` as NumPy.

    The batch is flattened into one vector: the problems are independent, so
    the sum of their objectives has the same minimiser.
    """
    conv = lambda a: None if a is None else npx.asarray(np.asarray(a, dtype=np.float64))  # noqa: E731
    M_t, k, v = conv(M_t), conv(k), conv(v)
    prob = problem(level, M_t, k, v)
    if prob.prox is not None:
        raise ValueError("lbfgs_solve: the level has a non-smooth part; L-BFGS needs a smooth objective")
    shape = tuple(prob.x0.shape)

    def fun(x):
        X = npx.asarray(x.reshape(shape))
        return float(np.sum(prob.value(X))), np.asarray(prob.grad(X), dtype=np.float64).ravel()

    x0 = np.asarray(prob.x0).ravel()
    g0 = max(float(np.max(np.abs(fun(x0)[1]))), np.finfo(np.float64).tiny)
    res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"gtol": gtol * g0, "ftol": 0.0, "maxiter": max_iter, "maxcor": 50})
    rel = float(np.max(np.abs(fun(res.x)[1]))) / g0
    # L-BFGS-B may end with a line-search "failure" once rounding hides further
    # decrease; the relative gradient decides, not the message.
    report = SolveReport("iterative", "scipy-lbfgs", int(res.nit), rel, gtol, rel <= gtol or bool(res.success))
    if not report.converged:
        raise ConvergenceError(report, res.message if isinstance(res.message, str) else str(res.message))
    return res.x.reshape(shape), report
