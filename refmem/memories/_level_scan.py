"""The scan shared by memories whose every step is one :class:`~refmem.level.Level` solved by :func:`~refmem.level.solve`."""

from __future__ import annotations

from ..level import solve
from ..linalg import matvec
from ..validation import check_scan_state


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
        M, _ = solve(level_at(t), M, k[..., t, :], v[..., t, :], method=method, solver=solver, rtol=rtol)
        check_scan_state(M, t, xp)  # an overflow is a DivergenceError at step t, not bad input at t + 1
        outs.append(matvec(M, q[..., t, :]))  # (.., d_v, d_k) @ (.., d_k) -> (.., d_v)
    o = xp.stack(outs, axis=-2) if outs else xp.zeros(tuple(v.shape), dtype=v.dtype)
    return o, M
