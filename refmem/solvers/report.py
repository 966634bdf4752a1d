"""What a solve reports, and the error for a solve that did not converge."""

from __future__ import annotations

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
        gradient-mapping norm for non-smooth problems); ``nan`` when not
        measured (closed forms are checked against iterative solves instead).
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

    The message gives the solver, iterations, residual and tolerance; the
    :attr:`report` attribute holds the same as a :class:`SolveReport`.
    """

    def __init__(self, report: SolveReport, hint: str = ""):
        self.report = report
        msg = (
            f"{report.solver} did not converge: {report.iterations} iterations, "
            f"relative residual {report.residual:.3e} > tolerance {report.tolerance:.3e}"
        )
        super().__init__(msg + (f"; {hint}" if hint else ""))
