"""refmem's gradients in fla's names and spaces (``refmem.backward.fla_names``) against autodiff of fla-style kernels.

Each kernel below is written the way flash-linear-attention states its
recurrence: inputs ``[B, T, H, d]``, state ``S = M^T`` of shape ``[B, H, K, V]``,
``scale`` on ``q``, forget gates in log space (``g``, or ``gk`` per key
channel), ``beta`` after the sigmoid. JAX (and torch, where installed)
differentiate it in float64; refmem's VJP, mapped by :func:`to_fla` and moved
to fla's axis order, must give the same ``dq, dk, dv, dbeta, dg/dgk, dh0``.
Both sides are exact derivatives of the same function computed in a
different order: rounding only, ``tol = 64 (T + K + V) u`` relative to each
gradient's scale (the problems are small and well conditioned: keys of norm
about 1, gates in [0.8, 1], steps below 1).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import refmem
from refmem.backward.fla_names import FORGET_GATES, to_fla
from refmem.memories import MEMORIES
from refmem.metrics import rel_error

U64 = np.finfo(np.float64).eps / 2
B, H, T, K, V = 2, 2, 6, 3, 4
SCALE = K ** -0.5


def fla_kernel(xp):
    """The fla-convention kernel: ``f(q, k, v, gates..., h0) -> (o [B,T,H,V], S_T [B,H,K,V])``."""

    def run(q, k, v, h0, g=None, gk=None, beta=None):
        S = h0
        outs = []
        for t in range(q.shape[1]):
            kt, vt, qt = k[:, t], v[:, t], q[:, t]  # (B, H, d)
            if g is not None:
                S = xp.exp(g[:, t])[..., None, None] * S  # decay before the write (fla's order)
            if gk is not None:
                S = xp.exp(gk[:, t])[..., :, None] * S  # per key channel: rows of S = M^T
            if beta is not None:  # delta rule: v_new = beta (v - S^T k)
                vt = beta[:, t][..., None] * (vt - xp.sum(S * kt[..., :, None], axis=-2))
            S = S + kt[..., :, None] * vt[..., None, :]
            outs.append(xp.sum(S * (SCALE * qt)[..., :, None], axis=-2))  # o_t = S^T (scale q)
        return xp.stack(outs, axis=1), S

    return run


CASES = {  # memory, per-channel gate, fla argument names
    "delta_rule": (False, ("beta",)),
    "gated_delta_rule": (False, ("g", "beta")),
    "gated_linear_attention": (False, ("g",)),
    "gated_linear_attention-gk": (True, ("gk",)),
    "linear_attention": (False, ()),
}


def to_fla_axes(x):
    """refmem ``[B, H, T, d]`` / ``[B, H, T]`` -> fla ``[B, T, H, d]`` / ``[B, T, H]``."""
    return np.swapaxes(x, 1, 2)


def problem(case):
    name = case.split("-")[0]
    per_channel, _ = CASES[case]
    inp = dict(MEMORIES[name].make_inputs(0, (B, H), T, K, V, np, "float64",
                                          **({"per_channel": True} if per_channel else {})))
    g = np.random.default_rng(1)
    inp["initial_state"] = g.standard_normal((B, H, V, K)) / np.sqrt(K)
    o, M = MEMORIES[name].recurrent(**inp)
    return name, inp, g.standard_normal(o.shape), g.standard_normal(M.shape)


def fla_inputs(name, inp):
    """The same problem in fla's variables: ``q_fla = q / scale``, ``g = log a``, ``h0 = M_0^T``."""
    args = {"q": to_fla_axes(inp["q"] / SCALE), "k": to_fla_axes(inp["k"]), "v": to_fla_axes(inp["v"]),
            "h0": np.swapaxes(inp["initial_state"], -1, -2)}
    if "beta" in inp:
        args["beta"] = to_fla_axes(inp["beta"])
    if "alpha" in inp:
        args["gk" if inp["alpha"].ndim == inp["k"].ndim else "g"] = np.log(to_fla_axes(inp["alpha"]))
    return args


def expected_from_refmem(name, inp, do, dM_T):
    grads = MEMORIES[name].backward.recurrent(**inp, do=do, dM_T=dM_T)
    mapped = to_fla(name, grads, inp, scale=SCALE)
    return {key: (val if key == "dh0" else to_fla_axes(val)) for key, val in mapped.items()}


def jax_grads(args, do, dM_T):
    import jax

    jnp = refmem.backends.get_backend("jax").namespace()
    keys = sorted(args)
    kernel = fla_kernel(jnp)
    f = lambda *xs: kernel(**dict(zip(keys, xs)))  # noqa: E731
    _, pullback = jax.vjp(f, *(jnp.asarray(args[k]) for k in keys))
    grads = pullback((jnp.asarray(to_fla_axes(do)), jnp.asarray(np.swapaxes(dM_T, -1, -2))))
    return {"d" + k: np.asarray(g) for k, g in zip(keys, grads)}


def torch_grads(args, do, dM_T):
    import torch

    ts = {k: torch.tensor(a, requires_grad=True) for k, a in args.items()}
    o, S = fla_kernel(_torch_ns())(**ts)
    ((o * torch.tensor(to_fla_axes(do))).sum() + (S * torch.tensor(np.swapaxes(dM_T, -1, -2))).sum()).backward()
    return {"d" + k: t.grad.numpy() for k, t in ts.items()}


