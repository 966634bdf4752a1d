r"""The lq retention's step (Moneta, consistent form) solved in 80-digit decimals: an independent reference.

The level :math:`\min_M l(M) + \frac1\eta\big(\psi(M) - \alpha\langle\nabla\psi(M_t), M\rangle\big)`,
:math:`\psi = \tfrac12\|M\|_q^2` (entrywise), is written out by hand here from its optimality
condition, without refmem:

- explicit step (``l`` linearised at ``M_t``, gradient ``g``): the closed form
  :math:`M = \nabla\psi^*(\alpha\nabla\psi(M_t) - \eta g)`, :math:`\psi^* = \tfrac12\|\cdot\|_{q^*}^2`;
- implicit step: the root of :math:`E(M) = \nabla\psi(M) - \alpha\nabla\psi(M_t) + \eta\nabla l(M)`,
  found by Newton's method in 80-digit decimals with a finite-difference Jacobian (step
  :math:`10^{-35}` relative: its truncation error is far below the float64 answers compared
  against). The root is unique (the level is strictly convex), so the start only decides how
  fast Newton gets there; the answer is accepted only with a decimal residual below
  :math:`10^{-45}` of the terms' size.
"""

from __future__ import annotations

import decimal
from decimal import Decimal as D

import numpy as np

PREC = 80


def _norm_q(M, q):
    s = sum(abs(x) ** q for row in M for x in row)
    return s ** (D(1) / q) if s > 0 else D(0)


def _mirror(M, q):
    r""":math:`\nabla\psi(M) = \operatorname{sign}(M)|M|^{q-1}\|M\|_q^{2-q}` (0 at 0)."""
    n = _norm_q(M, q)
    if n == 0:
        return [[D(0)] * len(M[0]) for _ in M]
    return [[(1 if x > 0 else -1) * abs(x) ** (q - 1) * n ** (2 - q) if x != 0 else D(0) for x in row] for row in M]


def _grad_l(objective, M, k, v):
    r""":math:`\nabla l(M)` written out: rows ``d_v``, columns ``d_k`` (windowed: ``k``, ``v`` hold c rows)."""
    dv, dk = len(M), len(M[0])
    if objective == "dot":
        return [[-v[i] * k[j] for j in range(dk)] for i in range(dv)]
    if objective == "windowed_l2":  # sum_s (M k_s - v_s) k_s^T, unit weights
        out = [[D(0)] * dk for _ in range(dv)]
        for ks, vs in zip(k, v):
            r = [sum(M[i][j] * ks[j] for j in range(dk)) - vs[i] for i in range(dv)]
            for i in range(dv):
                for j in range(dk):
                    out[i][j] += r[i] * ks[j]
        return out
    r = [sum(M[i][j] * k[j] for j in range(dk)) - v[i] for i in range(dv)]
    if objective == "l2":
        phi = r
    elif objective == "lp3":
        phi = [3 * x * abs(x) for x in r]
    elif objective == "lp1.5":
        phi = [D("1.5") * (1 if x > 0 else -1) * abs(x).sqrt() if x != 0 else D(0) for x in r]
    elif objective == "huber":  # delta = 1, per coordinate
        phi = [max(D(-1), min(D(1), x)) for x in r]
    else:
        raise ValueError(objective)
    return [[phi[i] * k[j] for j in range(dk)] for i in range(dv)]


def _solve_linear(A, b):
    """Gaussian elimination with partial pivoting on decimal lists."""
    n = len(b)
    A = [row[:] + [b[i]] for i, row in enumerate(A)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(A[r][c]))
        A[c], A[p] = A[p], A[c]
        if A[c][c] == 0:
            raise ZeroDivisionError("singular Jacobian")
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            for j in range(c, n + 1):
                A[r][j] -= f * A[c][j]
    x = [D(0)] * n
    for r in range(n - 1, -1, -1):
        x[r] = (A[r][n] - sum(A[r][j] * x[j] for j in range(r + 1, n))) / A[r][r]
    return x


def lq_step_reference(objective, step, M_t, k, v, q, alpha, eta, start):
    """The level's new state in 80-digit decimals, returned as float64 ``[d_v, d_k]`` (module docstring)."""
    with decimal.localcontext() as ctx:
        ctx.prec = PREC
        ctx.Emin, ctx.Emax = decimal.MIN_EMIN, decimal.MAX_EMAX
        Mt = [[D(float(x)) for x in row] for row in np.asarray(M_t)]
        if objective == "windowed_l2":
            kk = [[D(float(x)) for x in row] for row in np.asarray(k)]
            vv = [[D(float(x)) for x in row] for row in np.asarray(v)]
        else:
            kk = None if k is None else [D(float(x)) for x in np.asarray(k)]
            vv = [D(float(x)) for x in np.asarray(v)]
        qd, a, e = D(q), D(float(alpha)), D(float(eta))
        A = [[a * x for x in row] for row in _mirror(Mt, qd)]
        dv, dk = len(Mt), len(Mt[0])
        if step == "explicit" or objective == "dot":
            g = _grad_l(objective, Mt, kk, vv)
            Z = [[A[i][j] - e * g[i][j] for j in range(dk)] for i in range(dv)]
            return np.array([[float(x) for x in row] for row in _mirror(Z, qd / (qd - 1))])

        def residual(M):
            P, G = _mirror(M, qd), _grad_l(objective, M, kk, vv)
            E = [P[i][j] - A[i][j] + e * G[i][j] for i in range(dv) for j in range(dk)]
            size = max(max(abs(x) for row in P for x in row), max(abs(x) for row in A for x in row),
                       max(abs(e * x) for row in G for x in row))
            return E, size

        M = [[D(float(x)) for x in row] for row in np.asarray(start)]
        for _ in range(80):
            E, size = residual(M)
            if max(abs(x) for x in E) <= D(10) ** -45 * size:
                return np.array([[float(x) for x in row] for row in M])
            scale = max(abs(x) for row in M for x in row)
            h = D(10) ** -35 * (scale if scale > 0 else D(1))
            J = [[D(0)] * (dv * dk) for _ in range(dv * dk)]
            for c in range(dv * dk):
                Mp = [row[:] for row in M]
                Mp[c // dk][c % dk] += h
                Ep, _ = residual(Mp)
                for r in range(dv * dk):
                    J[r][c] = (Ep[r] - E[r]) / h
            d = _solve_linear(J, [-x for x in E])
            norm0 = max(abs(x) for x in E)
            t = D(1)
            for _ in range(100):  # damping: the residual's max entry must fall
                trial = [[M[i][j] + t * d[i * dk + j] for j in range(dk)] for i in range(dv)]
                if max(abs(x) for x in residual(trial)[0]) < norm0:
                    break
                t /= 2
            M = trial
        raise RuntimeError("the decimal reference did not converge")
