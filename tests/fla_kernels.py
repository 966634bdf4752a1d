r"""Kernels written in flash-linear-attention's conventions, forward and backward, independent of refmem.

Used by ``tests/test_conform_backward.py`` (in-process and as ``MODULE:FUNCTION``
targets of the command line). Layout: ``q, k, v [B, T, H, d]``, gates
``[B, T, H]`` (``gk [B, T, H, K]`` per key channel), state ``S = M^T [B, H, K, V]``, ``g`` the log of the decay,
``beta`` after the sigmoid, ``o_t = S_t^T (scale q_t)`` with ``scale = 1/sqrt(K)``.
Per step (the gated delta rule; ``g = 0`` without a gate, ``beta`` absent: a
plain write of ``v``)::

    S' = exp(g_t) S_{t-1};  u = S'^T k_t;  w = beta_t (v_t - u);  S_t = S' + k_t w^T;  o_t = scale S_t^T q_t

The backward is that recurrence's adjoint written out by hand, step by step
(the reverse of each line above), with ``dS`` the cotangent of ``S_t``::

    dS += scale q_t do_t^T;  dq_t = scale S_t do_t
    dk_t = dS w;  dw = dS^T k_t;  (S_t = S' + k w^T)
    dbeta_t = <dw, v_t - u>;  dv_t = beta_t dw;  du = -beta_t dw     (w = beta (v - u))
    dS' = dS + k_t du^T;  dk_t += S' du                            (u = S'^T k)
    dg_t = <dS', S'>  (= a <dS', S_{t-1}> with a = exp(g), da = <dS', S_{t-1}>);  dS = exp(g_t) dS'

and ``dh0`` is the ``dS`` left at the start. ``BUGS`` plants the mistakes kernel
libraries have shipped: a missing ``dbeta`` term, the initial state's gradient
dropped, ``dg`` returned in linear space (``da`` instead of ``a da``).
"""

import numpy as np

BUGS = ("none", "dbeta_missing_term", "dh0_dropped", "dg_linear_space")


def _defaults(q, k, v, g, gk, beta, initial_state):
    """The log decay as ``[B, T, H, K]`` (``g`` per step broadcast over the key channels, or ``gk``), ``S_0``, the scale."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    if gk is None:
        gk = np.zeros((B, T, H, K), dtype=k.dtype) if g is None else np.repeat(g[..., None], K, axis=-1)
    S0 = np.zeros((B, H, K, V), dtype=k.dtype) if initial_state is None else initial_state
    return gk, S0, K ** -0.5


def forward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None):
    """The gated delta rule (or GLA without ``beta``, or the delta rule without ``g``) in fla's layout."""
    gk, S, default_scale = _defaults(q, k, v, g, gk, beta, initial_state)
    scale = default_scale if scale is None else scale
    outs = []
    for t in range(k.shape[1]):
        S = np.exp(gk[:, t])[..., :, None] * S  # rows of S = M^T decay per key channel, (B, H, K, V)
        kt = k[:, t]  # (B, H, K)
        w = v[:, t]
        if beta is not None:
            u = np.einsum("bhkv,bhk->bhv", S, kt)  # (B, H, V)
            w = beta[:, t][..., None] * (v[:, t] - u)
        S = S + kt[..., :, None] * w[..., None, :]
        outs.append(scale * np.einsum("bhkv,bhk->bhv", S, q[:, t]))  # (B, H, V)
    return np.stack(outs, axis=1), (S if output_final_state else None)


