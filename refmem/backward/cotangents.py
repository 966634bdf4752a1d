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
from typing import NamedTuple

from ..chunked.chunks import check_chunk_size
from ..memories._inputs import initial
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


class BackwardStart(NamedTuple):
    """What a backward pass starts from (:func:`forward_and_cotangents`)."""

    xp: object  # the inputs' array namespace
    M0: object  # (.., d_v, d_k) the initial state, zeros when none was given
    dM_T: object  # (.., d_v, d_k) the final state's cotangent, zeros when none was given
    C: int | None  # the checked chunk size, None for a recurrent backward


def forward_and_cotangents(forward, inputs, *, do, dM_T, initial_state, chunk_size=None, **options) -> BackwardStart:
    """The prologue of a backward pass whose state is one matrix ``M [..., d_v, d_k]``.

    Runs ``forward(*inputs, initial_state=initial_state, **options)`` (which
    checks the inputs and returns ``(o, M_T)``), checks ``do`` and ``dM_T``
    against its outputs (:func:`check_cotangents`) and, for a chunked
    backward, ``chunk_size`` against ``T`` (after the forward has checked ``k``).
    ``inputs`` starts with ``q, k, v``.
    """
    o, M_T = forward(*inputs, initial_state=initial_state, **options)
    dM_T = check_cotangents(do, dM_T, o, M_T)
    k, v = inputs[1], inputs[2]
    C = None if chunk_size is None else check_chunk_size(chunk_size, k.shape[-2])
    xp = _namespace(k)
    return BackwardStart(xp, initial(initial_state, k, v, xp), dM_T, C)


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
