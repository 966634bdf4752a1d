r"""Hand-written backward passes (vector-Jacobian products) of the sequence memories.

For a memory ``(o, M_T) = f(q, k, v, gates..., initial_state)`` its VJP
``f_vjp(q, k, v, gates..., do=..., dM_T=None, initial_state=None)`` returns
the gradients of :math:`\langle do, o\rangle + \langle dM_T, M_T\rangle` in every
input, as a dict keyed by the forward's argument names
(:mod:`refmem.backward.cotangents`). The recurrent VJP runs the adjoint
recurrence backward in time; the chunked VJP (same arguments plus
``chunk_size``) is its chunked reordering and returns the same numbers.

They are written against the array API like the forward and are checked
(``tests/test_backward.py``) by central finite differences, by JAX's and
torch's autodiff through refmem's own forward in float64 (where installed),
and chunked against recurrent. The adjoint equations are in each memory's
spec, section "Backward".

:data:`BACKWARD` is the table of what exists, by memory name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import delta_rule, dgd, linear_attention, longhorn, omega, titans


@dataclass(frozen=True)
class BackwardSpec:
    """The backward passes of one registered memory.

    Attributes
    ----------
    recurrent : callable
        ``recurrent(q, k, v, *gates, do, dM_T=None, initial_state=None) -> dict``.
    chunked : callable or None
        The same plus ``chunk_size``; equal to ``recurrent``.
    """

    recurrent: Callable
    chunked: Callable | None = None


BACKWARD: dict[str, BackwardSpec] = {
    "linear_attention": BackwardSpec(linear_attention.linear_attention_vjp,
                                     linear_attention.linear_attention_chunked_vjp),
    "gated_linear_attention": BackwardSpec(linear_attention.gated_linear_attention_vjp,
                                           linear_attention.gated_linear_attention_chunked_vjp),
    "delta_rule": BackwardSpec(delta_rule.delta_rule_vjp, delta_rule.delta_rule_chunked_vjp),
    "gated_delta_rule": BackwardSpec(delta_rule.gated_delta_rule_vjp, delta_rule.gated_delta_rule_chunked_vjp),
    "longhorn": BackwardSpec(longhorn.longhorn_vjp, longhorn.longhorn_chunked_vjp),
    "dgd": BackwardSpec(dgd.dgd_vjp),
    "titans": BackwardSpec(titans.titans_vjp),
    "omega": BackwardSpec(omega.omega_vjp),
    "omega_implicit": BackwardSpec(omega.omega_implicit_vjp),
}
