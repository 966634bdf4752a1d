"""What a solve reports, and the error for a solve that did not converge."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SolveReport:
    """How a level was solved.

    Attributes
    ----------
    method : str
        ``"closed"`` or ``"iterative"``.
    solver : str
        The closed form's name, or the iterative solver (``"cg"``, ``"gd"``, ...).
    iterations : int
        0 for a closed form.
    residual : float
        Final optimality measure relative to its scale (gradient norm, or
        gradient-mapping norm for non-smooth problems; for ``newton_fd`` the
        certified bound on the relative error of the state itself); ``nan`` when not
        measured (closed forms are checked against iterative solves instead),
        ``inf`` in a :class:`ConvergenceError` when nothing was certified.
    tolerance : float
        The relative tolerance the solver stopped at.
    converged : bool
    """

    method: str
    solver: str
    iterations: int = 0
    residual: float = float("nan")
    tolerance: float = float("nan")
    converged: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


class ConvergenceError(RuntimeError):
    """An iterative solver stopped before meeting its tolerance.

    The message gives the solver, iterations, residual and tolerance (only the
    figures that were measured: a solve stopped by an overflow says that no
    tolerance could be derived, instead of printing ``nan``), then the reason;
    the :attr:`report` attribute holds the same as a :class:`SolveReport`.
    """

    def __init__(self, report: SolveReport, hint: str = ""):
        self.report = report
        super().__init__(_message(report) + (f"; {hint}" if hint else ""))


def _message(report: SolveReport) -> str:
    """The failure in words: figures only where they were measured (never a ``nan`` or ``inf`` figure)."""
    head = f"{report.solver} did not converge: {report.iterations} iterations"
    tol, res = report.tolerance, report.residual
    if not math.isfinite(tol):  # the solve stopped before a tolerance existed (e.g. the inputs overflow)
        return head + ", no tolerance could be derived"
    if not math.isfinite(res):
        return head + f", nothing certified against the tolerance {tol:.3e}"
    return head + f", relative residual {res:.3e} > tolerance {tol:.3e}"