def backward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None, *, do,
             dht=None, bug="none"):
    """The hand-written adjoint of :func:`forward` (module docstring); ``bug`` plants one of :data:`BUGS`."""
    gate = "g" if g is not None else ("gk" if gk is not None else None)
    g, S0, default_scale = _defaults(q, k, v, g, gk, beta, initial_state)
    scale = default_scale if scale is None else scale
    B, T, H, K = k.shape
    states = [S0]  # S_0 .. S_T
    decayed, us, ws = [], [], []
    S = S0
    for t in range(T):
        Sd = np.exp(g[:, t])[..., :, None] * S
        u = np.einsum("bhkv,bhk->bhv", Sd, k[:, t])
        w = v[:, t] if beta is None else beta[:, t][..., None] * (v[:, t] - u)
        S = Sd + k[:, t][..., :, None] * w[..., None, :]
        decayed.append(Sd), us.append(u), ws.append(w), states.append(S)
    dS = np.zeros_like(S0) if dht is None else dht.copy()
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dg = np.zeros_like(g)
    dbeta = None if beta is None else np.zeros_like(beta)
    for t in reversed(range(T)):
        kt = k[:, t]
        dS = dS + scale * q[:, t][..., :, None] * do[:, t][..., None, :]
        dq[:, t] = scale * np.einsum("bhkv,bhv->bhk", states[t + 1], do[:, t])
        dk[:, t] = np.einsum("bhkv,bhv->bhk", dS, ws[t])
        dw = np.einsum("bhkv,bhk->bhv", dS, kt)
        dSd = dS
        if beta is None:
            dv[:, t] = dw
        else:
            resid = v[:, t] if bug == "dbeta_missing_term" else v[:, t] - us[t]
            dbeta[:, t] = np.sum(dw * resid, axis=-1)
            dv[:, t] = beta[:, t][..., None] * dw
            du = -beta[:, t][..., None] * dw
            dSd = dS + kt[..., :, None] * du[..., None, :]
            dk[:, t] += np.einsum("bhkv,bhv->bhk", decayed[t], du)
        a = np.exp(g[:, t])  # (B, H, K)
        da = np.sum(dSd * states[t], axis=-1)  # <dS', S_{t-1}> per key channel, (B, H, K)
        dg[:, t] = da if bug == "dg_linear_space" else a * da  # g = log a: dL/dg = a dL/da
        dS = a[..., :, None] * dSd
    grads = {"dq": dq, "dk": dk, "dv": dv}
    if beta is not None:
        grads["dbeta"] = dbeta
    if gate == "g":  # one gate per step: the sum of its per-channel parts
        grads["dg"] = np.sum(dg, axis=-1)
    elif gate == "gk":
        grads["dgk"] = dg
    if initial_state is not None:
        grads["dh0"] = np.zeros_like(dS) if bug == "dh0_dropped" else dS
    return grads


def backward_dbeta_missing_term(*args, **kwargs):
    return backward(*args, **kwargs, bug="dbeta_missing_term")


def backward_dh0_dropped(*args, **kwargs):
    return backward(*args, **kwargs, bug="dh0_dropped")


def backward_dg_linear_space(*args, **kwargs):
    return backward(*args, **kwargs, bug="dg_linear_space")


def backward_returns_a_tuple(*args, **kwargs):
    return tuple(backward(*args, **kwargs).values())


# ---------------------------------------------------------------- the same forward in torch (autograd's route)


def torch_forward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None,
                  detach_h0=False):
    """:func:`forward` in torch ops, differentiable by torch autograd; ``detach_h0`` cuts the initial state's gradient."""
    import torch

    B, T, H, K = k.shape
    scale = K ** -0.5 if scale is None else scale
    S = (torch.zeros(B, H, K, v.shape[-1], dtype=k.dtype) if initial_state is None
         else (initial_state.detach() if detach_h0 else initial_state))
    outs = []
    for t in range(T):
        if g is not None:
            S = torch.exp(g[:, t])[..., None, None] * S
        if gk is not None:
            S = torch.exp(gk[:, t])[..., :, None] * S
        kt = k[:, t]
        w = v[:, t]
        if beta is not None:
            u = torch.einsum("bhkv,bhk->bhv", S, kt)
            w = beta[:, t][..., None] * (v[:, t] - u)
        S = S + kt[..., :, None] * w[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(outs, dim=1), S


def torch_forward_detached_h0(*args, **kwargs):
    return torch_forward(*args, **kwargs, detach_h0=True)


def numpy_forward_for_autograd(*args, **kwargs):
    """A NumPy kernel: its outputs do not require grad (the autograd route must say so)."""
    return forward(*[np.asarray(a.detach()) for a in args], **{n: (np.asarray(a.detach()) if hasattr(a, "detach") else a)
                                                               for n, a in kwargs.items()})
