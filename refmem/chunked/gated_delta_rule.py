r"""Chunked gated delta rule (Gated DeltaNet; UT form with in-chunk cumulative log-gates, MATH.md 8) and its mini-batch variant.

Recurrence: :math:`M_t = a_t M_{t-1} - b_t (a_t M_{t-1} k_t - v_t) k_t^T`.
Exact form: :func:`refmem.chunked.delta_family.delta_terms` with the gate decays
:math:`\gamma_t = \prod_{r \le t} a_r`, :math:`D_{ts} = \prod_{s<r\le t} a_r`
(zero gates give exact zeros; no ``log 0``, no division by a gate product).

Mini-batch form: every gradient at the gated chunk-start state,
:math:`M_t = a_t M_{t-1} - b_t (\gamma_t M_0 k_t - v_t) k_t^T`. The recurrence
takes the l2 gradient at the retained state :math:`a_t M_{t-1}`; its mini-batch
analogue is the chunk-start state carried to step ``t`` by the gates,
:math:`\gamma_t M_0` (with ``C = 1`` that is :math:`a_t M_{t-1}`, so the two agree).
"""

from __future__ import annotations

from ..memories._inputs import check_sequence, check_step_gate, initial
from ..parallel import workers_option
from ..validation import finite_outputs
from .chunks import check_chunk_size
from .delta_family import delta_family


def _checked(q, k, v, alpha, beta, initial_state, chunk_size):
    xp = check_sequence(q, k, v, initial_state, alpha=alpha, beta=beta)
    check_step_gate(alpha, "alpha", k, xp)
    check_step_gate(beta, "beta", k, xp, low=0.0, high=None)
    return xp, check_chunk_size(chunk_size, k.shape[-2])


@workers_option
@finite_outputs
def gated_delta_rule_chunked(q, k, v, alpha, beta, *, chunk_size=64, initial_state=None):
    """The gated delta rule in chunks (exact); equals :func:`~refmem.memories.gated_delta_rule.gated_delta_rule_recurrent`.

    Parameters and returns are those of the recurrent form (a forget gate
    ``alpha = 0`` erases the state exactly), plus ``chunk_size >= 1``.
    """
    xp, C = _checked(q, k, v, alpha, beta, initial_state, chunk_size)
    return delta_family(q, k, v, beta, alpha, C, initial(initial_state, k, v, xp), xp, exact=True)


@workers_option
@finite_outputs
def gated_delta_rule_minibatch(q, k, v, alpha, beta, *, chunk_size=64, initial_state=None):
    """Mini-batch gated delta rule: gradients at the gated chunk-start state ``gamma_t M_0``.

    A different computation from the recurrence unless ``chunk_size == 1``.
    Same parameters and returns as :func:`gated_delta_rule_chunked`.
    """
    xp, C = _checked(q, k, v, alpha, beta, initial_state, chunk_size)
    return delta_family(q, k, v, beta, alpha, C, initial(initial_state, k, v, xp), xp, exact=False)
