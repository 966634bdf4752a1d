r"""``refmem tour``: a guided walk through Nested Learning, in the paper's order.

Each stop prints the equation in plain text, the refmem call that implements
it, and runs the registered checks of :mod:`refmem.checks` that compute the
same level both ways (closed form against an iterative solver that knows
nothing of the closed form, or recurrent against chunked) on a small seeded
problem, with the agreement found and the tolerance it must stay under. The
tour computes nothing of its own: every number comes from a check that
``refmem verify`` also runs, so the two cannot drift apart.

The stops, in the order of the paper (NL = Nested Learning, NeurIPS 2025;
NLx = arXiv 2512.24695): a one-layer MLP trained by gradient descent is a
memory of local surprise (NL-5); momentum is a two-level memory (NL-8 to
NL-11); sequence memories (linear attention, the delta rule, Longhorn's
implicit step, Titans); retention (forget gates, weight decay, KL on the
simplex, the lq retention); optimisers as memories (Adam, Muon); nested levels,
CMS and HOPE.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Stop:
    """One stop of the tour.

    Attributes
    ----------
    name : str
        The name ``--stop`` takes.
    title : str
        One line: the idea of the stop.
    equation : str
        The equation, in plain text (one or more lines).
    call : str
        The refmem call that implements it.
    checks : tuple of (str, str)
        ``(spec, text)`` pairs: the registered checks of ``spec`` whose name
        contains ``text`` (each pair must select at least one check).
    """

    name: str
    title: str
    equation: str
    call: str
    checks: tuple


STOPS: tuple[Stop, ...] = (
    Stop("mlp", "Training a one-layer MLP by gradient descent is a memory of local surprise (NL-5)",
         "W_{t+1} = argmin_W <W x_t, dL/dy_t> + 1/(2 eta) ||W - W_t||^2\n"
         "        = W_t - eta (dL/dy_t) x_t^T      (the key is the input, the value the local surprise)",
         "refmem.optimizers.local_surprise; solve(Level(Dot(), LocalL2(eta), step='explicit'), W, x, -dL/dy)",
         (("mlp_local_surprise", "NL-5 closed == iterative"),
          ("mlp_local_surprise", "training run closed == iterative"))),
    Stop("momentum", "Momentum is a two-level memory: m compresses the past gradients, W reads m (NL-8 to NL-11)",
         "m_{t+1} = argmin_m -<m, g_t> + 1/(2 eta) ||m - alpha m_t||^2 = alpha m_t + eta g_t\n"
         "W_{t+1} = W_t - m_{t+1}",
         "refmem.optimizers.make('momentum'); Level(Inner(), ForgetGate(eta, alpha), step='explicit')",
         (("momentum", "m level (Inner + forget gate) closed == iterative"),
          ("momentum", "two-level memory == heavy ball, fixed gradients"),
          ("momentum", "summed counts (50%, 99%)"))),
    Stop("linear_attention", "Linear attention is a memory that only adds: the dot-product objective, no retention",
         "M_t = argmin_M -<M k_t, v_t> + 1/2 ||M - M_{t-1}||^2 = M_{t-1} + v_t k_t^T,   o_t = M_t q_t",
         "refmem.memories.linear_attention.linear_attention_recurrent(q, k, v)",
         (("dot", "local_l2/explicit: closed =="),
          ("linear_attention", "chunked == recurrent"))),
    Stop("delta_rule", "The delta rule corrects before it writes: one explicit gradient step on the L2 objective",
         "M_t = M_{t-1} - beta_t (M_{t-1} k_t - v_t) k_t^T",
         "refmem.memories.delta_rule.delta_rule_recurrent(q, k, v, beta)",
         (("l2", "local_l2/explicit: closed =="),
          ("delta_rule", "chunked == recurrent"),
          ("delta_rule", "explicit step == implicit step"))),
    Stop("longhorn", "Longhorn takes the implicit step: the exact argmin, stable for every step size",
         "M_t = argmin_M 1/2 ||M k_t - v_t||^2 + 1/(2 beta_t) ||M - M_{t-1}||^2\n"
         "    = M_{t-1} - beta_t/(1 + beta_t ||k_t||^2) (M_{t-1} k_t - v_t) k_t^T   (Sherman-Morrison)",
         "refmem.memories.longhorn.longhorn_recurrent(q, k, v, beta)",
         (("l2", "local_l2/implicit: closed == cg"),
          ("longhorn", "step closed == iterative"),
          ("longhorn", "bounded where the explicit delta rule diverges"))),
    Stop("titans", "Titans: a momentum level over the surprise of a memory level, with forgetting",
         "S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; k_t, v_t),   M_t = (1 - alpha_t) M_{t-1} + S_t",
         "refmem.memories.titans.titans_recurrent(q, k, v, alpha, eta, theta)",
         (("titans", "both levels closed == iterative"),
          ("titans", "(no momentum, no forgetting) == delta rule"))),
    Stop("retention", "Retention is the second term of every level: what the memory keeps of its past",
         "forget gate   Ret = 1/(2 eta) ||M - alpha M_t||^2\n"
         "weight decay  Ret = 1/(2 eta) ||M - M_t||^2 + 1/(2 b) ||M||^2\n"
         "KL (simplex)  Ret = (1/eta) KL(M || M_t) + (1/a) KL(M || U), rows positive, summing to c\n"
         "lq (Moneta)   M_{t+1} = grad psi*(alpha grad psi(M_t) - eta g),  psi(M) = 1/2 ||M||_q^2",
         "refmem.retentions.ForgetGate / WeightDecay / KLSimplex / LqMoneta; solve(Level(objective, retention, step), ...)",
         (("dot", "forget_gate/explicit: closed == cg"),
          ("gated_linear_attention", "step closed == iterative"),
          ("weight_decay", "L2()/implicit: closed (prox"),
          ("kl_simplex", "== mirror descent"),
          ("lq_moneta", "q=3 explicit"))),
    Stop("adam", "Adam's moments are memories: each the argmin of a discounted least-squares problem",
         "m_t = argmin_m sum_i beta1^(t-i) ||m - g_i||^2 (bias-corrected),  v_t likewise on g_i^2",
         "refmem.optimizers.make('adam')",
         (("adam", "closed == iterative"),
          ("adam", "bias-corrected moment == argmin"))),
    Stop("muon", "Muon writes the momentum's nearest orthogonal matrix: the polar factor, by Newton-Schulz",
         "O_t = argmin_{O^T O = I} ||O - m_t||_F = U V^T  (m_t = U S V^T);   X <- 3/2 X - 1/2 X X^T X",
         "refmem.optimizers.make('muon'); refmem.optimizers.orthogonalization.newton_schulz_polar(M)",
         (("muon", "polar factor (SVD) == cubic Newton-Schulz"),
          ("muon", "closed (SVD) == iterative (cubic Newton-Schulz)"))),
    Stop("nested", "Nested levels: a momentum MLP is two levels; CMS is a chain of MLPs, each updating every C_i steps; "
         "HOPE stacks self-modifying Titans on a CMS",
         "theta^(i)_{t+1} = theta^(i)_t - eta^(i) sum_{s=t-C_i+1..t} grad l(theta^(i)_s; x_s)   if t = 0 mod C_i\n"
         "                = theta^(i)_t                                                      otherwise",
         "refmem.nested.cms.cms_recurrent / cms_chunked; refmem.nested.hope.hope_recurrent; refmem.nested.system.NestedSystem",
         (("nested_system", "momentum MLP as two levels"),
          ("cms", "closed == iterative block levels"),
          ("cms", "chunk-parallel == token by token"),
          ("hope", "chunked == recurrent"))),
)


def stop_names() -> list[str]:
    """The names ``--stop`` takes, in the tour's order."""
    return [s.name for s in STOPS]


