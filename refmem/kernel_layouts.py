r"""Kernel layouts: how a test-vector case reaches a kernel, and how the kernel's outputs come back (NumPy-only module).

:mod:`refmem.conform` calls the implementation under test in one of two
*layouts* (calling conventions), each refined by orthogonal *options*
(:class:`Layout`). This module turns a case (refmem's conventions, MATH.md 0:
``q, k [..., T, d_k]``, ``v [..., T, d_v]``, gates ``[..., T]`` or per channel
``[..., T, d]``, state ``M [..., d_v, d_k]``, ``o_t = M_t q_t`` with no scale)
into the call, and the kernel's returns back into refmem's shapes. The full
specification, with a worked example per option, is ``specs/kernel_layouts.md``.

Layouts
-------
``refmem``
    ``fn(q, k, v, **gates, initial_state=M0) -> (o, M_T)`` in refmem's own
    conventions and gate names.
``fla`` (flash-linear-attention)
    ``fn(q, k, v, **gates, initial_state=S0, output_final_state=True) -> (o, S_T)``
    with ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, gates ``[B, T, H]`` (per
    channel ``[B, T, H, d]``), state ``S = M^T [B, H, K, V]``, and the gates
    mapped *by meaning* (:data:`refmem.gate_meanings.GATE_MEANINGS`): the fraction of the state
    *kept* per step arrives as ``g = log(kept)`` (``gk`` per key channel),
    whatever the memory calls it (Titans' forgetting rate ``alpha`` as
    ``g = log(1 - alpha)``); other gates (``beta``, ...) keep their names.
    refmem's leading dims become ``(B, H)``: none -> ``(1, 1)``, one ->
    ``(B, 1)``, two -> ``(B, H)``, more -> all but the last folded into ``B``.

Options
-------
Every option is orthogonal to the others; a case an option cannot express is
skipped with the reason, never passed.

``state_v_first``
    ``True``: states ``[..., V, K]`` (refmem's ``M``; fla's ``state_v_first``);
    ``False``: ``[..., K, V]`` (``S = M^T``). Default: the layout's own
    (refmem ``True``, fla ``False``).
``gate_space`` (fla)
    ``"log"`` (default): ``g = log(kept)``; ``"linear"``: ``g`` is the
    fraction kept itself. A kept fraction of 0 is sent in log space as the log
    of the dtype's smallest normal number (finite; ``exp`` of it is 0 to the
    dtype's precision).
``value_heads_per_qk`` (fla)
    ``G > 1``: grouped value heads, ``HV = G H``: ``q, k [B, T, H, K]`` while
    ``v``, the gates and the states have ``HV`` heads; value head ``j`` reads
    ``q, k`` head ``j // G``. Only cases whose consecutive heads share ``q, k``
    in groups of ``G`` can be sent (the vector case ``grouped_heads``).
``cu_seqlens`` (fla)
    ``True``: a packed variable-length batch, ``B = 1``, sequences laid end to
    end along ``T``, ``cu_seqlens [N + 1]`` (int64) marking their starts,
    ``initial_state`` and the final state ``[N, H, K, V]``, one per sequence;
    the state resets at every boundary. The ``varlen`` cases are sent as they
    are; every other case is sent as its ``B`` batch rows packed into ``N = B``
    sequences of equal length. Without the option, a ``varlen`` case is sent
    one sequence per call (``B = 1``) and the outputs are laid back together.
``use_qk_l2norm_in_kernel``
    The kernel normalises ``q`` and ``k`` itself: the runner sends the unit
    vectors of a case whose ``q, k`` are unit vectors (``unit_qk``) times
    per-token factors in ``[1e4, 4e4]`` and passes
    ``use_qk_l2norm_in_kernel=True``. The factors are large so that an epsilon
    a kernel adds under its square root (fla: ``1e-6``) moves the result by
    less than the float64 tolerance; a kernel that does not normalise is off
    by those factors.
``scale``
    The read-out scale. ``None``: the layout's default, not passed: 1 for
    refmem; for fla ``K^{-1/2}``, cancelled by sending ``q sqrt(K)`` (so the
    kernel's read-out is refmem's ``M_t q_t`` and its ``dq`` is ``dq / sqrt(K)``,
    :mod:`refmem.backward.fla_names`), or, with ``use_qk_l2norm_in_kernel``
    (the kernel normalises ``q``, no factor survives it), expected in the
    read-out ``K^{-1/2} M_t q_t``. A number ``S``: ``q`` is sent as it is,
    ``scale=S`` is passed and the expected read-out is ``S M_t q_t``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .gate_meanings import GATE_MEANINGS, GateMeaning, gate_meaning, kept_fraction  # noqa: F401  (the table, re-exported)
from .packed_sequences import CU_SEQLENS, merge_packed, sequence_bounds, split_packed

LAYOUTS = ("refmem", "fla")
GATE_SPACES = ("log", "linear")
# Per-token factors that un-normalise q and k for a kernel that normalises them itself (module docstring).
RAW_QK_FACTORS = (1e4, 4e4)


# ---------------------------------------------------------------- gates by meaning


def log_gate(kept: np.ndarray) -> np.ndarray:
    """``g = log(kept)``, with 0 mapped to the log of the dtype's smallest normal (finite, ``exp`` of it is ~0)."""
    floor = np.finfo(kept.dtype).tiny
    return np.log(np.maximum(kept, floor))


