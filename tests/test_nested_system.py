"""Declaring nested systems: level order (Definition 2), rejected declarations, the diagram, the runner.

The momentum demonstration compares the declared two-level system with
momentum SGD written out here by hand (its own forward and backward of the
residual MLP, nothing from refmem), step for step.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import to_numpy
from refmem.nested import FROZEN, TOKEN, NestedLevel, NestedSystem, NestedSystemError, Signal, level_order, run
from refmem.nested.momentum_mlp import momentum_mlp_system, train_momentum_mlp

EPS = np.finfo(np.float64).eps


def _noop(value, ctx):
    return value


def lv(name, reads=(), period=1, **kw):
    return NestedLevel(name, None if period == FROZEN else _noop, reads=reads, period=period, **kw)


# --------------------------------------------------------------------------- hand-written momentum SGD


def _hand_mlp_grad(W1, W2, x, t):
    """Textbook backprop of 1/2||x + W1 tanh(W2 x) - t||^2."""
    z = W2 @ x
    a = np.tanh(z)
    r = x + W1 @ a - t
    gW1 = np.outer(r, a)
    gz = (W1.T @ r) * (1.0 - a * a)
    gW2 = np.outer(gz, x)
    return gW1, gW2


def _hand_momentum(W1, W2, X, T, eta, alpha, lag=False):
    m1, m2 = np.zeros_like(W1), np.zeros_like(W2)
    out = [(W1, W2)]
    for x, t in zip(X, T):
        g1, g2 = _hand_mlp_grad(W1, W2, x, t)
        n1, n2 = alpha * m1 + eta * g1, alpha * m2 + eta * g2
        if lag:  # the weights read the momentum before its update
            W1, W2 = W1 - m1, W2 - m2
        else:
            W1, W2 = W1 - n1, W2 - n2
        m1, m2 = n1, n2
        out.append((W1, W2))
    return out


def _problem(seed=0, d=3, h=4, N=12):
    g = np.random.default_rng(seed)
    W1 = g.standard_normal((d, h)) / np.sqrt(h)
    W2 = g.standard_normal((h, d)) / np.sqrt(d)
    X = g.standard_normal((N, d))
    T = g.standard_normal((N, d))
    return W1, W2, X, T


@pytest.mark.parametrize("method", ["closed", "iterative"])
def test_momentum_mlp_as_two_levels_equals_hand_written_momentum_sgd(xp, method):
    W1, W2, X, T = _problem()
    eta, alpha = 0.05, 0.9
    Ws, _ = train_momentum_mlp((xp.asarray(W1), xp.asarray(W2)), xp.asarray(X), xp.asarray(T), eta, alpha,
                               method=method)
    ref = _hand_momentum(W1, W2, X, T, eta, alpha)
    # The two routes round differently at every step; the iterative one stops at relative optimality
    # 1e-12 of each level (condition number 1). Over N = 12 steps of a contraction-free recursion the
    # difference stays within N * 64 eps * scale (closed) and N * 1e-11 * scale (iterative).
    scale = max(np.abs(W).max() for pair in ref for W in pair)
    tol = len(X) * (64 * EPS if method == "closed" else 1e-11) * scale
    for step, ((A1, A2), (B1, B2)) in enumerate(zip(Ws, ref)):
        err = max(np.abs(to_numpy(A1) - B1).max(), np.abs(to_numpy(A2) - B2).max())
        assert err <= tol, f"step {step}: {err:.2e} > {tol:.2e}"


def test_momentum_system_level_order_and_diagram():
    s = momentum_mlp_system()
    assert s.order == ("m", "W")
    assert s.level_of == {"m": 1, "W": 2}
    text = s.diagram()
    assert "level 1  m" in text and "level 2  W" in text
    assert "m --> W" in text
    assert "W (previous step)" in text  # the gradient reads the weights before the step


def test_wrong_order_gives_a_different_trajectory():
    W1, W2, X, T = _problem(seed=1)
    eta, alpha = 0.05, 0.9
    good, _ = train_momentum_mlp((W1, W2), X, T, eta, alpha)
    bad, _ = train_momentum_mlp((W1, W2), X, T, eta, alpha, order=("W", "m"))
    # the wrong order is exactly the lagged rule W_t = W_{t-1} - m_{t-1}, written by hand
    lagged = _hand_momentum(W1, W2, X, T, eta, alpha, lag=True)
    scale = max(np.abs(W).max() for pair in lagged for W in pair)
    for (A1, A2), (B1, B2) in zip(bad, lagged):
        assert max(np.abs(A1 - B1).max(), np.abs(A2 - B2).max()) <= len(X) * 64 * EPS * scale
    # ... and it differs from momentum SGD: after step 1 (m_0 = 0, so W_1 = W_0) by the whole first step
    diff = [max(np.abs(a[0] - b[0]).max(), np.abs(a[1] - b[1]).max()) for a, b in zip(good, bad)]
    first_step = max(np.abs(good[1][0] - good[0][0]).max(), np.abs(good[1][1] - good[0][1]).max())
    assert diff[0] == 0.0
    assert diff[1] == pytest.approx(first_step, rel=1e-12)
    assert min(diff[1:]) > 1e-3, diff


# --------------------------------------------------------------------------- Definition 2


def test_faster_frequency_comes_first_and_same_frequency_without_dependency_is_one_level():
    levels = (lv("slow", reads=("a",), period=4), lv("a", reads=("data",)), lv("b", reads=("data",)),
              lv("frozen", period=FROZEN), lv("attn", reads=("data",), period=TOKEN))
    order, level_of = level_order(levels)
    assert order == ("attn", "a", "b", "slow", "frozen")
    assert level_of == {"attn": 1, "a": 2, "b": 2, "slow": 3, "frozen": 4}


def test_same_frequency_needed_first_is_faster_also_through_a_signal():
    sig = Signal("s", lambda ctx: ctx["x"], reads=("x",))
    order, level_of = level_order((lv("y", reads=("s",)), lv("x", reads=("data",))), (sig,))
    assert order == ("x", "y") and level_of == {"x": 1, "y": 2}


def test_previous_value_reads_do_not_order():
    order, level_of = level_order((lv("y", reads=("x@prev",)), lv("x", reads=("y@prev",))))
    assert order == ("y", "x") and level_of == {"y": 1, "x": 1}


def test_cycle_is_rejected_with_the_cycle_named():
    with pytest.raises(NestedSystemError, match=r"cycle.*a -> b -> a|cycle.*b -> a -> b"):
        level_order((lv("a", reads=("b",)), lv("b", reads=("a",))))
    with pytest.raises(NestedSystemError, match="its own value"):
        level_order((lv("a", reads=("a",)),))
    s1 = Signal("s1", lambda c: 0, reads=("s2",))
    s2 = Signal("s2", lambda c: 0, reads=("s1",))
    with pytest.raises(NestedSystemError, match="signals read each other"):
        level_order((lv("a", reads=("s1",)),), (s1, s2))


def test_reading_a_slower_level_at_the_same_step_is_a_contradiction():
    with pytest.raises(NestedSystemError, match=r"contradiction: fast .* slow .*slow@prev"):
        level_order((lv("fast", reads=("slow",)), lv("slow", reads=("data",), period=3)))
    # its previous value is fine, and so is a frozen block's value
    level_order((lv("fast", reads=("slow@prev",)), lv("slow", reads=("data",), period=3)))
    level_order((lv("fast", reads=("frozen",)), lv("frozen", period=FROZEN)))


@pytest.mark.parametrize("levels, signals, match", [
    ((), (), "at least one level"),
    ((lv("a"), lv("a")), (), "declared twice"),
    ((lv("a", reads=("nope",)),), (), "reads 'nope'"),
    ((lv("a", reads=("nope@prev",)),), (), "not a declared level"),
    ((lv("a", period=0),), (), "period must be"),
    ((lv("a", period=2.5),), (), "period must be"),
    ((lv("a", period=True),), (), "period must be"),
    ((NestedLevel("a", _noop, period=FROZEN),), (), "frozen component"),
    ((NestedLevel("a", None),), (), "update must be callable"),
    ((lv("a", reads=("data",), period=TOKEN, accumulate=("data",)),), (), "accumulates over its chunk"),
    ((lv("a", reads=("data",), period=2, accumulate=("x",)),), (), "accumulate must be"),
    ((lv("data"),), (), "non-empty str"),
])
def test_malformed_declarations_are_rejected(levels, signals, match):
    with pytest.raises(NestedSystemError, match=match):
        NestedSystem("bad", levels, signals)


def test_reads_must_be_a_tuple():
    with pytest.raises(TypeError, match="reads must be a tuple"):
        level_order((NestedLevel("a", _noop, reads="data"),))
    with pytest.raises(TypeError, match="NestedLevel"):
        level_order(("a",))


# --------------------------------------------------------------------------- the runner


def test_a_level_of_period_C_updates_at_multiples_of_C_with_the_sum_of_C_terms():
    seen = []

    def slow(value, ctx):
        seen.append(ctx["data"])
        return value + 1

    system = NestedSystem("count", (NestedLevel("slow", slow, reads=("data",), period=3, accumulate=("data",)),
                                    NestedLevel("fast", lambda v, c: v + c["data"], reads=("data",))))
    data = [float(2 ** t) for t in range(8)]  # distinct powers of two: any sum tells its terms
    state, traj = run(system, {"slow": 0, "fast": 0.0}, data)
    assert seen == [1 + 2 + 4, 8 + 16 + 32]  # steps 1..3 and 4..6: C terms each, never t - C
    assert [s["slow"] for s in traj] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert state["fast"] == sum(data)


def test_run_rejects_bad_arguments():
    system = NestedSystem("one", (lv("a", reads=("data",)),))
    with pytest.raises(ValueError, match="no value for"):
        run(system, {}, [1.0])
    with pytest.raises(ValueError, match="not components"):
        run(system, {"a": 0, "b": 1}, [1.0])
    with pytest.raises(ValueError, match="permutation"):
        run(system, {"a": 0}, [1.0], order=("b",))
    with pytest.raises(TypeError, match="sequence"):
        run(system, {"a": 0}, 3)
    with pytest.raises(TypeError, match="NestedSystem"):
        run("system", {"a": 0}, [1.0])


def test_every_registered_nested_system_names_its_forms_in_its_spec():
    from pathlib import Path

    from refmem.nested.registry import NESTED_SYSTEMS

    specs = Path(__file__).resolve().parent.parent / "specs"
    for name, spec in NESTED_SYSTEMS.items():
        text = (specs / f"{spec.spec}.md").read_text(encoding="utf-8")
        for form in (spec.declare, spec.recurrent, spec.chunked):
            if form is not None:
                assert f"Implementation: {form.__module__}.{form.__qualname__}\n" in text, (name, form)


# --------------------------------------------------------------------------- property: the derived order honours Definition 2


@st.composite
def _declarations(draw):
    n = draw(st.integers(1, 7))
    periods = [draw(st.sampled_from([1, 2, 3, 4, TOKEN])) for _ in range(n)]
    freq = [np.inf if p == TOKEN else 1.0 / p for p in periods]
    levels = []
    for i in range(n):
        # same-step reads only of earlier, not slower components (acyclic, no contradiction); any @prev read
        same = [j for j in range(i) if freq[j] >= freq[i] and draw(st.booleans())]
        prev = [j for j in range(n) if draw(st.integers(0, 3)) == 0]
        reads = tuple(f"c{j}" for j in same) + tuple(f"c{j}@prev" for j in prev)
        levels.append(lv(f"c{i}", reads=reads, period=periods[i]))
    perm = draw(st.permutations(range(n)))
    return [levels[i] for i in perm]


@given(_declarations())
def test_level_order_honours_frequency_and_same_step_reads(levels):
    order, level_of = level_order(levels)
    pos = {n: i for i, n in enumerate(order)}
    byname = {x.name: x for x in levels}
    for x in levels:
        for r in x.reads:
            if not r.endswith("@prev"):
                assert pos[r] < pos[x.name] and level_of[r] < level_of[x.name]
    for a in levels:
        for b in levels:
            if a.frequency > b.frequency:
                assert pos[a.name] < pos[b.name] and level_of[a.name] < level_of[b.name]
    # same frequency, no same-step read path between them and equal depth: one level number
    assert sorted(set(level_of.values())) == list(range(1, max(level_of.values()) + 1))
    assert set(byname) == set(order)
