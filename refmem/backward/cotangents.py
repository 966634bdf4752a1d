r"""The cotangents a backward pass receives and the gradients it returns.

A sequence memory maps its inputs to ``(o [..., T, d_v], M_T [..., d_v, d_k])``.
Its vector-Jacobian product (VJP) receives the cotangents ``do`` (same shape
as ``o``) and ``dM_T`` (same shape as ``M_T``; zero when omitted) and returns
the gradient of the scalar

.. math::

    \mathcal L = \langle do, o\rangle + \langle dM_T, M_T\rangle

in every input, as a dict keyed by the forward's argument names
(``q, k, v``, each gate, ``initial_state``): the adjoint of the forward,
``dx = (\partial (o, M_T) / \partial x)^T (do, dM_T)``.
"""

from __future__ import annotations

import functools

from ..validation import DivergenceError, check_arrays, get_option


def check_cotangents(do, dM_T, o, M_T):
    """Check ``do`` against ``o`` and ``dM_T`` against ``M_T``; return ``dM_T`` (zeros when ``None``).

    Raises
    ------
    TypeError
        A cotangent that is not an array of the outputs' library and dtype.
    ValueError
        A cotangent whose shape is not its output's, or that is not finite.
    """
    if do is None:
        raise TypeError("do must be an array [..., T, d_v] (the cotangent of o); got None")
    xp = check_arrays(do=do, dM_T=dM_T, o=o)
    if tuple(do.shape) != tuple(o.shape):
        raise ValueError(f"do must have the shape of o {tuple(o.shape)}; got {tuple(do.shape)}")
    if dM_T is None:
        return xp.zeros_like(M_T)
    if tuple(dM_T.shape) != tuple(M_T.shape):
        raise ValueError(f"dM_T must have the shape of the final state {tuple(M_T.shape)}; got {tuple(dM_T.shape)}")
    return dM_T


def finite_gradients(fn):
    """Decorator for VJPs: raise :class:`~refmem.validation.DivergenceError` naming the first non-finite gradient.

    One device read per gradient, switched off with the input checks by
    ``refmem.options(check_finite=False)``.
    """

    @functools.wraps(fn)
    def vjp(*args, **kwargs):
        grads = fn(*args, **kwargs)
        if get_option("check_finite"):
            for name, g in grads.items():
                parts = g if isinstance(g, tuple) else (g,)  # a tuple state (a cache) has one gradient per part
                if not all(bool(_namespace(p).all(_namespace(p).isfinite(p))) for p in parts):
                    raise DivergenceError(f"{fn.__name__}: the gradient in {name} contains non-finite values "
                                          "(the forward or its adjoint overflowed for these inputs)")
        return grads

    return vjp


def _namespace(x):
    from ..backends import namespace_of

    return namespace_of(x)