def fla_gate_name(spec: str, gate: str, per_channel: bool) -> str:
    """The name gate ``gate`` of ``spec`` has in the fla layout (``gk`` for a forget gate per key channel)."""
    if not gate_meaning(spec, gate).forget_gate:
        return gate
    return "gk" if per_channel else "g"


# ---------------------------------------------------------------- layout options


@dataclass(frozen=True)
class Layout:
    """A layout and its options (module docstring); bad values raise ``TypeError`` / ``ValueError`` naming the option.

    Examples
    --------
    >>> from refmem.kernel_layouts import Layout
    >>> Layout("fla", state_v_first=True, cu_seqlens=True).describe()
    'fla (state_v_first=True, cu_seqlens=True)'
    >>> Layout("fla").v_first, Layout("refmem").v_first
    (False, True)
    >>> Layout("refmem", cu_seqlens=True)
    Traceback (most recent call last):
    ...
    ValueError: option cu_seqlens applies to layout 'fla' only (the refmem layout sends refmem's own gates, heads and batches)
    """

    name: str = "refmem"
    state_v_first: bool | None = None
    gate_space: str | None = None
    value_heads_per_qk: int = 1
    cu_seqlens: bool = False
    use_qk_l2norm_in_kernel: bool = False
    scale: float | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {self.name!r}")
        for opt in ("cu_seqlens", "use_qk_l2norm_in_kernel"):
            if not isinstance(getattr(self, opt), bool):
                raise TypeError(f"{opt} must be True or False; got {getattr(self, opt)!r}")
        if self.state_v_first is not None and not isinstance(self.state_v_first, bool):
            raise TypeError(f"state_v_first must be True, False or None (the layout's default); got {self.state_v_first!r}")
        if self.gate_space is not None and (not isinstance(self.gate_space, str) or self.gate_space not in GATE_SPACES):
            raise ValueError(f"gate_space must be one of {GATE_SPACES} or None; got {self.gate_space!r}")
        G = self.value_heads_per_qk
        if isinstance(G, bool) or not isinstance(G, int) or G < 1:
            raise ValueError(f"value_heads_per_qk must be an int >= 1; got {G!r}")
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
                raise TypeError(f"scale must be a number or None; got {type(self.scale).__name__}")
            if not math.isfinite(self.scale) or self.scale == 0:
                raise ValueError(f"scale must be finite and non-zero; got {self.scale!r}")
        if self.name == "refmem":
            fla_only = [opt for opt, on in (("gate_space", self.gate_space is not None),
                                            ("value_heads_per_qk", G != 1), ("cu_seqlens", self.cu_seqlens)) if on]
            if fla_only:
                raise ValueError(f"option {fla_only[0]} applies to layout 'fla' only (the refmem layout sends refmem's own "
                                 "gates, heads and batches)")

    @property
    def v_first(self) -> bool:
        """Whether states are ``[..., V, K]`` (the option, else the layout's default)."""
        return self.state_v_first if self.state_v_first is not None else self.name == "refmem"

    @property
    def log_gates(self) -> bool:
        return self.gate_space != "linear"

    @property
    def prescales_q(self) -> bool:
        """fla with its default scale and q as refmem gives it: ``q`` is sent times ``sqrt(K)`` (module docstring)."""
        return self.name == "fla" and self.scale is None and not self.use_qk_l2norm_in_kernel

    def read_out_scale(self, d_k: int) -> float:
        """The factor the expected read-out carries: the option, else 1 (refmem) or ``d_k^{-1/2}`` (fla)."""
        if self.scale is not None:
            return float(self.scale)
        return 1.0 if self.name == "refmem" else d_k ** -0.5

    def describe(self) -> str:
        """The layout and every option that differs from its default, for a result's verdict line."""
        parts = [self.name]
        for opt, default in (("state_v_first", None), ("gate_space", None), ("value_heads_per_qk", 1),
                             ("cu_seqlens", False), ("use_qk_l2norm_in_kernel", False), ("scale", None)):
            val = getattr(self, opt)
            if val != default:
                parts.append(f"{opt}={val}")
        return ", ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"


