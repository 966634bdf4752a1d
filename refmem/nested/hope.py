r"""The HOPE block: self-modifying Titans followed by a continuum memory system (NLx-94..97).

.. math::

    o_t = \text{self-modifying Titans}(x_{\le t}) \quad\text{(NLx-94, 95: :mod:`.self_modifying_titans`)}, \qquad
    y_t = \mathrm{MLP}^{(f_K)}(\cdots \mathrm{MLP}^{(f_1)}(o_t)) \quad\text{(NLx-96: :mod:`.cms`)},

over inputs ``x [..., T, d]`` with online updates of every memory. The
Titans part never reads the CMS, so the block is the Titans scan followed
by the CMS scan on its outputs; the CMS's error term is the gradient of a
loss on :math:`y_t` against per-token ``targets`` (without them the CMS is
static: the block's forward pass at inference).

Levels (Definition 2): the Titans memories update every token, or every
``chunk_size`` / ``memory_chunk_size`` tokens in the chunked form; CMS block
:math:`\ell` every :math:`C_\ell` tokens; their initial states and
``W_q`` belong to the outer (pre-training) level.

Chunking. The CMS's chunk-parallel evaluation is the same computation as
its token-by-token form (:func:`~refmem.nested.cms.cms_chunked`). The Titans
part's chunked form (NLx-90, 91) reads snapshots, so with a chunk size
``C > 1`` it is a *different computation* from the per-step recurrence
(equal only at ``C = 1``); for a given chunk size its segment-at-a-time
evaluation equals its token-by-token one. :func:`hope_chunked` evaluates
both parts segment by segment; :func:`hope_recurrent` token by token.
"""

from __future__ import annotations

from ..validation import finite_outputs
from .cms import cms_chunked, cms_recurrent
from .self_modifying_titans import self_modifying_titans_chunked, self_modifying_titans_recurrent


@finite_outputs
def hope_recurrent(x, W_q=None, *, cms_params, cms_chunk_sizes, cms_eta, targets=None, memories=None, chunk_size=1,
                   memory_chunk_size="chunk_size", eta_max=0.5, eta_bias=0.0, alpha_bias=4.0, loss="squared_error",
                   cms_variant="sequential", cms_weights=None, reinit_from="slower", activation="tanh",
                   method="closed"):
    r"""The HOPE block token by token.

    Parameters
    ----------
    x : array ``[..., T, d]``
    W_q, memories, chunk_size, memory_chunk_size, eta_max, eta_bias, alpha_bias
        The self-modifying Titans part (:func:`~refmem.nested.self_modifying_titans.self_modifying_titans_recurrent`).
    cms_params, cms_chunk_sizes, cms_eta, targets, loss, cms_variant, cms_weights, reinit_from, method
        The CMS part (:func:`~refmem.nested.cms.cms_recurrent`: ``params``, ``chunk_sizes``, ``eta``, ...).
    activation : {"tanh", "silu"}
        Of every MLP.

    Returns
    -------
    y : array ``[..., T, d]``
    state : dict
        ``{"memories": Titans memories after step T, "cms": CMS blocks after step T}``.
    """
    o, mem = self_modifying_titans_recurrent(x, W_q, memories=memories, chunk_size=chunk_size,
                                             memory_chunk_size=memory_chunk_size, eta_max=eta_max, eta_bias=eta_bias,
                                             alpha_bias=alpha_bias, activation=activation)
    y, blocks = cms_recurrent(o, cms_params, cms_chunk_sizes, cms_eta, targets=targets, loss=loss,
                              variant=cms_variant, weights=cms_weights, reinit_from=reinit_from,
                              activation=activation, method=method)
    return y, {"memories": mem, "cms": blocks}


@finite_outputs
def hope_chunked(x, W_q=None, *, cms_params, cms_chunk_sizes, cms_eta, targets=None, memories=None, chunk_size=1,
                 memory_chunk_size="chunk_size", eta_max=0.5, eta_bias=0.0, alpha_bias=4.0, loss="squared_error",
                 cms_variant="sequential", cms_weights=None, reinit_from="slower", activation="tanh",
                 method="closed"):
    """The HOPE block a segment at a time (both parts chunk-parallel); same arguments and returns as :func:`hope_recurrent`."""
    o, mem = self_modifying_titans_chunked(x, W_q, memories=memories, chunk_size=chunk_size,
                                           memory_chunk_size=memory_chunk_size, eta_max=eta_max, eta_bias=eta_bias,
                                           alpha_bias=alpha_bias, activation=activation)
    y, blocks = cms_chunked(o, cms_params, cms_chunk_sizes, cms_eta, targets=targets, loss=loss, variant=cms_variant,
                            weights=cms_weights, reinit_from=reinit_from, activation=activation, method=method)
    return y, {"memories": mem, "cms": blocks}


__all__ = ["hope_chunked", "hope_recurrent"]
