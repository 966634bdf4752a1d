r"""The numbers behind the tour's figures (NumPy only: these are demonstrations, not part of the array-API core).

Each function computes one figure's data with refmem's public functions on a
small seeded problem and returns plain NumPy arrays in a dict;
:mod:`refmem.plots` draws them (and is the only module that imports
matplotlib). ``tests/test_figures.py`` checks every value against an
independent computation, without plotting.

- :func:`recall_vs_pairs`: how well linear attention, the delta rule and
  Longhorn's implicit step recall the pairs they stored (MATH.md 5).
- :func:`momentum_weights`: the weight momentum gives to past gradients and
  the 50% / 99% horizons (NL-17; the paper's 6 and 43 are 7 and 44).
- :func:`delta_step_stability`: the factor by which one explicit or implicit
  L2 step scales the residual, against :math:`\eta\|k\|^2`.
- :func:`cms_timeline`: which CMS block updates at which step (NLx-71).
- :func:`newton_schulz_convergence`: cubic and Muon's quintic Newton-Schulz
  iterates against the polar factor (NL-24).
- :func:`chunked_vs_recurrent_throughput`: tokens per second of the recurrent
  and chunked delta rule against sequence length (timed, so machine-dependent).
"""

from __future__ import annotations

import time

import numpy as np

from .level import Level, solve
from .objectives import L2
from .retentions import LocalL2


def _unit_rows(rng, n, d):
    X = rng.standard_normal((n, d))  # (n, d)
    return X / np.linalg.norm(X, axis=1, keepdims=True)  # (n, d) unit rows


def recall_vs_pairs(d: int = 16, max_pairs: int = 48, beta: float = 1.5, seed: int = 0) -> dict:
    r"""Recall error of the pairs a memory stored, against how many it stored.

    ``n`` pairs of random keys ``k_i`` (entries :math:`N(0, 1/d)`, so
    :math:`\|k\|^2 \approx 1` with a spread) and unit values ``v_i`` in
    dimension ``d`` are written once, in order, from ``M_0 = 0``; the error is
    the mean over the stored pairs of :math:`\|M_n k_i - v_i\|` (``1`` is what
    an empty memory scores). Linear attention adds :math:`v k^T` (no
    correction), the delta rule takes the explicit step with ``beta`` (it
    overshoots where :math:`\beta\|k\|^2 > 1` and diverges past 2), Longhorn
    the implicit step with ``beta`` (:math:`\beta/(1+\beta\|k\|^2)`
    effective: never overshoots).

    Returns
    -------
    dict
        ``pairs [n]`` (1 .. max_pairs) and ``linear_attention``, ``delta_rule``,
        ``longhorn`` ``[n]`` errors; ``d``, ``beta``.
    """
    from .memories.delta_rule import delta_rule_recurrent
    from .memories.linear_attention import linear_attention_recurrent
    from .memories.longhorn import longhorn_recurrent

    rng = np.random.default_rng(seed)
    K = rng.standard_normal((max_pairs, d)) / np.sqrt(d)  # (N, d) keys, ||k||^2 ~ 1
    V = _unit_rows(rng, max_pairs, d)  # (N, d) values
    pairs = np.arange(1, max_pairs + 1)  # (N,)
    out = {name: np.empty(max_pairs) for name in ("linear_attention", "delta_rule", "longhorn")}
    for i, n in enumerate(pairs):
        k, v = K[:n], V[:n]  # (n, d)
        b = np.full(n, beta)  # (n,)
        states = {
            "linear_attention": linear_attention_recurrent(k, k, v)[1],  # (d, d)
            "delta_rule": delta_rule_recurrent(k, k, v, b)[1],  # (d, d)
            "longhorn": longhorn_recurrent(k, k, v, b)[1],  # (d, d)
        }
        for name, M in states.items():
            out[name][i] = np.mean(np.linalg.norm(k @ M.T - v, axis=1))  # mean_i ||M k_i - v_i||
    return {"pairs": pairs, "d": d, "beta": beta, **out}