# ---------------------------------------------------------------- building the call


class NotApplicable(Exception):
    """A case the layout cannot express (reported as skipped, never as a pass)."""


class OutputShapeError(Exception):
    """An output whose shape does not fit the layout (kept as a value: a failing row for that output only)."""

    def __init__(self, output, detail):
        self.output, self.detail = output, detail
        super().__init__(detail)


@dataclass
class Invocation:
    """One call of the kernel: positional and keyword arguments, and how to read its outputs back."""

    args: tuple
    kwargs: dict
    unpack: Callable  # {name: numpy array} in the kernel's layout -> {name: refmem-layout array or OutputShapeError}


@dataclass
class Call:
    """Every invocation a case needs (several for a packed case sent one sequence at a time) and the expected outputs."""

    invocations: list
    merge: Callable  # [unpacked outputs per invocation] -> {name: refmem-layout array or OutputShapeError}
    expected: dict  # {name: float64 reference in refmem's layout, the read-out scaled as the layout says}


def lead_to_bh(lead: tuple) -> tuple:
    """refmem's leading dims as fla's ``(B, H)``."""
    if len(lead) == 0:
        return (1, 1)
    if len(lead) == 1:
        return (lead[0], 1)
    return (int(np.prod(lead[:-1])), lead[-1])


def to_bh(a: np.ndarray, lead: tuple) -> np.ndarray:
    """An array with refmem's leading dims ``lead`` as ``(B, H, ...)`` (:func:`lead_to_bh`)."""
    return a.reshape(lead_to_bh(lead) + a.shape[len(lead):])


def pack_rows(a: np.ndarray) -> np.ndarray:
    """``(B, H, T, ...) -> (1, H, B T, ...)``: the ``B`` batch rows laid end to end as packed sequences."""
    B, H, T = a.shape[:3]
    return np.moveaxis(a, 0, 1).reshape((1, H, B * T) + a.shape[3:])


def time_second(a: np.ndarray) -> np.ndarray:
    """``(B, H, T, ...) -> (B, T, H, ...)``: fla's axis order of a sequence or a gate."""
    return np.swapaxes(a, 1, 2)


def _unit_rows(x: np.ndarray) -> bool:
    """Every ``x_t`` of unit norm, to float64 rounding (a unit vector stored in float64 is 1 to ~1e-16 sqrt(d))."""
    return bool(np.all(np.abs(np.linalg.norm(x, axis=-1) - 1.0) <= 1e-12))


