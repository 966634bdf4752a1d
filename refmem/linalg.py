"""Small array-API helpers that every level reads in: outer products, Frobenius inner products.

Shapes follow refmem's convention: a state ``M`` is ``[..., d_v, d_k]``, a key
``k`` is ``[..., d_k]``, a value ``v`` is ``[..., d_v]``.
"""

from __future__ import annotations


def matvec(M, k):
    """``M k``: ``[..., d_v, d_k] @ [..., d_k] -> [..., d_v]``."""
    return (M @ k[..., None])[..., 0]  # (..., d_v, d_k) @ (..., d_k, 1) -> (..., d_v, 1)


def outer(v, k):
    """``v k^T``: ``[..., d_v], [..., d_k] -> [..., d_v, d_k]``."""
    return v[..., :, None] * k[..., None, :]  # (..., d_v, 1) * (..., 1, d_k) -> (..., d_v, d_k)


def inner(A, B, xp):
    """Frobenius inner product ``<A, B>`` over the last two axes: ``[..., a, b] -> [...]``."""
    return xp.sum(A * B, axis=(-2, -1))


def fro_norm(A, xp):
    """``||A||_F`` over the last two axes: ``[..., a, b] -> [...]``.

    Computed as ``m ||A / m||_F`` with ``m = max |A|`` (as LAPACK's ``nrm2``): the
    squares of entries above ``1e154`` would overflow, those below ``1e-154`` underflow,
    although the norm itself is representable.
    """
    m = xp.max(xp.abs(A), axis=(-2, -1))  # (..,)
    safe = xp.where((m > 0) & xp.isfinite(m), m, xp.ones_like(m))  # (..,): 0, inf and nan pass through unscaled
    S = A / safe[..., None, None]  # (.., a, b), entries in [-1, 1]
    return safe * xp.sqrt(inner(S, S, xp))


def sq_norm(x, xp):
    """``||x||^2`` over the last axis: ``[..., d] -> [...]``."""
    return xp.sum(x * x, axis=-1)


def eye_like(d: int, M, xp):
    """Identity ``[d, d]`` with the dtype and device of ``M``."""
    return xp.eye(d, dtype=M.dtype, device=_device(M))


def _device(x):
    import array_api_compat

    return array_api_compat.device(x)


def device_of(x):
    """The device of array ``x`` (for creating arrays next to it)."""
    return _device(x)


def sign(x, xp):
    """``sign(x)`` (0 at 0, nan at nan) without the device read some backends' ``sign`` makes.

    array_api_compat's CuPy ``sign`` patches nan entries by masked assignment,
    which reads the device; this ``where`` form is elementwise only.
    """
    one = xp.ones_like(x)
    zero_or_nan = xp.where(x == 0, 0 * one, x)  # what is neither > 0 nor < 0 is 0 or nan
    return xp.where(x > 0, one, xp.where(x < 0, -one, zero_or_nan))


def clip(x, low: float, high: float, xp):
    """``min(max(x, low), high)`` elementwise for scalar bounds (array_api_compat's CuPy ``clip`` reads the device)."""
    return xp.minimum(xp.maximum(x, xp.full_like(x, low)), xp.full_like(x, high))


def broadcast_like(x, y, xp):
    """``x`` with the shape (and dtype promotion) of ``x + y``: ``x`` plus zeros shaped like ``y``.

    Broadcasts a per-problem quantity (a step, a bound, a start, a gradient that
    does not depend on the state) to the batch shape of the problem. It is the
    arithmetic ``x + 0 * y`` without its one surprise: ``0 * inf`` is NaN, so an
    infinite ``y`` would spoil ``x``.
    """
    return x + xp.zeros_like(y)
