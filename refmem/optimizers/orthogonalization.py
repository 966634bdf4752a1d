r"""The nearest orthogonal matrix: Muon's inner level (NL-24, NLx 4, MATH.md 6).

.. math::

    O^\star = \operatorname*{argmin}_{O:\; O^T O = I} \|O - M\|_F
            = \operatorname*{argmax}_{O^T O = I} \langle O, M\rangle = U V^T,
    \qquad M = U \Sigma V^T \text{ (thin SVD)},

for ``M`` of shape ``[..., a, b]`` with ``a >= b`` (for ``a < b`` the
constraint is :math:`O O^T = I` and the same formula holds). The minimiser is
unique iff ``M`` has full rank :math:`\min(a, b)` (von Neumann's trace
inequality: :math:`\langle O, M\rangle \le \sum_i \sigma_i`, with equality at
:math:`U V^T`).

- Closed form, :func:`polar_factor`: ``U V^T`` from the SVD.
- Iterative, :func:`newton_schulz_polar`: the cubic Newton-Schulz iteration
  :math:`X \leftarrow \tfrac32 X - \tfrac12 X X^T X` from :math:`X_0 = M/\|M\|_F`.
  It keeps the singular vectors and maps each singular value by
  :math:`p(\sigma) = \tfrac32\sigma - \tfrac12\sigma^3`, whose fixed point 1
  attracts every :math:`\sigma \in (0, \sqrt3)`; the Frobenius scaling puts
  every :math:`\sigma_i \le 1`. Small singular values grow by a factor
  :math:`\approx 1.5` per step, then converge quadratically, so the iteration
  count grows like :math:`\log_{1.5}(\|M\|_F/\sigma_{\min})`. It stops when
  :math:`\|X^T X - I\|_F \le \mathrm{tol}`, which *certifies*
  :math:`\|X - U V^T\|_2 = \max_i|\sigma_i - 1| \le \max_i|\sigma_i^2 - 1| \le \mathrm{tol}`.
- Muon's quintic, :func:`newton_schulz_quintic`:
  :math:`X \leftarrow aX + b (XX^T)X + c (XX^T)^2 X` with
  :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` and 5 steps. Its polynomial
  :math:`q(\sigma) = a\sigma + b\sigma^3 + c\sigma^5` has no fixed point at 1
  (:math:`q(1) = 0.701`): it is a fixed map, not a solver of the level; its
  output's singular values stay in a band around 1 (measured in specs/muon.md).
"""

from __future__ import annotations

from ..solvers import ConvergenceError, SolveReport, default_rtol
from ..validation import check_arrays, check_ndim, get_option

QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _check_matrix(M, name="M"):
    xp = check_arrays(**{name: M})
    check_ndim(M, name, 2, "[..., a, b]")
    return xp


def _mT(X, xp):
    return xp.matrix_transpose(X)  # (.., b, a)


def polar_factor(M):
    r"""Closed form of the level: :math:`U V^T` from the thin SVD of ``M`` ``[..., a, b]``.

    Raises
    ------
    ValueError
        ``M`` is numerically rank deficient (:math:`\sigma_{\min} \le \max(a, b)\,\epsilon\,\sigma_{\max}`):
        the nearest orthogonal matrix is then not unique. The test reads the
        device; ``refmem.options(check_finite=False)`` skips it with the
        finiteness checks (a rank-deficient ``M`` then gets one of its minimisers).
    """
    xp = _check_matrix(M)
    U, S, Vh = xp.linalg.svd(M, full_matrices=False)  # (.., a, k), (.., k), (.., k, b)
    eps = float(xp.finfo(M.dtype).eps)
    smin, smax = xp.min(S, axis=-1), xp.max(S, axis=-1)  # (..,)
    # a device read, switched off with the others by refmem.options(check_finite=False)
    if get_option("check_finite") and bool(xp.any(smin <= max(M.shape[-2:]) * eps * smax)):
        raise ValueError("M is rank deficient (smallest singular value <= max(a, b) eps times the largest): "
                         "the nearest orthogonal matrix is not unique")
    return U @ Vh  # (.., a, b)


def orthogonality_residual(X, xp):
    r""":math:`\|X^T X - I\|_F` (tall) or :math:`\|X X^T - I\|_F` (wide), per matrix ``[...]``."""
    a, b = X.shape[-2], X.shape[-1]
    G = _mT(X, xp) @ X if a >= b else X @ _mT(X, xp)  # (.., k, k), k = min(a, b)
    k = min(a, b)
    R = G - xp.eye(k, dtype=X.dtype)  # (.., k, k)
    return xp.sqrt(xp.sum(R * R, axis=(-2, -1)))  # (..,)