def _torch_ns():
    import array_api_compat.torch as xp

    return xp


WITNESSES = [
    pytest.param(jax_grads, marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                     reason="jax is not installed (refmem[jax])"), id="jax"),
    pytest.param(torch_grads, marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                       reason="torch is not installed (refmem[torch])"), id="torch"),
]


@pytest.mark.parametrize("witness", WITNESSES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_fla_names_and_spaces_equal_autodiff_of_an_fla_kernel(witness, case):
    name, inp, do, dM_T = problem(case)
    want = witness(fla_inputs(name, inp), do, dM_T)
    got = expected_from_refmem(name, inp, do, dM_T)
    assert set(got) == set(want), f"{case}: refmem maps to {sorted(got)}, the fla kernel has {sorted(want)}"
    tol = 64 * (T + K + V) * U64
    for key in want:
        assert got[key].shape == want[key].shape, f"{case} {key}: {got[key].shape} vs {want[key].shape}"
        err = rel_error(got[key], want[key], np)
        assert err <= tol, f"{case} {key}: relative error {err:.2e} > {tol:.2e}"


FORGET_GATE_MEMORIES = {  # every memory whose gates include what the state keeps (or forgets), written out here
    "gated_linear_attention": ("alpha", "kept"), "gated_delta_rule": ("alpha", "kept"),
    "titans": ("alpha", "forgotten"), "omega": ("alpha", "kept"), "omega_implicit": ("alpha", "kept"),
    "yaad": ("alpha", "kept"), "moneta": ("alpha", "kept"), "deep_memory": ("alpha", "kept"),
}


def test_forget_gates_are_read_off_the_gate_table():
    # one table: fla_names reads the forget gates off refmem.gate_meanings, the table the forward layouts read
    from refmem import gate_meanings, kernel_layouts

    assert FORGET_GATES is gate_meanings.FORGET_GATES and kernel_layouts.GATE_MEANINGS is gate_meanings.GATE_MEANINGS
    assert FORGET_GATES == FORGET_GATE_MEMORIES


def _first_state(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("name", ["titans", "omega", "yaad", "moneta", "deep_memory"])
def test_forget_gate_gradient_is_dg_in_log_space_of_what_is_kept(name):
    """``dg`` for every memory with a forget gate: ``g = log(kept)``, kept ``alpha`` or Titans' ``1 - alpha``.

    Checked against central differences of the loss in ``g`` itself (the memory run on
    ``alpha = exp(g)`` or ``1 - exp(g)``), so the space and the sign come from the definition.
    """
    gate, meaning = FORGET_GATE_MEMORIES[name]
    mem = MEMORIES[name]
    inp = dict(mem.make_inputs(0, (B,), T, K, V, np, "float64"))
    g = np.random.default_rng(2)
    o, state = mem.recurrent(**inp)
    do = g.standard_normal(o.shape)
    dM_T = g.standard_normal(_first_state(state).shape)  # the other parts of a deep state get a zero cotangent
    cot = (dM_T, *(np.zeros_like(x) for x in state[1:])) if isinstance(state, tuple) else dM_T
    grads = mem.backward.recurrent(**inp, do=do, dM_T=cot)
    mapped = to_fla(name, grads, inp)
    assert "dg" in mapped and "d" + gate not in mapped, sorted(mapped)
    to_alpha = np.exp if meaning == "kept" else (lambda lg: 1 - np.exp(lg))  # noqa: E731
    log_kept = np.log(inp[gate] if meaning == "kept" else 1 - inp[gate])

    def loss(lg):
        o2, state2 = mem.recurrent(**dict(inp, **{gate: to_alpha(lg)}))
        return np.sum(do * o2) + np.sum(dM_T * _first_state(state2))

    h = 1e-6
    fd = np.zeros_like(log_kept)
    for idx in np.ndindex(log_kept.shape):
        plus, minus = log_kept.copy(), log_kept.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (loss(plus) - loss(minus)) / (2 * h)
    # step h = 1e-6: truncation ~h^2 |L'''| and rounding ~eps |L| / h, both below 1e-8 for these O(1) problems
    assert np.max(np.abs(mapped["dg"] - fd)) <= 1e-7 * max(1.0, np.max(np.abs(fd)))
    if name == "titans":
        assert set(mapped) == {"dq", "dk", "dv", "dg", "deta", "dtheta", "dh0", "dinitial_momentum"}
    # in linear space the kernel's g is the kept fraction itself: dg = dL/dkept (= -dalpha for Titans)
    linear = to_fla(name, grads, inp, gate_space="linear")
    assert np.array_equal(linear["dg"], grads[gate] if meaning == "kept" else -grads[gate])


def test_scale_must_be_a_number():
    name, inp, do, dM_T = problem("delta_rule")
    grads = MEMORIES[name].backward.recurrent(**inp, do=do, dM_T=dM_T)
    with pytest.raises(TypeError, match="scale must be a number"):
        to_fla(name, grads, inp, scale="1/sqrt(K)")
    assert math.isclose(float(np.max(np.abs(to_fla(name, grads, inp, scale=2.0)["dq"] - 2 * grads["q"]))), 0.0)
    with pytest.raises(ValueError, match="gate_space must be 'log' or 'linear'"):
        to_fla(name, grads, inp, gate_space="exp")