def raw_qk(case, q, k):
    """``q, k`` times per-token factors in :data:`RAW_QK_FACTORS` (deterministic per case), for an in-kernel l2 norm."""
    if not (_unit_rows(q) and _unit_rows(k)):
        raise NotApplicable("use_qk_l2norm_in_kernel needs a case whose q and k are unit vectors (the unit_qk case): the "
                            "reference reads the normalised q, k")
    rng = np.random.default_rng(zlib.crc32(f"{case.spec}/{case.name}/raw_qk".encode()))
    lo, hi = RAW_QK_FACTORS
    rq = rng.uniform(lo, hi, q.shape[:-1] + (1,))  # (..., T, 1)
    rk = rng.uniform(lo, hi, k.shape[:-1] + (1,))  # (..., T, 1)
    return q * rq, k * rk


def build_call(case, layout: Layout, cast, accepts: Callable[[str], bool]) -> Call:
    """The call(s) of ``case`` in ``layout`` (module docstring); ``NotApplicable`` when the layout cannot express it."""
    from .vectors import positional_names

    inputs = dict(case.inputs)
    expected = dict(case.outputs)
    if positional_names(inputs) != ("q", "k", "v"):  # the flat convention: x only, refmem's layout as it is
        if layout != Layout("refmem"):
            raise NotApplicable("layout options are for sequence memories (q, k, v); this reference takes x")
        kw = {n: cast(a) for n, a in case.call_kwargs().items()}
        inv = Invocation(tuple(cast(inputs[n]) for n in positional_names(inputs)), kw, lambda outs: outs)
        return Call([inv], lambda outs: outs[0], expected)
    if layout.use_qk_l2norm_in_kernel:
        inputs["q"], inputs["k"] = raw_qk(case, inputs["q"], inputs["k"])
    K = case.inputs["k"].shape[-1]
    if layout.prescales_q:  # fla's default scale 1/sqrt(K) cancels: the kernel's read-out is refmem's M_t q_t
        inputs["q"] = inputs["q"] * math.sqrt(K)
    elif "o" in expected:
        expected["o"] = expected["o"] * layout.read_out_scale(K)
    params = dict(case.params)
    if layout.name == "refmem":
        return _refmem_call(case.spec, inputs, params, layout, cast, expected)
    return _fla_call(case.spec, inputs, params, layout, cast, accepts, expected)


def _extra_kwargs(layout: Layout, accepts) -> dict:
    kw = {}
    if layout.scale is not None:
        kw["scale"] = layout.scale
    if layout.use_qk_l2norm_in_kernel:
        kw["use_qk_l2norm_in_kernel"] = True
    if layout.name == "fla" and accepts("output_final_state"):
        kw["output_final_state"] = True
    return kw


def _per_sequence(inputs: dict) -> list[dict]:
    return split_packed(inputs) if CU_SEQLENS in inputs else [inputs]


def _merge(parts: list[dict], packed: bool) -> dict:
    if not packed:
        return parts[0]
    bad = {n: v for p in parts for n, v in p.items() if isinstance(v, OutputShapeError)}
    names = [n for n in parts[0] if all(n in p for p in parts)]
    merged = merge_packed([{n: p[n] for n in names if n not in bad} for p in parts]) if len(names) > len(bad) else {}
    merged.update(bad)
    return merged


def _refmem_call(spec, inputs, params, layout, cast, expected) -> Call:
    if not layout.v_first and any(n.startswith("state_") for n in expected):
        raise NotApplicable("state_v_first=False transposes a single matrix state; this memory's state has several parts")
    packed = CU_SEQLENS in inputs
    invocations = []
    for one in _per_sequence(inputs):
        kw = {}
        for n, a in one.items():
            if n in ("q", "k", "v"):
                continue
            if n == "initial_state" and not layout.v_first:
                a = np.swapaxes(a, -1, -2)  # M0^T: (..., d_k, d_v)
            kw[n] = cast(a)
        kw.update(params)
        kw.update(_extra_kwargs(layout, lambda n: False))
        invocations.append(Invocation((cast(one["q"]), cast(one["k"]), cast(one["v"])), kw,
                                      _refmem_unpack(layout)))
    return Call(invocations, lambda parts: _merge(parts, packed), expected)