def newton_schulz_polar(M, *, rtol=None, max_iter: int = 200):
    r"""Iterative solution of the level: cubic Newton-Schulz until :math:`\|X^TX - I\|_F \le` tol.

    Parameters
    ----------
    M : array ``[..., a, b]``
    rtol : float, optional
        Default ``max(default_rtol, 32 eps min(a, b))``: ``1e-12`` in float64
        unless the Gram matrix's rounding (``~ k eps``) demands more.
    max_iter : int

    Returns
    -------
    O : array ``[..., a, b]``
    report : SolveReport
        ``iterations`` and the final residual; raises :class:`~refmem.solvers.ConvergenceError`
        when the residual does not reach ``rtol`` (``M`` rank deficient or too ill-conditioned
        for ``max_iter`` steps).
    """
    xp = _check_matrix(M)
    a, b = M.shape[-2], M.shape[-1]
    k = min(a, b)
    eps = float(xp.finfo(M.dtype).eps)
    tol = max(default_rtol(M.dtype, xp), 32 * eps * k) if rtol is None else rtol
    norm = xp.sqrt(xp.sum(M * M, axis=(-2, -1)))[..., None, None]  # (.., 1, 1)
    if bool(xp.any(norm == 0)):
        raise ValueError("M is zero: the nearest orthogonal matrix is not unique")
    X = M / norm  # (.., a, b) every singular value in (0, 1]
    res = float(xp.max(xp.reshape(orthogonality_residual(X, xp), (-1,))))
    it = 0
    # invariant: X = U diag(p^it(sigma / ||M||_F)) V^T, the singular vectors of M
    while res > tol and it < max_iter:
        X = 1.5 * X - 0.5 * (X @ (_mT(X, xp) @ X) if a >= b else (X @ _mT(X, xp)) @ X)  # (.., a, b)
        it += 1
        res = float(xp.max(xp.reshape(orthogonality_residual(X, xp), (-1,))))
    report = SolveReport(method="iterative", solver="newton-schulz (cubic)", iterations=it, residual=res,
                         tolerance=tol, converged=res <= tol)
    if not report.converged:
        raise ConvergenceError(report, "M is rank deficient or too ill-conditioned for max_iter steps "
                                       "(iterations grow like log_1.5 of ||M||_F / sigma_min)")
    return X, report


def newton_schulz_quintic(M, *, steps: int = 5, coefficients=QUINTIC_COEFFICIENTS, eps: float = 1e-7):
    r"""Muon's fixed map (torch.optim.Muon): ``steps`` quintic Newton-Schulz steps from ``M / max(||M||_F, eps)``.

    Computed in ``M``'s dtype (torch computes in bfloat16). Not a solver of
    the level: the result is not orthogonal (specs/muon.md measures how far).
    """
    xp = _check_matrix(M)
    qa, qb, qc = coefficients
    tall = M.shape[-2] > M.shape[-1]
    X = _mT(M, xp) if tall else M  # (.., k, n) with k <= n
    norm = xp.sqrt(xp.sum(X * X, axis=(-2, -1)))[..., None, None]  # (.., 1, 1)
    X = X / xp.maximum(norm, xp.asarray(eps, dtype=M.dtype))  # (.., k, n)
    for _ in range(steps):
        A = X @ _mT(X, xp)  # (.., k, k)
        B = qb * A + qc * (A @ A)  # (.., k, k)
        X = qa * X + B @ X  # (.., k, n)
    return _mT(X, xp) if tall else X


def newton_schulz_cubic(M, *, steps: int):
    r"""``steps`` cubic Newton-Schulz steps from ``M / ||M||_F`` as a fixed map (no stopping test).

    The reading of M3's "Newton-Schulz_T" (NLx Algorithm 1) with a fixed ``T``;
    :func:`newton_schulz_polar` runs the same iteration to a certified residual.
    """
    xp = _check_matrix(M)
    a, b = M.shape[-2], M.shape[-1]
    norm = xp.sqrt(xp.sum(M * M, axis=(-2, -1)))[..., None, None]  # (.., 1, 1)
    if get_option("check_finite") and bool(xp.any(norm == 0)):  # a device read, like the finiteness checks
        raise ValueError("M is zero: it has no orthogonal direction")
    X = M / norm  # (.., a, b)
    for _ in range(steps):
        X = 1.5 * X - 0.5 * (X @ (_mT(X, xp) @ X) if a >= b else (X @ _mT(X, xp)) @ X)  # (.., a, b)
    return X


def quintic_singular_value_map(sigma: float, *, steps: int = 5, coefficients=QUINTIC_COEFFICIENTS) -> float:
    r"""The scalar map :math:`q^{\circ\,\mathrm{steps}}(\sigma)` the quintic applies to each (normalised) singular value."""
    qa, qb, qc = coefficients
    for _ in range(steps):
        sigma = qa * sigma + qb * sigma ** 3 + qc * sigma ** 5
    return sigma


def nearest_orthogonal(M, *, method: str = "closed"):
    """Solve the level: :func:`polar_factor` (closed) or :func:`newton_schulz_polar` (iterative); ``(O, report)``."""
    if method == "closed":
        return polar_factor(M), SolveReport(method="closed", solver="polar factor (SVD)")
    if method == "iterative":
        return newton_schulz_polar(M)
    raise ValueError(f"method must be 'closed' or 'iterative'; got {method!r}")


__all__ = [
    "QUINTIC_COEFFICIENTS",
    "polar_factor",
    "newton_schulz_polar",
    "newton_schulz_quintic",
    "newton_schulz_cubic",
    "quintic_singular_value_map",
    "orthogonality_residual",
    "nearest_orthogonal",
]
