"""refmem: the reference implementation of nested associative memories.

Every level of a learning system is an associative memory updated by a small
proximal problem ``argmin_M l(M; k, v) + Ret(M, M_t)`` (Nested Learning,
Behrouz et al., NeurIPS 2025). refmem solves each level in closed form and by
iterative solvers, on any array-API backend, in float64 as an oracle.

Quick tour::

    import refmem
    from refmem import Level, solve
    from refmem.objectives import L2
    from refmem.retentions import LocalL2

    level = Level(L2(), LocalL2(eta=0.5), step="implicit")
    M, report = solve(level, M_t, k, v)                      # Sherman-Morrison
    M_it, it_report = solve(level, M_t, k, v, method="iterative")  # CG on (P)
"""

from . import memories  # the MEMORIES table, complete on import
from .backends import BackendError, available as available_backends, backend, current_namespace, use
from .level import ClosedFormUnavailable, Level, solve
from .solvers import ConvergenceError, SolveReport
from .validation import options

__version__ = "0.1.0"

__all__ = [
    "Level",
    "solve",
    "SolveReport",
    "ConvergenceError",
    "ClosedFormUnavailable",
    "use",
    "backend",
    "current_namespace",
    "available_backends",
    "BackendError",
    "options",
    "memories",
    "__version__",
]