def _refmem_unpack(layout):
    def unpack(outs):
        if layout.v_first:
            return outs
        return {n: (np.swapaxes(a, -1, -2) if n == "state" else a) for n, a in outs.items()}  # S^T = M

    return unpack


def _fla_call(spec, inputs, params, layout, cast, accepts, expected) -> Call:
    if isinstance(inputs.get("initial_state"), tuple):
        raise NotApplicable("the fla layout needs a single matrix state; this memory's initial state has several parts")
    lead = tuple(inputs["k"].shape[:-2])
    B, H = lead_to_bh(lead)
    bh = {n: (a if n == CU_SEQLENS else to_bh(a, lead))  # [B, H, ...]
          for n, a in inputs.items() if n != "initial_state"}
    packed_case = CU_SEQLENS in inputs
    if "initial_state" in inputs:
        s0 = inputs["initial_state"]  # [N, H, d_v, d_k] for a packed case, else [..., d_v, d_k]
        bh["initial_state"] = s0 if packed_case else to_bh(s0, lead)
    G = layout.value_heads_per_qk
    if G > 1:
        if H % G:
            raise NotApplicable(f"value_heads_per_qk={G} must divide the case's {H} heads")
        for n in ("q", "k"):
            if not np.array_equal(bh[n], np.repeat(bh[n][:, ::G], G, axis=1)):
                raise NotApplicable(f"the case's {n} differs between the value heads of a group of {G} (only cases whose "
                                    "heads share q and k in groups, e.g. grouped_heads, can be sent with grouped value heads)")
    T, V = bh["v"].shape[-2:]
    state_bh = None if "state" not in expected else expected["state"].shape[-2:]  # (d_v, d_k)
    packed_rows = layout.cu_seqlens and not packed_case
    if packed_rows:  # B rows of length T -> one packed batch of N = B sequences
        for n, a in list(bh.items()):
            if n != "initial_state":
                bh[n] = pack_rows(a)  # (B, H, T, ..) -> (1, H, B T, ..)
        bh[CU_SEQLENS] = np.arange(0, B * T + 1, T, dtype=np.float64)  # (B + 1,)
    if layout.cu_seqlens:
        n_seq = len(sequence_bounds(bh[CU_SEQLENS]))
        inv = _fla_invocation(spec, bh, params, layout, cast, accepts, packed=True)

        def merge(parts):
            out = _fla_outputs(parts[0], (1, H, bh["v"].shape[-2], V), state_bh and (n_seq,) + (H,) + state_bh, layout)
            if packed_rows and not isinstance(out.get("o"), (OutputShapeError, type(None))):
                out["o"] = np.moveaxis(out["o"].reshape(H, B, T, V), 1, 0)  # (1, H, B T, V) -> (B, H, T, V)
            return _to_case_shapes(out, expected)

        return Call([inv], merge, expected)
    pieces = _per_sequence(bh)
    invs = [_fla_invocation(spec, one, params, layout, cast, accepts, packed=False) for one in pieces]
    n_each = 1 if packed_case else B  # states per call: one per sequence (a packed case, one call each) or per row

    def merge_each(parts):
        per = [_fla_outputs(out, piece["v"].shape[:-1] + (V,), state_bh and (n_each, H) + state_bh, layout)
               for out, piece in zip(parts, pieces)]
        return _to_case_shapes(_merge(per, packed_case), expected)

    return Call(invs, merge_each, expected)


def _to_case_shapes(out: dict, expected: dict) -> dict:
    """Reshape the ``(B, H, ...)`` outputs to the case's own leading dims."""
    res = {}
    for n, a in out.items():
        if isinstance(a, np.ndarray) and n in expected and a.size == expected[n].size and n in ("o", "state"):
            res[n] = a.reshape(expected[n].shape)
        else:
            res[n] = a
    return res