def get_stop(name: str) -> Stop:
    """The stop called ``name``; ``ValueError`` listing the known names otherwise."""
    for s in STOPS:
        if s.name == name:
            return s
    raise ValueError(f"stop {name!r}: no such stop; known: {', '.join(stop_names())}")


def stop_checks(stop: Stop) -> list:
    """The registered checks a stop runs, in registry order; ``LookupError`` when a pair selects none."""
    from .checks import CHECKS

    found = []
    for spec, text in stop.checks:
        hits = [c for c in CHECKS if c.spec == spec and text in c.name]
        if not hits:
            raise LookupError(f"stop {stop.name!r}: no registered check of spec {spec!r} contains {text!r}")
        found += [c for c in hits if c not in found]
    return found


def run_stop(stop: Stop, backend_name: str = "numpy") -> list[dict]:
    """Run the checks of ``stop`` on ``backend_name``; one row per check.

    Returns
    -------
    list of dict
        ``spec``, ``check``, ``max_error``, ``tolerance``, ``ok``, ``seconds``
        and ``error`` (the exception text when the check raised, else "").
    """
    from . import backends

    rows = []
    with backends.backend(backend_name) as xp:
        for c in stop_checks(stop):
            t0 = time.perf_counter()
            err, tol, msg = math.nan, c.tolerance, ""
            try:
                out = c.fn(xp)
                err, tol = (float(out[0]), float(out[1])) if isinstance(out, tuple) else (float(out), tol)
            except Exception as exc:  # a failing check is a failing row, as in `refmem verify`
                msg = f"{type(exc).__name__}: {exc}"
            ok = tol is not None and math.isfinite(err) and err <= tol and not msg
            rows.append({"spec": c.spec, "check": c.name, "max_error": err, "tolerance": tol, "ok": ok,
                         "seconds": time.perf_counter() - t0, "error": msg})
    return rows


def format_stop(number: int, stop: Stop, rows: list[dict]) -> str:
    """The text one stop prints: title, equation, call, and one line per check."""
    out = [f"[{number}/{len(STOPS)}] {stop.name}: {stop.title}", "", "  equation:"]
    out += [f"    {line}" for line in stop.equation.splitlines()]
    out += ["", f"  refmem:  {stop.call}", "", "  both ways, on a small seeded problem:"]
    for r in rows:
        tol = "-" if r["tolerance"] is None else f"{r['tolerance']:.1e}"
        mark = "agree" if r["ok"] else "DISAGREE"
        out.append(f"    {mark:<8}  error {r['max_error']:.2e} <= {tol}  {r['spec']}: {r['check']}")
        if r["error"]:
            out.append(f"      ! {r['error']}")
    return "\n".join(out)


def main(args) -> int:
    """``refmem tour``: print the list, one stop or every stop; exit 1 when a check disagrees."""
    stops = STOPS if args.stop is None else (get_stop(args.stop),)
    if args.list:
        w = max(len(s.name) for s in STOPS)
        for s in STOPS:
            print(f"{s.name:<{w}}  {s.title}")
        return 0
    failed = 0
    t0 = time.perf_counter()
    for s in stops:
        rows = run_stop(s, args.backend)
        failed += sum(not r["ok"] for r in rows)
        print(format_stop(STOPS.index(s) + 1, s, rows), end="\n\n", flush=True)
    print(f"{len(stops)} stop(s), {failed} disagreement(s), {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
