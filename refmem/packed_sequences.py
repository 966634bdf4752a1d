r"""Packed variable-length batches: several sequences laid end to end along the time axis (NumPy-only module).

A packed batch holds ``N`` sequences of lengths ``T_1, ..., T_N`` in one time
axis of length ``T_1 + ... + T_N``; ``cu_seqlens = [0, T_1, T_1 + T_2, ..., sum T_i]``
(flash-linear-attention's name) marks where each starts. The memory's state
is reset at every boundary: sequence ``i`` starts from its own initial state
``M_0^{(i)}`` (zeros when none is given), never from the end of sequence ``i - 1``.

refmem's test vectors store such a case with leading dims ``(1, H)``:
``q, k [1, H, sum T_i, d_k]``, ``v [1, H, sum T_i, d_v]``, gates ``[1, H, sum T_i]``,
``cu_seqlens [N + 1]`` (stored as float64 holding integers: every array of
vector format 1 is float64), and per sequence ``initial_state [N, H, d_v, d_k]``
and ``state [N, H, d_v, d_k]``. :func:`split_packed` cuts such inputs into one
ordinary input set per sequence (leading dims ``(1, H)``) and
:func:`merge_packed` lays the per-sequence outputs back out (read-outs along
time, final states along the first axis). For gradients,
:func:`split_cotangents` cuts the cotangents of a packed case's outputs the
same way and :func:`merge_gradients` lays the per-sequence gradients out like
the packed inputs (each gradient shaped like its input).
"""

from __future__ import annotations

import numpy as np

CU_SEQLENS = "cu_seqlens"


def sequence_bounds(cu_seqlens) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of every sequence, from ``cu_seqlens`` (``ValueError`` unless ``0 = c_0 < c_1 < ...``)."""
    c = np.asarray(cu_seqlens)
    if c.ndim != 1 or c.size < 2:
        raise ValueError(f"cu_seqlens must be a 1-d array of at least 2 offsets; got shape {c.shape}")
    if not np.all(np.isfinite(c)) or not np.all(c == np.round(c)):
        raise ValueError("cu_seqlens must hold integers")
    ints = [int(x) for x in c]
    if ints[0] != 0 or any(b <= a for a, b in zip(ints, ints[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and increase strictly; got {ints}")
    return list(zip(ints[:-1], ints[1:]))


def split_packed(inputs: dict) -> list[dict]:
    """One input set per sequence of a packed case (module docstring); ``cu_seqlens`` itself is dropped.

    Sequence arrays (``q, k, v`` and gates, time axis ``-2`` for ``[..., T, d]``
    and ``-1`` for ``[..., T]``) are cut along time; ``initial_state`` (an array
    or a tuple of arrays, first axis ``N``) is cut along its first axis, keeping
    that axis with length 1 (so each piece has the leading dims ``(1, H)``).
    """
    bounds = sequence_bounds(inputs[CU_SEQLENS])
    T = inputs["k"].shape[-2]
    if bounds[-1][1] != T:
        raise ValueError(f"cu_seqlens ends at {bounds[-1][1]}, but the packed sequences hold T = {T} steps")
    seq_rank = inputs["k"].ndim
    pieces = []
    for i, (s, e) in enumerate(bounds):
        one = {}
        for n, a in inputs.items():
            if n == CU_SEQLENS:
                continue
            if n == "initial_state":
                one[n] = tuple(x[i:i + 1] for x in a) if isinstance(a, tuple) else a[i:i + 1]
            elif a.ndim == seq_rank:  # [..., T, d]
                one[n] = a[..., s:e, :]
            else:  # [..., T]
                one[n] = a[..., s:e]
        pieces.append(one)
    return pieces


def merge_packed(outputs: list[dict]) -> dict:
    """Per-sequence outputs laid out like the packed case: ``o`` along time, every state along the first axis."""
    merged = {}
    for n in outputs[0]:
        parts = [out[n] for out in outputs]
        if n != "o" and len({p.shape for p in parts}) > 1:
            raise ValueError(f"the per-sequence {n!r} differ in shape ({parts[0].shape}, ...): a state that grows "
                             "with the sequence (a cache) cannot be laid out per sequence")
        merged[n] = np.concatenate(parts, axis=-2) if n == "o" else np.concatenate(parts, axis=0)
    return merged


def split_cotangents(cu_seqlens, cotangents: dict) -> list[dict]:
    """The cotangents of a packed case's outputs, one set per sequence (:func:`split_packed`'s cut).

    ``do`` (``[..., sum T_i, d_v]``) is cut along time; every state cotangent
    (``dM_T``, a tuple of parts, or ``dM_T.0, dM_T.1, ...``; first axis ``N``)
    along its first axis, keeping that axis with length 1.
    """
    def one(n, c, i, s, e):
        if n == "do":
            return c[..., s:e, :]
        return tuple(x[i:i + 1] for x in c) if isinstance(c, tuple) else c[i:i + 1]

    return [{n: one(n, c, i, s, e) for n, c in cotangents.items()}
            for i, (s, e) in enumerate(sequence_bounds(cu_seqlens))]


def merge_gradients(parts: list[dict], inputs: dict) -> dict:
    """Per-sequence gradients (flattened names, ``initial_state.0, ...``) laid out like the packed ``inputs``.

    The gradient of a sequence array or a gate is joined along that input's
    time axis (``-2`` for ``[..., T, d]``, ``-1`` for ``[..., T]``); the gradient
    of the initial state (one per sequence) along the first axis.
    """
    seq_rank = inputs["k"].ndim
    merged = {}
    for n in parts[0]:
        pieces = [p[n] for p in parts]
        base = n.split(".")[0]
        if base == "initial_state":
            merged[n] = np.concatenate(pieces, axis=0)
        else:
            merged[n] = np.concatenate(pieces, axis=-2 if inputs[base].ndim == seq_rank else -1)
    return merged