def momentum_weights(alpha: float = 0.9, n: int = 60) -> dict:
    r"""The normalised weight :math:`(1-\alpha)\alpha^j` of the gradient ``j`` steps back, and the horizons.

    Returns
    -------
    dict
        ``lag [n]`` (0 .. n-1), ``weight [n]``, ``mass [n]`` (the share the latest
        ``lag + 1`` gradients carry, :math:`1 - \alpha^{j+1}`), ``half`` and ``most``
        (the smallest counts carrying 50% and 99%, from
        :func:`refmem.optimizers.momentum_horizon.latest_gradients_for_mass`), and
        the paper's printed ``paper_half = 6``, ``paper_most = 43`` (NL-17).
    """
    from .optimizers.momentum_horizon import gradient_weights, latest_gradients_for_mass

    weight = np.asarray(gradient_weights(alpha, n))  # (n,)
    return {"lag": np.arange(n), "weight": weight, "mass": np.cumsum(weight), "alpha": alpha,
            "half": latest_gradients_for_mass(alpha, 0.5), "most": latest_gradients_for_mass(alpha, 0.99),
            "paper_half": 6, "paper_most": 43}


def delta_step_stability(eta_k2=None, d: int = 8, seed: int = 0) -> dict:
    r"""The factor one L2 step scales the residual :math:`M k - v` by, explicit and implicit, against :math:`\eta\|k\|^2`.

    Each point solves the level :math:`\tfrac12\|Mk - v\|^2 + \tfrac1{2\eta}\|M - M_t\|^2`
    with :func:`refmem.solve` (closed form), explicit and implicit, at a random
    ``M_t``, ``k``, ``v`` with ``eta`` chosen to give the abscissa, and returns
    :math:`\|M_{t+1}k - v\| / \|M_t k - v\|` (MATH.md 3: :math:`|1 - \eta\|k\|^2|`
    explicit, so divergence past 2; :math:`1/(1 + \eta\|k\|^2)` implicit).

    Returns
    -------
    dict
        ``eta_k2 [n]``, ``explicit [n]``, ``implicit [n]``.
    """
    x = np.geomspace(1e-2, 1e2, 81) if eta_k2 is None else np.asarray(eta_k2, dtype=float)  # (n,)
    rng = np.random.default_rng(seed)
    M_t = rng.standard_normal((d, d))  # (d_v, d_k)
    k, v = rng.standard_normal(d), rng.standard_normal(d)  # (d,), (d,)
    kk = float(k @ k)
    r0 = np.linalg.norm(M_t @ k - v)
    out = {"eta_k2": x, "explicit": np.empty(x.size), "implicit": np.empty(x.size)}
    for i, xi in enumerate(x):
        for step in ("explicit", "implicit"):
            M, _ = solve(Level(L2(), LocalL2(eta=float(xi) / kk), step=step), M_t, k, v)  # (d_v, d_k)
            out[step][i] = np.linalg.norm(M @ k - v) / r0
    return out


def cms_timeline(chunk_sizes=(1, 2, 4, 8), T: int = 32, d: int = 3, seed: int = 0) -> dict:
    r"""Which CMS block changes at which step, read from :func:`refmem.nested.cms.cms_recurrent`'s trace.

    A sequential CMS with one block per chunk size runs ``T`` tokens with
    targets (so every block has an error term); block ``l`` *updated at step t*
    when the parameters it used for step ``t + 1`` differ from those of step
    ``t`` (the last step compares with the returned parameters). NLx-71 says
    that is the steps ``t = 0 mod C_l``.

    Returns
    -------
    dict
        ``updates [K, T]`` (bool), ``steps [T]`` (1 .. T), ``chunk_sizes``.
    """
    from .nested.cms import cms_recurrent

    rng = np.random.default_rng(seed)
    h = 4
    params = tuple((0.3 * rng.standard_normal((d, h)), 0.3 * rng.standard_normal((h, d))) for _ in chunk_sizes)
    x = rng.standard_normal((T, d))  # (T, d)
    targets = rng.standard_normal((T, d))  # (T, d)
    _, final, trace = cms_recurrent(x, params, tuple(chunk_sizes), 0.1, targets=targets, return_trace=True)
    after = trace[1:] + [final]  # the parameters each step leaves behind
    updates = np.array([[not all(np.array_equal(a, b) for a, b in zip(trace[t][i], after[t][i]))
                         for t in range(T)] for i in range(len(chunk_sizes))])  # (K, T)
    return {"updates": updates, "steps": np.arange(1, T + 1), "chunk_sizes": tuple(chunk_sizes)}


