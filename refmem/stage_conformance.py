r"""Stage conformance: a chunked kernel's intermediate arrays against refmem's stage oracles (NumPy-only module).

With ``refmem conform --stages`` (``check(..., stages=True, chunk_size=C)``)
the kernel is called as in its layout plus ``chunk_size=C`` and returns a
``dict`` of named stage arrays (and, optionally, ``o`` and the final state
under their usual names). Each stage it returns is compared with the float64
stage oracle of :mod:`refmem.chunked.stages` on the same inputs and chunk
size, so a wrong kernel is pinned to the first stage that differs.

Stage names and shapes (``N`` chunks of ``C`` steps; in the refmem layout
``C = min(chunk_size, T)``, as :mod:`refmem.chunked.stages` returns them).
The delta family has every stage; linear attention has ``start_states``,
gated linear attention also ``decay``. refmem name, refmem layout -> fla name,
fla layout:

- chunk start state: ``start_states [..., N, d_v, d_k]`` -> ``h [B, N, H, K, V]``
  (``S = M^T``; ``[B, N, H, V, K]`` with ``state_v_first``);
- in-chunk decay: ``decay [..., N, C]`` (``[..., N, C, d_k]`` per channel) ->
  ``g_cumsum [B, T, H]`` (``[B, T, H, K]``), its logarithm;
- ``A = strict_tril(diag(b)(D o K K^T))``: ``A [..., N, C, C]`` -> ``A [B, T, H, chunk_size]``;
- ``(I + A)^{-1}``: ``A_inv [..., N, C, C]`` -> ``Ai [B, T, H, chunk_size]``;
- ``W = (I + A)^{-1} diag(b gamma) K``: ``W [..., N, C, d_k]`` -> ``w [B, T, H, K]``;
- ``U~ = (I + A)^{-1} diag(b) V``: ``U~ [..., N, C, d_v]`` -> ``u [B, T, H, V]``;
- ``U = U~ - W M_0^T``: ``U [..., N, C, d_v]`` -> ``v_new [B, T, H, V]``.

Rows of the padded last chunk (refmem's ``[..., N, C, ...]`` arrays hold
``N C >= T`` rows) are not compared: both sides are cut to the first ``T``
token rows. fla's ``g_cumsum`` is compared as ``exp(g_cumsum)`` with the
decays (a zero gate's decay is 0, whose log is not finite). Packed
variable-length cases have no stage oracle (the chunks of fla's varlen
kernels follow the sequences) and are skipped.

Tolerance: the case's own (``refmem.vectors``): every stage is an
intermediate of the chunked evaluation whose outputs that tolerance bounds.
"""

from __future__ import annotations

import math

import numpy as np

from .kernel_layouts import Layout, NotApplicable, OutputShapeError, lead_to_bh
from .packed_sequences import CU_SEQLENS

REFMEM_NAMES = ("start_states", "decay", "A", "A_inv", "W", "U~", "U")
FLA_NAMES = {"start_states": "h", "decay": "g_cumsum", "A": "A", "A_inv": "Ai", "W": "w", "U~": "u", "U": "v_new"}


def staged_specs() -> tuple:
    """The memories with a stage oracle."""
    from .chunked.stages import STAGES

    return tuple(STAGES)


def computation_order(layout: Layout) -> tuple:
    """The stage names of ``layout`` in the order a chunked kernel computes them (a chunk's start state before ``U``)."""
    order = ("decay", "A", "A_inv", "W", "U~", "start_states", "U")
    return order if layout.name == "refmem" else tuple(FLA_NAMES[n] for n in order)


def stage_names(layout: Layout) -> tuple:
    """The stage names a kernel returns in ``layout``."""
    return REFMEM_NAMES if layout.name == "refmem" else tuple(FLA_NAMES[n] for n in REFMEM_NAMES)


def to_token_rows(a: np.ndarray, T: int, per_token_rank: int) -> np.ndarray:
    """Chunked rows ``[..., N, C, *rest]`` (``per_token_rank = len(rest)``) as token rows ``[..., T, *rest]``."""
    rest = a.shape[a.ndim - per_token_rank:] if per_token_rank else ()
    lead = a.shape[:a.ndim - per_token_rank - 2]
    N, C = a.shape[len(lead):len(lead) + 2]
    return a.reshape(lead + (N * C,) + rest)[(Ellipsis, slice(0, T)) + (slice(None),) * per_token_rank]


def _rank_after_token(ref: np.ndarray, lead_rank: int) -> int:
    """How many axes follow the ``N, C`` axes of a reference stage ``[..., N, C, ...]``."""
    return ref.ndim - lead_rank - 2


