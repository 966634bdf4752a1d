r"""What every gate of every registered memory means: one table for the forward layouts and the gradient names.

A gate is a per-step (or per-channel) input other than ``q, k, v``. Kernels
name and parametrise gates by what they *do*, not by what a paper calls
them: flash-linear-attention's ``g`` is the log of the fraction of the state
*kept* per step, whether the memory stores that fraction (the gated delta
rule's ``alpha``) or the fraction forgotten (Titans' ``alpha``, the memory
keeping ``1 - alpha``). :data:`GATE_MEANINGS` says, for every gate of every
registered memory, which it is. Two modules read it:

* :mod:`refmem.kernel_layouts` sends the forget gate to an fla-layout kernel
  as ``g = log(kept)`` (``gk`` per key channel) and every other gate by its
  own name;
* :mod:`refmem.backward.fla_names` names the gradients the same way (``dg``,
  ``dgk``, ``dbeta``, ...), with :data:`FORGET_GATES` derived from the table.

Only the meaning lives here (no arrays beyond ``1 - a``), so both import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateMeaning:
    """What a gate means: ``"kept"`` (the fraction ``a_t`` of the state kept per step),
    ``"forgotten"`` (the fraction forgotten: the memory keeps ``1 - alpha_t``),
    ``"step"`` (a step size: the write strength), or another meaning (``what`` says it).

    Kept and forgotten gates are the *forget gate*: an fla-layout kernel
    receives it as ``g`` (``gk`` per key channel) holding the log of the
    fraction kept. Every other gate keeps its refmem name and value (so that
    the forward names agree with the gradient names of
    :mod:`refmem.backward.fla_names`: ``dbeta``, ``dtheta``, ...).
    """

    meaning: str
    what: str

    @property
    def forget_gate(self) -> bool:
        return self.meaning in ("kept", "forgotten")


KEPT = GateMeaning("kept", "fraction of the state kept per step")
FORGOTTEN = GateMeaning("forgotten", "fraction of the state forgotten per step (kept: 1 - alpha)")
STEP = GateMeaning("step", "step size (write strength)")

# Every registered memory's gates, by meaning (tests/test_kernel_layouts.py checks that every gate of every
# registered memory is here, that every step gate of the registry is a step, and that the forget gates'
# meanings match the memories' own updates).
GATE_MEANINGS: dict[str, dict[str, GateMeaning]] = {
    "linear_attention": {},
    "gated_linear_attention": {"alpha": KEPT},
    "delta_rule": {"beta": STEP},
    "gated_delta_rule": {"alpha": KEPT, "beta": STEP},
    "longhorn": {"beta": STEP},
    "dgd": {"beta": STEP},
    "titans": {"alpha": FORGOTTEN, "eta": GateMeaning("momentum kept", "fraction of the momentum kept per step"),
               "theta": STEP},
    "omega": {"alpha": KEPT, "gamma": STEP},
    "omega_implicit": {"alpha": KEPT, "gamma": STEP},
    "mesa": {"lam": GateMeaning("ridge", "ridge weight of the least-squares memory")},
    "softmax_attention": {},
    "sliding_window_attention": {},
    "deep_memory": {"eta": STEP, "alpha": KEPT},
    "yaad": {"alpha": KEPT, "eta": STEP},
    "moneta": {"alpha": KEPT, "eta": STEP},
    "memora": {"eta": STEP},
}


def _forget_gates(table: dict) -> dict[str, tuple[str, str]]:
    """``{memory: (gate, "kept" or "forgotten")}`` for every memory with a forget gate (at most one each)."""
    out = {}
    for spec, gates in table.items():
        forget = [(g, m.meaning) for g, m in gates.items() if m.forget_gate]
        if len(forget) > 1:
            raise ValueError(f"{spec} has {len(forget)} forget gates ({', '.join(g for g, _ in forget)}); "
                             "a kernel layout has one g")
        if forget:
            out[spec] = forget[0]
    return out


# Which gate of a memory is fla's forget gate, and whether it holds what is kept or what is forgotten.
FORGET_GATES: dict[str, tuple[str, str]] = _forget_gates(GATE_MEANINGS)


def gate_meaning(spec: str, gate: str) -> GateMeaning:
    """The meaning of gate ``gate`` of memory ``spec`` (``ValueError`` when the table does not list it)."""
    try:
        return GATE_MEANINGS[spec][gate]
    except KeyError:
        raise ValueError(f"gate {gate!r} of {spec!r} has no meaning in refmem.gate_meanings.GATE_MEANINGS") from None


def kept_fraction(meaning: GateMeaning, a):
    """The fraction of the state kept per step: ``a`` for a kept gate, ``1 - a`` for a forgetting rate."""
    return 1.0 - a if meaning.meaning == "forgotten" else a
