r"""CuPy kernels beyond the array API standard, looked up with ``refmem.backends.extra(xp, name)``.

- :func:`solve_triangular`: batched triangular solve (cuBLAS ``trsm`` through
  ``cupyx.scipy.linalg``; falls back to an LU solve of the triangle where the
  installed CuPy has no batched version);
- :func:`solve`: ``xp.linalg.solve`` that raises on a singular system;
- :func:`synchronize`: wait for the current CUDA stream (timing);
- :func:`peak_bytes`: peak pool memory of a call (the benchmark's memory column).

Singular systems. CuPy's default is not to look at cuSOLVER's status flag
(reading it is a device-to-host transfer), so a singular solve silently returns
inf/nan. Here a solve is checked when ``refmem.options(check_finite=...)`` is on
(the default): :func:`solve` runs under ``cupyx.errstate(linalg="raise")`` and
checks its result is finite; :func:`solve_triangular` checks the diagonal for
zeros (never needed with ``unit_diagonal=True``). Each check is one device
read. With ``check_finite=False`` the user has switched every device read off,
these included (the no-transfer guarantee of ``refmem_cupy``).

CuPy is imported inside the functions: importing this module never imports it.
"""

from __future__ import annotations

from numpy.linalg import LinAlgError  # the exception type only: what NumPy's and CuPy's solvers raise

from refmem.validation import get_option


class SingularMatrixError(LinAlgError):
    """A linear system on the GPU is singular (raised instead of returning inf/nan).

    A ``numpy.linalg.LinAlgError`` (hence a ``ValueError``), like NumPy's own.
    """


def _linalg_error(msg):
    return SingularMatrixError(msg)


def solve_triangular(a, b, *, lower=False, unit_diagonal=False):
    r"""Solve :math:`a x = b` for triangular ``a``, batched.

    Parameters
    ----------
    a : cupy array ``[..., n, n]``
        Only the ``lower`` (or upper) triangle is read; with ``unit_diagonal``
        the diagonal is taken as ones and not read.
    b : cupy array ``[..., n, m]``, or ``[n]``
        Batch dims broadcast against ``a``'s. As in ``numpy.linalg.solve``
        (NumPy 2), only a 1-D ``b`` is a vector; any other ``b`` is a stack of
        ``n x m`` matrices (pass ``b[..., None]`` for a stack of vectors).
    lower, unit_diagonal : bool
        SciPy's names and defaults (``lower=False``: upper triangular).

    Returns
    -------
    x : cupy array ``[..., n, m]`` (batch dims broadcast), or ``[..., n]`` for a 1-D ``b``.

    Raises
    ------
    numpy.linalg.LinAlgError
        A zero on the diagonal (singular ``a``), when ``check_finite`` is on.

    Notes
    -----
    Forward (``lower``) substitution
    :math:`x_i = (b_i - \sum_{j<i} a_{ij} x_j)/a_{ii}` in cuBLAS ``trsm``. The
    fallback solves :math:`\operatorname{tril}(a) x = b` by LU, which has the
    same solution (the triangle is the whole matrix there).
    """
    import cupy

    vector = b.ndim == 1
    B = b[..., None] if vector else b  # (.., n, m)
    batch = _broadcast_shapes(a.shape[:-2], B.shape[:-2])
    A = cupy.broadcast_to(a, batch + a.shape[-2:])  # (.., n, n)
    B = cupy.broadcast_to(B, batch + B.shape[-2:])  # (.., n, m)
    if get_option("check_finite") and not unit_diagonal:
        d = cupy.diagonal(A, axis1=-2, axis2=-1)  # (.., n)
        if bool(cupy.any(d == 0)):
            raise _linalg_error("solve_triangular: the triangular matrix a has a zero on its diagonal (singular)")
    X = _trsm(A, B, lower, unit_diagonal)
    return X[..., 0] if vector else X


def _trsm(A, B, lower, unit_diagonal):
    import cupy

    try:
        from cupyx.scipy.linalg import solve_triangular as cupyx_solve_triangular
    except ImportError:  # CuPy without cupyx.scipy.linalg
        cupyx_solve_triangular = None
    if cupyx_solve_triangular is not None:
        try:
            return cupyx_solve_triangular(A, B, lower=lower, unit_diagonal=unit_diagonal)
        except ValueError:
            if A.ndim == 2:  # shapes were checked above: a 2-D ValueError is real
                raise
            # batched shapes were checked above too: this CuPy (< 13) takes no batches
    # Fallback: an LU solve of the triangle itself (same solution, pivoting does no harm).
    T = cupy.tril(A) if lower else cupy.triu(A)  # (.., n, n)
    if unit_diagonal:
        n = A.shape[-1]
        eye = cupy.eye(n, dtype=A.dtype)
        T = T - T * eye + eye  # diagonal := 1
    return cupy.linalg.solve(T, B)


def _broadcast_shapes(s1, s2):
    n = max(len(s1), len(s2))
    a = (1,) * (n - len(s1)) + tuple(s1)
    b = (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"solve_triangular: batch shapes {tuple(s1)} of a and {tuple(s2)} of b do not broadcast")
        out.append(max(x, y))
    return tuple(out)


def solve(a, b):
    r"""``xp.linalg.solve(a, b)`` on the GPU that raises on a singular system.

    Parameters
    ----------
    a : cupy array ``[..., n, n]``
    b : cupy array ``[..., n, m]`` or ``[n]`` (the array API's rules)

    Raises
    ------
    numpy.linalg.LinAlgError
        ``a`` is singular (cuSOLVER's status flag, read under
        ``cupyx.errstate(linalg="raise")``, or a non-finite solution), when
        ``check_finite`` is on.

    Notes
    -----
    LU with partial pivoting, :math:`P a = L U`; exactly singular ``a`` has a
    zero pivot in :math:`U`, which cuSOLVER reports in ``devInfo`` and which
    makes the back substitution divide by zero (hence the finiteness check
    for the batched path, whose flags CuPy does not read).
    """
    import array_api_compat.cupy as xp
    import cupy
    import cupyx

    if not get_option("check_finite"):
        return xp.linalg.solve(a, b)
    try:
        with cupyx.errstate(linalg="raise"):
            x = xp.linalg.solve(a, b)
    except LinAlgError as exc:  # CuPy raises NumPy's type
        raise _linalg_error(f"solve: the matrix a is singular ({exc})") from exc
    if not bool(cupy.all(cupy.isfinite(x))):
        raise _linalg_error("solve: the matrix a is singular or too ill-conditioned (non-finite solution)")
    return x


def peak_bytes(fn) -> int:
    """Peak device memory, in bytes, that ``fn()`` takes from CuPy's memory pool above what it held before.

    For ``refmem bench``'s ``peak_extra_bytes``. A ``cupy.cuda.MemoryHook``
    follows every allocation from and release to the pool during the call
    (outputs included, sizes rounded up to CuPy's 512-byte blocks) and keeps the
    running maximum. Work buffers that cuBLAS/cuSOLVER allocate outside CuPy's
    pool are not seen.
    """
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "refmem_cupy_peak_bytes"

        def __init__(self):
            self.current = 0
            self.peak = 0

        def malloc_postprocess(self, **kwargs):
            if kwargs.get("mem_ptr", 0):  # 0: the allocation failed
                self.current += int(kwargs.get("mem_size", 0))
                self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kwargs):
            self.current -= int(kwargs.get("mem_size", 0))

    hook = PeakHook()
    with hook:
        out = fn()
        synchronize()
        del out
    return int(hook.peak)


def synchronize(*_ignored) -> None:
    """Block until the work queued on the current CUDA stream has finished (for timing)."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()
