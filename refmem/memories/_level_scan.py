"""The scan shared by memories whose every step is one :class:`~refmem.level.Level` solved by :func:`~refmem.level.solve`."""

from __future__ import annotations

from ..level import solve
from ..linalg import matvec
from ..validation import DivergenceError, check_scan_state


def solve_state_step(level, M, k_t, v_t, t, **options):
    """``solve(level, M, k_t, v_t)`` at step ``t`` of a scan, with errors about the state told as the scan's."""
    return state_step(solve, t, ("M_t",), level, M, k_t, v_t, **options)


def state_step(step_fn, t, state_names, /, *args, **kwargs):
    """``step_fn(*args, **kwargs)`` at step ``t`` of a scan, with errors about the state told as the scan's.

    The inputs ``k_t, v_t`` and the gates were checked before the scan, so a
    ``ValueError`` naming the step's state argument (``state_names``, e.g.
    solve's ``M_t``) is about the state: at ``t = 0`` it is the caller's
    ``initial_state``; later it is a state the scan made (an entry that
    underflowed out of the retention's domain): a :class:`DivergenceError`.
    A :class:`DivergenceError` of the step itself (an overflow inside it) is given
    the step ``t``, so the scan reports the step and the inputs that drove it.
    """
    try:
        return step_fn(*args, **kwargs)
    except DivergenceError as exc:
        if exc.step is not None:
            raise
        # a step that overflowed (e.g. solve's closed form): the scan's error names step t and its inputs
        raise DivergenceError(str(exc), step=t) from None
    except ValueError as exc:
        if not any(name in str(exc) for name in state_names):
            raise
        if t == 0:
            raise ValueError(f"initial_state is not a valid state for this memory: {exc}") from None
        raise DivergenceError(f"the state after step {t - 1} is not a valid state for step {t} "
                              f"(it left the retention's domain numerically): {exc}", step=t - 1) from None


def level_scan(q, k, v, level_at, M0, xp, *, method="closed", solver=None, rtol=None):
    """``M_t = solve(level_at(t), M_{t-1}, k_t, v_t)``, ``o_t = M_t q_t``.

    Parameters
    ----------
    q, k : array ``[..., T, d_k]``
    v : array ``[..., T, d_v]``
    level_at : callable ``t -> Level``
    M0 : array ``[..., d_v, d_k]``
    method : {"closed", "iterative"}
        Closed form of each step, or the iterative solver of :func:`~refmem.level.solve`.

    Returns
    -------
    o : array ``[..., T, d_v]``, M : array ``[..., d_v, d_k]``
    """
    M = M0
    outs = []
    for t in range(k.shape[-2]):
        M, _ = solve_state_step(level_at(t), M, k[..., t, :], v[..., t, :], t, method=method, solver=solver,
                                rtol=rtol)
        check_scan_state(M, t, xp)  # an overflow is a DivergenceError at step t, not bad input at t + 1
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, M
