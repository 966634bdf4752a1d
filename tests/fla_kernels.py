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


def _defaults(q, k, v, g, gk, beta, initial_state, linear_gates=False):
    """The decay as ``[B, T, H, K]`` (``g`` per step broadcast over the key channels, or ``gk``; its log unless
    ``linear_gates``), ``S_0``, the scale."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    if gk is None:
        none = np.ones if linear_gates else np.zeros  # no gate: keep everything
        gk = none((B, T, H, K), dtype=k.dtype) if g is None else np.repeat(g[..., None], K, axis=-1)
    S0 = np.zeros((B, H, K, V), dtype=k.dtype) if initial_state is None else initial_state
    return gk, S0, K ** -0.5


def forward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None, *,
            linear_gates=False):
    """The gated delta rule (or GLA without ``beta``, or the delta rule without ``g``) in fla's layout.

    ``linear_gates``: ``g`` (``gk``) holds the kept fraction ``a`` itself, not its log.
    """
    gk, S, default_scale = _defaults(q, k, v, g, gk, beta, initial_state, linear_gates)
    scale = default_scale if scale is None else scale
    decay = gk if linear_gates else np.exp(gk)  # (B, T, H, K)
    outs = []
    for t in range(k.shape[1]):
        S = decay[:, t][..., :, None] * S  # rows of S = M^T decay per key channel, (B, H, K, V)
        kt = k[:, t]  # (B, H, K)
        w = v[:, t]
        if beta is not None:
            u = np.einsum("bhkv,bhk->bhv", S, kt)  # (B, H, V)
            w = beta[:, t][..., None] * (v[:, t] - u)
        S = S + kt[..., :, None] * w[..., None, :]
        outs.append(scale * np.einsum("bhkv,bhk->bhv", S, q[:, t]))  # (B, H, V)
    return np.stack(outs, axis=1), (S if output_final_state else None)


def backward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None, *, do,
             dht=None, linear_gates=False, bug="none"):
    """The hand-written adjoint of :func:`forward` (module docstring); ``bug`` plants one of :data:`BUGS`.

    ``linear_gates``: ``g`` holds ``a`` itself, so ``dg = da`` (the chain rule's ``a da`` is for ``g = log a``).
    """
    gate = "g" if g is not None else ("gk" if gk is not None else None)
    g, S0, default_scale = _defaults(q, k, v, g, gk, beta, initial_state, linear_gates)
    scale = default_scale if scale is None else scale
    decay = g if linear_gates else np.exp(g)  # (B, T, H, K)
    B, T, H, K = k.shape
    states = [S0]  # S_0 .. S_T
    decayed, us, ws = [], [], []
    S = S0
    for t in range(T):
        Sd = decay[:, t][..., :, None] * S
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
        dq[:, t] = (1.0 if bug == "dq_unscaled" else scale) * np.einsum("bhkv,bhv->bhk", states[t + 1], do[:, t])
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
        a = decay[:, t]  # (B, H, K)
        da = np.sum(dSd * states[t], axis=-1)  # <dS', S_{t-1}> per key channel, (B, H, K)
        # g = log a: dL/dg = a dL/da; g = a (linear gates): dL/dg = dL/da
        dg[:, t] = da if (bug == "dg_linear_space") != linear_gates else a * da
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


# ---------------------------------------------------------------- the layout options (specs/kernel_layouts.md)
#
# The same kernel with every option of fla's kernels, forward and backward, each option's gradient beside it:
#   use_qk_l2norm_in_kernel  x_n = x / n, n = sqrt(|x|^2 + 1e-6) (fla's l2norm):  dx = dx_n / n - x <x, dx_n> / n^3
#   grouped value heads      q, k head j broadcast to value heads G j .. G j + G - 1:  dq_j = the group's dq summed
#   cu_seqlens               B = 1, sequences packed along T, each from its own h0[i]:  dh0[i] per sequence
#   state_v_first            h0, ht, dht, dh0 as [V, K]: transposed on the way in and out
#   linear_gates             g is the kept fraction a itself:  dg = da (in log space dg = a da)
#   scale                    o = S^T (scale q):  dq = scale S do, and dS gets scale q do^T
# ``OPTION_BUGS`` plants one mistake each, in one gradient.

OPTION_BUGS = ("none", "dh0_not_transposed", "dg_other_space", "dq_first_head_of_group", "dh0_first_sequence_only",
               "dq_without_l2norm_vjp", "dq_unscaled")


def _normalise(x):
    n = np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)  # (B, T, H, 1): fla's epsilon under the root
    return x / n, n


def _normalise_vjp(x, n, dxn):
    """Gradient in x of x / n(x), n = sqrt(|x|^2 + eps): (I / n - x x^T / n^3) dxn (a symmetric Jacobian)."""
    return dxn / n - x * np.sum(x * dxn, axis=-1, keepdims=True) / n ** 3


def _runs(B, cu_seqlens):
    """``(batch rows, time steps, state rows)`` of every independent run: the whole batch, or one per packed sequence."""
    if cu_seqlens is None:
        return [(slice(None), slice(None), slice(None))]
    cu = [int(c) for c in np.asarray(cu_seqlens)]
    return [(slice(0, 1), slice(s, e), slice(i, i + 1)) for i, (s, e) in enumerate(zip(cu[:-1], cu[1:]))]


def _expand(q, k, v, initial_state, cu_seqlens, use_qk_l2norm_in_kernel, state_v_first):
    """q, k normalised (if asked) and broadcast to the value heads; S0 as [N, HV, K, V] (or None)."""
    H, HV = k.shape[2], v.shape[2]
    G = HV // H
    qn, nq = _normalise(q) if use_qk_l2norm_in_kernel else (q, None)
    kn, nk = _normalise(k) if use_qk_l2norm_in_kernel else (k, None)
    qe, ke = np.repeat(qn, G, axis=2), np.repeat(kn, G, axis=2)  # (B, T, HV, K): value head j reads head j // G
    S0 = None if initial_state is None else (np.swapaxes(initial_state, -1, -2) if state_v_first else initial_state)
    return qe, ke, S0, (nq, nk, G)


def _part(x, b, t):
    return None if x is None else x[b, t]


def forward_options(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None,
                    cu_seqlens=None, use_qk_l2norm_in_kernel=False, *, state_v_first=False, linear_gates=False):
    """:func:`forward` with every layout option (the block comment above)."""
    qe, ke, S0, _ = _expand(q, k, v, initial_state, cu_seqlens, use_qk_l2norm_in_kernel, state_v_first)
    o = np.zeros(v.shape, dtype=np.result_type(v, qe))
    finals = []
    for b, t, rows in _runs(k.shape[0], cu_seqlens):
        o[b, t], S_T = forward(qe[b, t], ke[b, t], v[b, t], g=_part(g, b, t), gk=_part(gk, b, t),
                               beta=_part(beta, b, t), initial_state=None if S0 is None else S0[rows], scale=scale,
                               linear_gates=linear_gates)
        finals.append(S_T)
    S_T = np.concatenate(finals, axis=0)  # (N, HV, K, V)
    return o, ((np.swapaxes(S_T, -1, -2) if state_v_first else S_T) if output_final_state else None)


def backward_options(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None,
                     cu_seqlens=None, use_qk_l2norm_in_kernel=False, *, do, dht=None, state_v_first=False,
                     linear_gates=False, bug="none"):
    """The gradients of :func:`forward_options` (block comment above); ``bug``: one of :data:`OPTION_BUGS`."""
    qe, ke, S0, (nq, nk, G) = _expand(q, k, v, initial_state, cu_seqlens, use_qk_l2norm_in_kernel, state_v_first)
    B, T, H, K = k.shape
    if dht is not None and state_v_first:
        dht = np.swapaxes(dht, -1, -2)  # (N, HV, K, V)
    core_bug = {"dg_other_space": "dg_linear_space", "dq_unscaled": "dq_unscaled"}.get(bug, "none")
    parts = []
    for b, t, rows in _runs(B, cu_seqlens):
        parts.append(((b, t, rows), backward(
            qe[b, t], ke[b, t], v[b, t], g=_part(g, b, t), gk=_part(gk, b, t), beta=_part(beta, b, t),
            initial_state=None if S0 is None else S0[rows], scale=scale, do=do[b, t],
            dht=None if dht is None else dht[rows], linear_gates=linear_gates, bug=core_bug)))
    out = {}
    for name, like in (("dq", qe), ("dk", ke), ("dv", v), ("dbeta", beta), ("dg", g), ("dgk", gk)):
        if like is None or name not in parts[0][1]:
            continue
        full = np.zeros(like.shape, dtype=parts[0][1][name].dtype)
        for (b, t, _), grads in parts:
            full[b, t] = grads[name]
        out[name] = full
    # grouped value heads: the broadcast's VJP sums over the G value heads of a group
    if bug == "dq_first_head_of_group":
        out["dq"] = out["dq"][:, :, ::G] * G
    else:
        out["dq"] = out["dq"].reshape(B, T, H, G, K).sum(axis=3)  # (B, T, H, K)
    out["dk"] = out["dk"].reshape(B, T, H, G, K).sum(axis=3)
    if use_qk_l2norm_in_kernel:
        if bug != "dq_without_l2norm_vjp":
            out["dq"] = _normalise_vjp(q, nq, out["dq"])
        out["dk"] = _normalise_vjp(k, nk, out["dk"])
    if initial_state is not None:
        dh0 = np.concatenate([grads["dh0"] for _, grads in parts], axis=0)  # (N, HV, K, V)
        if bug == "dh0_first_sequence_only":
            dh0[1:] = 0
        out["dh0"] = np.swapaxes(dh0, -1, -2) if state_v_first and bug != "dh0_not_transposed" else dh0
    return out


# ---------------------------------------------------------------- the same forward in torch (autograd's route)


def torch_forward(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None,
                  detach_h0=False, *, decay=None, per_channel=False):
    """:func:`forward` in torch ops, differentiable by torch autograd; ``detach_h0`` cuts the initial state's gradient.

    ``decay``: the kept fraction itself (``[B, T, H]``, or ``[B, T, H, K]`` when ``per_channel``), instead of ``g``/``gk``.
    """
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
        if decay is not None:
            S = (decay[:, t][..., :, None] if per_channel else decay[:, t][..., None, None]) * S
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


def torch_forward_options(q, k, v, g=None, gk=None, beta=None, initial_state=None, output_final_state=True, scale=None,
                          cu_seqlens=None, use_qk_l2norm_in_kernel=False, *, state_v_first=False, linear_gates=False):
    """:func:`forward_options` in torch ops, for torch autograd (``cu_seqlens`` an integer tensor)."""
    import torch

    H, HV = k.shape[2], v.shape[2]
    if use_qk_l2norm_in_kernel:
        q = q / torch.sqrt(torch.sum(q * q, dim=-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt(torch.sum(k * k, dim=-1, keepdim=True) + 1e-6)
    q, k = torch.repeat_interleave(q, HV // H, dim=2), torch.repeat_interleave(k, HV // H, dim=2)  # (B, T, HV, K)
    S0 = initial_state
    if S0 is not None and state_v_first:
        S0 = S0.transpose(-1, -2)
    cu = None if cu_seqlens is None else [int(c) for c in cu_seqlens.tolist()]
    runs = [(slice(None), slice(None), slice(None))] if cu is None else [
        (slice(0, 1), slice(s, e), slice(i, i + 1)) for i, (s, e) in enumerate(zip(cu[:-1], cu[1:]))]
    outs, finals = [], []
    for b, t, rows in runs:
        decay = None
        gate = g if g is not None else gk
        if gate is not None:
            decay = gate[b, t] if linear_gates else torch.exp(gate[b, t])
        o, S = torch_forward(q[b, t], k[b, t], v[b, t], beta=None if beta is None else beta[b, t],
                             initial_state=None if S0 is None else S0[rows], scale=scale,
                             decay=decay, per_channel=gk is not None)
        outs.append(o)
        finals.append(S)
    o = torch.cat(outs, dim=1)
    S_T = torch.cat(finals, dim=0)
    return o, ((S_T.transpose(-1, -2) if state_v_first else S_T) if output_final_state else None)