def compare_stages(case, layout: Layout, chunk_size: int, returned: dict) -> list:
    """``(name, got, want)`` for every stage in ``returned`` (the kernel's dict, its own layout).

    ``got`` and ``want`` in refmem's orientation, cut to token rows; ``got`` is an
    :class:`~refmem.kernel_layouts.OutputShapeError` for a misshapen stage, and
    ``None`` (``want`` then says why) for a stage the memory does not have.
    Names that are not stages are left to the caller.
    """
    from .chunked.stages import STAGES
    from .memories import MEMORIES

    if CU_SEQLENS in case.inputs:
        raise NotApplicable("a packed variable-length case has no stage oracle (its chunks follow the sequences)")
    inputs = case.inputs
    gates = [inputs[g] for g in MEMORIES[case.spec].gates]
    kw = {"initial_state": inputs["initial_state"]} if "initial_state" in inputs else {}
    ref = STAGES[case.spec](inputs["q"], inputs["k"], inputs["v"], *gates, chunk_size=chunk_size, **kw)
    lead = tuple(inputs["k"].shape[:-2])
    T = inputs["k"].shape[-2]
    names = stage_names(layout)
    by_layout_name = dict(zip(names, REFMEM_NAMES))
    rows = []
    for name, a in returned.items():
        if name not in by_layout_name:
            continue
        ours = by_layout_name[name]
        if ours not in ref:
            rows.append((name, None, f"spec {case.spec!r} has no stage {name!r}; its stages: "
                                     f"{', '.join(n for n, r in zip(names, REFMEM_NAMES) if r in ref)}"))
            continue
        r = ref[ours]
        rank = _rank_after_token(r, len(lead))
        want = r if ours == "start_states" else to_token_rows(r, T, rank)  # [..., N, d_v, d_k] or [..., T, *rest]
        if ours in ("A", "A_inv") and layout.name == "fla" and want.shape[-1] < chunk_size:
            # refmem's chunk is min(C, T) wide; fla's A has C columns whatever T: the columns past T are zero
            want = np.concatenate([want, np.zeros(want.shape[:-1] + (chunk_size - want.shape[-1],))], axis=-1)
        got = (_from_refmem(a, ours, r, T, rank) if layout.name == "refmem" else
               _from_fla(a, ours, r, lead, T, rank, layout, chunk_size))
        rows.append((name, got, want))
    return rows


def _from_refmem(a, ours, r, T, rank):
    if a.shape != r.shape:
        return OutputShapeError(ours, f"shape {a.shape}, but stage {ours!r} is {r.shape} in the refmem layout")
    return a if ours == "start_states" else to_token_rows(a, T, rank)


def _from_fla(a, ours, r, lead, T, rank, layout, chunk_size):
    B, H = lead_to_bh(lead)
    N = r.shape[len(lead)]
    name = FLA_NAMES[ours]
    if ours == "start_states":
        d_v, d_k = r.shape[-2:]
        fla_shape = (B, N, H) + ((d_v, d_k) if layout.v_first else (d_k, d_v))
        if a.shape != fla_shape:
            return OutputShapeError(name, f"shape {a.shape}, but stage {name!r} is {fla_shape} = [B, N, H, "
                                          f"{'V, K' if layout.v_first else 'K, V'}]")
        M = a if layout.v_first else np.swapaxes(a, -1, -2)  # (B, N, H, d_v, d_k)
        return np.swapaxes(M, 1, 2).reshape(r.shape)  # (B, H, N, d_v, d_k) -> (..., N, d_v, d_k)
    rest = r.shape[r.ndim - rank:] if rank else ()
    if ours in ("A", "A_inv"):
        rest = (chunk_size,)
    fla_shape = (B, T, H) + rest
    if a.shape != fla_shape:
        return OutputShapeError(name, f"shape {a.shape}, but stage {name!r} is {fla_shape} = [B, T, H{', ...' if rest else ''}]")
    if ours == "decay":
        with np.errstate(over="ignore"):  # a wrong g_cumsum > 709 gives inf: a failing, non-finite row
            a = np.exp(a)  # g_cumsum = log gamma
    x = np.moveaxis(a, 2, 1)  # (B, H, T, *rest)
    return x.reshape(lead + (T,) + rest)


def stage_rows(case, layout, chunk_size, returned, tol, compare, Row) -> list:
    """:class:`~refmem.conform.Row` s for the stages of ``returned``; unknown stage names fail, naming the known ones."""
    rows = []
    names = stage_names(layout)
    unknown = [n for n in returned if n not in names and n not in case.outputs]
    for n in unknown:
        rows.append(Row(case.name, n, math.nan, math.nan, math.nan, tol, False,
                        f"not a stage name of layout {layout.name!r}; stages: {', '.join(names)}"))
    for name, got, want in compare_stages(case, layout, chunk_size, returned):
        if got is None:
            rows.append(Row(case.name, name, math.nan, math.nan, math.nan, tol, False, want))
        elif isinstance(got, OutputShapeError):
            rows.append(Row(case.name, name, math.nan, math.nan, math.nan, tol, False, got.detail))
        else:
            rows.append(compare(got, want, tol, case.name, name))
    if not any(n in names for n in returned):
        rows.append(Row(case.name, "(stages)", math.nan, math.nan, math.nan, tol, False,
                        f"the kernel returned no stage; stages of layout {layout.name!r}: {', '.join(names)}"))
    return rows