def newton_schulz_convergence(n: int = 8, condition: float = 100.0, max_steps: int = 30, seed: int = 0) -> dict:
    r"""Distance :math:`\|X_s - UV^T\|_2` of cubic and quintic Newton-Schulz iterates from the polar factor.

    ``M [n, n]`` has random singular vectors and singular values spread
    geometrically from 1 to ``1/condition``. The cubic iteration
    (:func:`~refmem.optimizers.orthogonalization.newton_schulz_cubic`) converges to
    :math:`UV^T` (:func:`~refmem.optimizers.orthogonalization.polar_factor`);
    Muon's quintic (:func:`~refmem.optimizers.orthogonalization.newton_schulz_quintic`)
    has no fixed point at 1 and stops short of it (its 5-step default marked by Muon).

    Returns
    -------
    dict
        ``steps [s]`` (0 .. max_steps), ``cubic [s]``, ``quintic [s]`` (spectral
        distances), ``condition``.
    """
    from .optimizers.orthogonalization import newton_schulz_cubic, newton_schulz_quintic, polar_factor

    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))  # (n, n)
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))  # (n, n)
    S = np.geomspace(1.0, 1.0 / condition, n)  # (n,)
    M = (U * S) @ V.T  # (n, n)
    O = polar_factor(M)  # (n, n)
    steps = np.arange(max_steps + 1)  # (s,)
    cubic = np.array([np.linalg.norm(newton_schulz_cubic(M, steps=int(s)) - O, 2) for s in steps])  # (s,)
    quintic = np.array([np.linalg.norm(newton_schulz_quintic(M, steps=int(s)) - O, 2) for s in steps])  # (s,)
    return {"steps": steps, "cubic": cubic, "quintic": quintic, "condition": condition}


def chunked_vs_recurrent_throughput(seq_lens=(64, 128, 256, 512), heads: int = 4, d: int = 32,
                                    chunk: int = 64, repeat: int = 3, seed: int = 0) -> dict:
    r"""Tokens per second of the recurrent and chunked delta rule against sequence length (best of ``repeat``).

    A timing on this machine, at small sizes (a quick picture, not a benchmark:
    ``refmem bench`` measures with its ceilings). The two forms' outputs are
    compared on every input (``max_diff``).

    Returns
    -------
    dict
        ``seq_len [n]``, ``recurrent [n]``, ``chunked [n]`` (head-tokens / s),
        ``max_diff [n]`` (largest ``|o_recurrent - o_chunked|``), ``heads``, ``d``, ``chunk``.
    """
    from .chunked.delta_rule import delta_rule_chunked
    from .memories.delta_rule import delta_rule_recurrent

    rng = np.random.default_rng(seed)
    seq_lens = np.asarray(seq_lens)
    out = {"seq_len": seq_lens, "recurrent": np.empty(seq_lens.size), "chunked": np.empty(seq_lens.size),
           "max_diff": np.empty(seq_lens.size), "heads": heads, "d": d, "chunk": chunk}
    for i, T in enumerate(seq_lens):
        T = int(T)
        q = _unit_rows(rng, heads * T, d).reshape(heads, T, d)  # (H, T, d)
        k = _unit_rows(rng, heads * T, d).reshape(heads, T, d)  # (H, T, d)
        v = rng.standard_normal((heads, T, d))  # (H, T, d)
        beta = rng.uniform(0.1, 0.9, (heads, T))  # (H, T)
        results = {}
        for name, fn in (("recurrent", lambda: delta_rule_recurrent(q, k, v, beta)),
                         ("chunked", lambda: delta_rule_chunked(q, k, v, beta, chunk_size=min(chunk, T)))):
            fn()  # warm-up, untimed (first-call costs are not throughput)
            best = np.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                results[name] = fn()[0]  # (H, T, d)
                best = min(best, time.perf_counter() - t0)
            out[name][i] = heads * T / best
        out["max_diff"][i] = np.max(np.abs(results["recurrent"] - results["chunked"]))
    return out
