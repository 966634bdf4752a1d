"""Sequence memories: one level each, scanned over a sequence (Nested Learning; MATH.md 5).

Every memory module defines a recurrent scan ``name_recurrent(q, k, v, ...,
initial_state=None) -> (o, M_T)`` over inputs ``[..., T, d]`` (any leading
batch/head dims); :mod:`refmem.chunked` holds the exact chunked and the
mini-batch forms. :data:`MEMORIES`, at the end of this file, is the one table
of what exists: one :class:`MemorySpec` per memory with every form and helper
it has. It is complete as soon as ``refmem`` is imported. The table is what the
tests, ``refmem verify``, ``refmem bench``, the test vectors and the GPU
agreement tests iterate over, so a memory added to it is covered everywhere
without new test code.

Conventions (MATH.md 0): state ``M [..., d_v, d_k]``; read-out
``o_t = M_t q_t`` with ``M_t`` the state *after* the update with token ``t``;
no scale is applied to ``q`` (adapters for other layouts add it).

Examples
--------
>>> import refmem
>>> from refmem.memories import MEMORIES
>>> spec = MEMORIES["delta_rule"]
>>> spec.recurrent.__name__, spec.chunked.__name__, spec.minibatch.__name__
('delta_rule_recurrent', 'delta_rule_chunked', 'delta_rule_minibatch')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# The table imports the memory modules, their chunked forms and their backward passes. Those import
# leaf modules of this package (``refmem.memories.delta_rule``, ...), never this table: no import cycle
# between modules (tests/test_imports.py).
from . import (deep_memory, delta_rule, dgd, gated_delta_rule, gated_linear_attention, linear_attention, longhorn,
               memora, mesa, moneta, omega, softmax_attention, titans, titans_deep, yaad)
from ..chunked import delta_rule as delta_rule_chunked
from ..chunked import gated_delta_rule as gated_delta_rule_chunked
from ..chunked import gated_linear_attention as gated_linear_attention_chunked
from ..chunked import linear_attention as linear_attention_chunked
from ..chunked import longhorn as longhorn_chunked
from ..chunked import mesa as mesa_chunked
from ..chunked import titans as titans_chunked
from ..backward import BackwardSpec
from ..backward import attention as attention_backward
from ..backward import deep_memory as deep_memory_backward
from ..backward import delta_rule as delta_rule_backward
from ..backward import dgd as dgd_backward
from ..backward import linear_attention as linear_attention_backward
from ..backward import longhorn as longhorn_backward
from ..backward import minibatch as minibatch_backward
from ..backward import miras as miras_backward
from ..backward import mesa as mesa_backward
from ..backward import mesa_chunked as mesa_chunked_backward
from ..backward import omega as omega_backward
from ..backward import titans as titans_backward
from ..backward import titans_chunked as titans_chunked_backward
from ..tables import table_by_name


@dataclass(frozen=True)
class MemorySpec:
    """A registered sequence memory.

    Attributes
    ----------
    name : str
        Registry name, also the name of its spec file in ``specs/``.
    recurrent : callable
        ``recurrent(q, k, v, **gates, initial_state=None) -> (o, M_T)``.
    gates : tuple of str
        Names of the extra per-step inputs (keyword arguments), e.g. ``("beta",)``.
    make_inputs : callable
        ``make_inputs(seed, batch, T, d_k, d_v, xp, dtype) -> dict`` of valid
        random inputs (``q, k, v`` and the gates) for tests and benchmarks.
    description : str
        The update in one line.
    step_gates : tuple of str
        The gates that are step sizes (they scale like ``1 / ||k||^2``): the
        test vectors divide them by ``s^2`` when they scale the keys by ``s``.
    state : str
        What the state is, when it is not the matrix ``M [..., d_v, d_k]``.
    make_initial_state : callable or None
        ``make_initial_state(seed, batch, d_k, d_v, xp, dtype) -> state`` for a
        memory whose state is not a matrix (a cache, statistics, MLP weights).
    chunked, minibatch : callable or None
        Chunked (exact) and mini-batch forms, same signature plus ``chunk_size``.
    step_level : callable or None
        ``step_level(**gates_at_t) -> Level``: the level one step of the scan
        solves at ``(k_t, v_t)`` (for closed == iterative per step).
    step_value : callable or None
        ``step_value(M_{t-1}, k_t, v_t) -> value`` when the value the step level
        fits is not ``v_t`` (DGD fits the surprise ``u_t``).
    windowed : bool
        The step level reads the last ``c`` tokens: ``step_level(**gates_at_t)``
        is applied to the window's keys ``[..., c, d_k]`` and values ``[..., c, d_v]``.
    levels : callable or None
        ``levels(**gates_at_t) -> tuple of Level``: the levels one step solves in
        turn, for a memory of several levels (Titans: momentum, then memory).
    iterative : callable or None
        The whole-context problem solved by an iterative solver, for a memory
        whose step is not one proximal step (Mesa, attention).
    deep : callable or None
        The same memory on the residual-MLP deep memory.
    device_reads : dict
        ``{form: why}`` for a form that reads the device on purpose (an inner
        iterative solver's stopping test).
    backward : BackwardSpec or None
        The hand-written backward passes (vector-Jacobian products) of the
        recurrent and chunked forms (:mod:`refmem.backward`).
    """

    name: str
    recurrent: Callable
    gates: tuple[str, ...]
    make_inputs: Callable
    description: str
    step_gates: tuple[str, ...] = ()
    state: str = "matrix M [..., d_v, d_k]"
    make_initial_state: Callable | None = None
    chunked: Callable | None = None
    minibatch: Callable | None = None
    step_level: Callable | None = None
    step_value: Callable | None = None
    windowed: bool = False
    levels: Callable | None = None
    iterative: Callable | None = None
    deep: Callable | None = None
    device_reads: dict = field(default_factory=dict)
    backward: BackwardSpec | None = None


MEMORIES: dict[str, MemorySpec] = table_by_name(
    "memory",
    # --- the linear / delta family (MATH.md 5.1) ---
    MemorySpec(
        name="linear_attention",
        recurrent=linear_attention.linear_attention_recurrent,
        gates=(),
        make_inputs=linear_attention.make_inputs,
        description="M_t = M_{t-1} + v_t k_t^T",
        chunked=linear_attention_chunked.linear_attention_chunked,
        step_level=linear_attention.linear_attention_level,
        backward=BackwardSpec(linear_attention_backward.linear_attention_vjp,
                              linear_attention_backward.linear_attention_chunked_vjp),
    ),
    MemorySpec(
        name="gated_linear_attention",
        recurrent=gated_linear_attention.gated_linear_attention_recurrent,
        gates=("alpha",),
        make_inputs=gated_linear_attention.make_inputs,
        description="M_t = alpha_t M_{t-1} + v_t k_t^T (alpha scalar, or per key channel: M_{t-1} diag(alpha_t))",
        chunked=gated_linear_attention_chunked.gated_linear_attention_chunked,
        step_level=gated_linear_attention.gated_linear_attention_level,
        backward=BackwardSpec(linear_attention_backward.gated_linear_attention_vjp,
                              linear_attention_backward.gated_linear_attention_chunked_vjp),
    ),
    MemorySpec(
        name="delta_rule",
        recurrent=delta_rule.delta_rule_recurrent,
        gates=("beta",),
        make_inputs=delta_rule.make_inputs,
        description="M_t = M_{t-1} - beta_t (M_{t-1} k_t - v_t) k_t^T",
        step_gates=("beta",),
        chunked=delta_rule_chunked.delta_rule_chunked,
        minibatch=delta_rule_chunked.delta_rule_minibatch,
        step_level=delta_rule.delta_rule_level,
        backward=BackwardSpec(delta_rule_backward.delta_rule_vjp, delta_rule_backward.delta_rule_chunked_vjp,
                              minibatch=minibatch_backward.delta_rule_minibatch_vjp),
    ),
    MemorySpec(
        name="gated_delta_rule",
        recurrent=gated_delta_rule.gated_delta_rule_recurrent,
        gates=("alpha", "beta"),
        make_inputs=gated_delta_rule.make_inputs,
        description="M_t = a_t M_{t-1} - b_t (a_t M_{t-1} k_t - v_t) k_t^T",
        step_gates=("beta",),
        chunked=gated_delta_rule_chunked.gated_delta_rule_chunked,
        minibatch=gated_delta_rule_chunked.gated_delta_rule_minibatch,
        step_level=gated_delta_rule.gated_delta_rule_level,
        backward=BackwardSpec(delta_rule_backward.gated_delta_rule_vjp,
                              delta_rule_backward.gated_delta_rule_chunked_vjp,
                              minibatch=minibatch_backward.gated_delta_rule_minibatch_vjp),
    ),
    MemorySpec(
        name="longhorn",
        recurrent=longhorn.longhorn_recurrent,
        gates=("beta",),
        make_inputs=longhorn.make_inputs,
        description="M_t = M_{t-1} - diag(e_t) (M_{t-1} k_t - v_t) k_t^T, e_t = b_t / (1 + b_t ||k_t||^2)",
        step_gates=("beta",),
        chunked=longhorn_chunked.longhorn_chunked,
        step_level=longhorn.longhorn_level,
        backward=BackwardSpec(longhorn_backward.longhorn_vjp, longhorn_backward.longhorn_chunked_vjp),
    ),
    MemorySpec(
        name="dgd",
        recurrent=dgd.dgd_recurrent,
        gates=("beta",),
        make_inputs=dgd.make_inputs,
        description="M_t = M_{t-1}(I - e_t k_t k_t^T) + e_t u_t k_t^T, u_t = -dL/dy(M_{t-1} k_t; v_t); "
                    "step_level's value is u_t (step_value), not v_t",
        step_gates=("beta",),
        step_level=dgd.dgd_level,
        step_value=dgd.dgd_value,
        backward=BackwardSpec(dgd_backward.dgd_vjp),
    ),
    # --- Titans: a momentum level under a memory level ---
    MemorySpec(
        name="titans",
        recurrent=titans.titans_recurrent,
        gates=("alpha", "eta", "theta"),
        make_inputs=titans.make_inputs,
        description="S_t = eta_t S_{t-1} - theta_t (M_{t-1} k_t - v_t) k_t^T, M_t = (1 - alpha_t) M_{t-1} + S_t",
        step_gates=("theta",),  # theta is the step size; eta is the momentum decay, not a step
        chunked=titans_chunked.titans_chunked,
        minibatch=titans_chunked.titans_minibatch,
        levels=titans.titans_levels,
        deep=titans_deep.titans_deep_recurrent,
        backward=BackwardSpec(titans_backward.titans_vjp, titans_chunked_backward.titans_chunked_vjp,
                              minibatch=minibatch_backward.titans_minibatch_vjp,
                              deep=deep_memory_backward.titans_deep_vjp),
    ),
    # --- Omega: a window of the last c tokens ---
    MemorySpec(
        name="omega",
        recurrent=omega.omega_recurrent,
        gates=("alpha", "gamma"),
        make_inputs=omega.make_inputs,
        description="M_t = M_{t-1}(a_t I - sum_i gam_i k_i k_i^T) + sum_i gam_i v_i k_i^T over the last c tokens; "
                    "step_level takes the window's keys [..., c, d_k] and values [..., c, d_v]",
        step_gates=("gamma",),
        step_level=omega.omega_level,
        windowed=True,
        backward=BackwardSpec(omega_backward.omega_vjp),
    ),
    MemorySpec(
        name="omega_implicit",
        recurrent=omega.omega_implicit_recurrent,
        gates=("alpha", "gamma"),
        make_inputs=omega.make_implicit_inputs,
        description="argmin_M 1/2 sum_i gam_i ||M k_i - v_i||^2 + 1/2 ||M - a_t M_{t-1}||^2 over the last c tokens "
                    "(solved in the SVD basis of the weighted keys); step_level takes the window's keys and values",
        step_gates=("gamma",),
        step_level=omega.omega_implicit_level,
        windowed=True,
        backward=BackwardSpec(omega_backward.omega_implicit_vjp),
    ),
    # --- Mesa: the whole context's least squares ---
    MemorySpec(
        name="mesa",
        recurrent=mesa.mesa_recurrent,
        gates=("lam",),
        make_inputs=mesa.make_inputs,
        description="M_t = argmin sum_{i<=t} ||M k_i - v_i||^2 + lam_t ||M||^2 (linear solve; CG)",
        state="sufficient statistics (G, H)",
        make_initial_state=mesa.make_initial_state,
        chunked=mesa_chunked.mesa_chunked,
        iterative=mesa.mesa_iterative,
        # the chunked form is conjugate gradient: its stopping test reads the device once per iteration
        device_reads={"chunked": "conjugate gradient stopping test, one read per iteration"},
        backward=BackwardSpec(mesa_backward.mesa_vjp, mesa_chunked_backward.mesa_chunked_vjp),
    ),
    # --- softmax attention: a non-parametric memory ---
    MemorySpec(
        name="softmax_attention",
        recurrent=softmax_attention.softmax_attention_recurrent,
        gates=(),
        make_inputs=softmax_attention.make_inputs,
        description="o_t = argmin_m sum_{i<=t} exp(q_t.k_i) ||v_i - m||^2 = sum_i softmax_i v_i (no scale on q)",
        state="key-value cache (K, V)",
        make_initial_state=softmax_attention.make_initial_state,
        iterative=softmax_attention.attention_iterative,
        backward=BackwardSpec(attention_backward.softmax_attention_vjp),
    ),
    MemorySpec(
        name="sliding_window_attention",
        recurrent=softmax_attention.sliding_window_attention_recurrent,
        gates=(),
        make_inputs=softmax_attention.make_window_inputs,
        description="softmax attention over the last `window` tokens (window is an int in make_inputs)",
        state="key-value cache (K, V)",
        make_initial_state=softmax_attention.make_initial_state,
        iterative=softmax_attention.attention_iterative,
        backward=BackwardSpec(attention_backward.sliding_window_attention_vjp),
    ),
    # --- the deep memory and the Miras memories (each also on the deep memory) ---
    MemorySpec(
        name="deep_memory",
        recurrent=deep_memory.deep_memory_recurrent,
        gates=("eta", "alpha"),
        make_inputs=deep_memory.make_inputs,
        description="M(x) = x + W1 sigma(W2 x); W_t = alpha_t W_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t) (explicit)",
        step_gates=("eta",),
        state="MLP weights (W1 [..., d, h], W2 [..., h, d]); d_v = d_k",
        make_initial_state=deep_memory.make_deep_initial_state,
        backward=BackwardSpec(deep_memory_backward.deep_memory_vjp),
    ),
    MemorySpec(
        name="yaad",
        recurrent=yaad.yaad_recurrent,
        gates=("alpha", "eta"),
        make_inputs=yaad.make_inputs,
        description="Huber bias + forget gate: M_t = alpha_t M_{t-1} - eta_t clip(M_{t-1} k_t - v_t, delta) k_t^T",
        step_gates=("eta",),
        step_level=yaad.yaad_level,
        deep=yaad.yaad_deep_recurrent,
        backward=BackwardSpec(miras_backward.yaad_vjp, deep=deep_memory_backward.yaad_deep_vjp),
    ),
    MemorySpec(
        name="moneta",
        recurrent=moneta.moneta_recurrent,
        gates=("alpha", "eta"),
        make_inputs=moneta.make_inputs,
        description="lp bias + lq retention: M_t = grad psi*(alpha_t grad psi(M_{t-1}) - eta_t grad ||M k - v||_p^p)",
        step_gates=("eta",),
        step_level=moneta.moneta_level,
        deep=moneta.moneta_deep_recurrent,
        backward=BackwardSpec(miras_backward.moneta_vjp, deep=deep_memory_backward.moneta_deep_vjp),
    ),
    MemorySpec(
        name="memora",
        recurrent=memora.memora_recurrent,
        gates=("eta",),
        make_inputs=memora.make_inputs,
        description="l2 bias + KL retention on a scaled simplex: "
                    "M_t = c softmax_row((1-lam) log M_{t-1} - eta' grad l)",
        step_gates=("eta",),
        state="matrix with positive rows summing to c",
        make_initial_state=memora.make_initial_state,
        step_level=memora.memora_level,
        deep=memora.memora_deep_recurrent,
        backward=BackwardSpec(miras_backward.memora_vjp, deep=deep_memory_backward.memora_deep_vjp),
    ),
)


def backward_passes() -> dict[str, BackwardSpec]:
    """``{memory name: BackwardSpec}`` for every registered memory that has backward passes."""
    return {name: spec.backward for name, spec in MEMORIES.items() if spec.backward is not None}


__all__ = ["MemorySpec", "MEMORIES", "backward_passes"]