def _fla_invocation(spec, bh, params, layout, cast, accepts, packed) -> Invocation:
    """One fla call from inputs with leading dims ``(B, H)`` (or a packed batch with ``cu_seqlens``)."""
    G = layout.value_heads_per_qk
    seq = time_second  # (B, H, T, ...) -> (B, T, H, ...)
    q, k = (bh[n][:, ::G] for n in ("q", "k"))  # (B, H / G, T, K): one q, k head per group
    args = (cast(seq(q)), cast(seq(k)), cast(seq(bh["v"])))
    kw = {}
    for n, a in bh.items():
        if n in ("q", "k", "v", CU_SEQLENS):
            continue
        if n == "initial_state":
            kw[n] = cast(a if layout.v_first else np.swapaxes(a, -1, -2))  # (N, H, V, K) or S0 = M0^T (N, H, K, V)
            continue
        meaning = gate_meaning(spec, n)
        per_channel = a.ndim == bh["k"].ndim
        if meaning.forget_gate:
            kept = kept_fraction(meaning, a).astype(cast.dtype)  # in the compared dtype, before the log
            a = log_gate(kept) if layout.log_gates else kept
        kw[fla_gate_name(spec, n, per_channel)] = cast(seq(a))
    if packed:
        sequence_bounds(bh[CU_SEQLENS])  # validated: integers from 0, increasing
        kw[CU_SEQLENS] = cast.offsets(np.asarray(bh[CU_SEQLENS]).astype(np.int64))  # (N + 1,)
    kw.update(params)  # the memory's non-array parameters (a window length, ...), as they are
    kw.update(_extra_kwargs(layout, accepts))
    return Invocation(args, kw, lambda outs: outs)


def _fla_outputs(outs: dict, o_bh: tuple, state_bh, layout: Layout) -> dict:
    """fla-layout returns as ``(B, H, ...)`` arrays in refmem's orientation; a misshapen output is an :class:`OutputShapeError`.

    ``o_bh``: the expected read-out shape ``(B, H, T, V)``; ``state_bh``: the
    expected state shape ``(N, H, d_v, d_k)`` (or ``None``).
    """
    res = {}
    for n, a in outs.items():
        if n == "o":
            B, H, T, V = o_bh
            fla_shape = (B, T, H, V)
            res[n] = (np.swapaxes(a, 1, 2) if a.shape == fla_shape else  # (B, T, H, V) -> (B, H, T, V)
                      OutputShapeError(n, f"shape {a.shape}, but the layout expects [B, T, H, V] = {fla_shape}"))
        elif n == "state" and state_bh is not None:
            N, H, d_v, d_k = state_bh
            fla_shape = (N, H, d_v, d_k) if layout.v_first else (N, H, d_k, d_v)
            if a.shape != fla_shape:
                other = (N, H, d_k, d_v) if layout.v_first else (N, H, d_v, d_k)
                hint = (f" (a state in the other orientation? this layout expects "
                        f"{'[V, K] (state_v_first)' if layout.v_first else 'S = M^T, [K, V]'})") if a.shape == other else ""
                res[n] = OutputShapeError(n, f"shape {a.shape}, but the layout expects {fla_shape}{hint}")
            else:
                res[n] = a if layout.v_first else np.swapaxes(a, -1, -2)  # S^T = M: (N, H, d_v, d_k)
        else:
            res[n] = a
    return res


def gate_table() -> list[tuple]:
    """``(spec, gate, meaning, fla name, what the fla kernel receives)`` for every gate of every registered memory."""
    rows = []
    for spec, gates in GATE_MEANINGS.items():
        for gate, m in gates.items():
            if m.meaning == "kept":
                sent = f"g = log({gate}) (gk per key channel)"
            elif m.meaning == "forgotten":
                sent = f"g = log(1 - {gate}) (gk per key channel)"
            else:
                sent = f"{gate} (as it is)"
            rows.append((spec, gate, m.meaning, fla_gate_name(spec, gate, False), sent))
    return rows
