"""The continuum memory system (NLx-70..74): frequencies, chunk sums, variants, chunk-parallel evaluation.

References are written here by hand: the chain of residual MLPs, its
backward pass (textbook backpropagation), and the update rules as loops.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import to_numpy
from refmem.nested import run
from refmem.nested.cms import chunk_terms, cms_chunked, cms_recurrent, cms_system, printed_chunk_terms

EPS = np.finfo(np.float64).eps


def _blocks(seed, K, d=3, h=4, batch=()):
    g = np.random.default_rng(seed)
    return tuple((g.standard_normal(batch + (d, h)) / np.sqrt(h), g.standard_normal(batch + (h, d)) / np.sqrt(d))
                 for _ in range(K))


def _seq(seed, T, d=3, batch=()):
    g = np.random.default_rng(seed + 100)
    return g.standard_normal(batch + (T, d)), g.standard_normal(batch + (T, d))


def _hand_forward_backward(blocks, x, target, weights=None):
    """y and [(dW1, dW2)] of 1/2||y - target||^2 for one token (textbook backprop)."""
    if weights is not None:  # independent: y = sum w_l MLP_l(x)
        outs, cache = [], []
        for W1, W2 in blocks:
            a = np.tanh(W2 @ x)
            outs.append(x + W1 @ a)
            cache.append(a)
        y = sum(w * o for w, o in zip(weights, outs))
        r = y - target
        grads = []
        for w, (W1, W2), a in zip(weights, blocks, cache):
            gy = w * r
            grads.append((np.outer(gy, a), np.outer((W1.T @ gy) * (1 - a * a), x)))
        return y, grads
    hs, acts = [x], []
    for W1, W2 in blocks:
        a = np.tanh(W2 @ hs[-1])
        acts.append(a)
        hs.append(hs[-1] + W1 @ a)
    y = hs[-1]
    g = y - target
    grads = [None] * len(blocks)
    for i in range(len(blocks) - 1, -1, -1):
        W1, W2 = blocks[i]
        a, hin = acts[i], hs[i]
        gz = (W1.T @ g) * (1 - a * a)
        grads[i] = (np.outer(g, a), np.outer(gz, hin))
        g = g + W2.T @ gz
    return y, grads


def _hand_cms(blocks, X, Y, C, eta, weights=None, printed=False, reinit=None):
    """NLx-71 as a loop: accumulate each block's gradients over its chunk, apply at t = 0 mod C.

    ``reinit`` ("slower" / "initial"): at the start of step t = m C_s + 1, block s+1 restarts (NLx-72).
    """
    initial = [tuple(b) for b in blocks]
    blocks = [tuple(b) for b in blocks]
    sums = [None] * len(blocks)
    last = [None] * len(blocks)
    ys = []
    for t in range(1, len(X) + 1):
        if reinit:
            for s in range(len(blocks) - 1):
                if t > 1 and (t - 1) % C[s] == 0:
                    blocks[s + 1] = blocks[s] if reinit == "slower" else initial[s + 1]
        y, grads = _hand_forward_backward(blocks, X[t - 1], Y[t - 1], weights)
        ys.append(y)
        for i, c in enumerate(C):
            if c is None:
                continue
            sums[i] = grads[i] if sums[i] is None else (sums[i][0] + grads[i][0], sums[i][1] + grads[i][1])
            if t % c == 0:
                tot = sums[i]
                if printed and last[i] is not None:
                    tot = (tot[0] + last[i][0], tot[1] + last[i][1])
                blocks[i] = (blocks[i][0] - eta * tot[0], blocks[i][1] - eta * tot[1])
                sums[i], last[i] = None, grads[i]
    return np.array(ys), blocks


def _close(a, b, tol):
    err = np.abs(to_numpy(a) - np.asarray(b)).max()
    assert err <= tol, f"{err:.2e} > {tol:.2e}"
    return err


# Tolerance for two float64 routes of the same T-step recursion: each step rounds a few dozen
# operations (relative 64 eps of the values); the update map is Lipschitz with a constant close to 1
# for eta 0.1 and O(1) weights, so the difference grows at most linearly: T * 64 eps * scale.
def _tol(T, *arrays):
    return T * 64 * EPS * max(1.0, max(np.abs(np.asarray(a)).max() for a in arrays))


def test_all_chunk_sizes_one_is_per_step_gradient_descent_on_every_block(xp):
    blocks = _blocks(0, 3)
    X, Y = _seq(0, 10)
    y, params = cms_recurrent(xp.asarray(X), tuple((xp.asarray(a), xp.asarray(b)) for a, b in blocks), (1, 1, 1), 0.1,
                              targets=xp.asarray(Y))
    # plain GD on the whole chain: theta <- theta - eta grad L(y_t) for every block, every step
    ref_y, ref = [], [tuple(b) for b in blocks]
    for x, t in zip(X, Y):
        yy, grads = _hand_forward_backward(ref, x, t)
        ref_y.append(yy)
        ref = [(W1 - 0.1 * g1, W2 - 0.1 * g2) for (W1, W2), (g1, g2) in zip(ref, grads)]
    tol = _tol(len(X), ref_y, *[w for b in ref for w in b])
    _close(y, np.array(ref_y), tol)
    for (A1, A2), (B1, B2) in zip(params, ref):
        _close(A1, B1, tol)
        _close(A2, B2, tol)


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_block_updates_only_at_multiples_of_its_chunk_with_the_sum_of_C_terms(variant):
    blocks = _blocks(1, 3)
    X, Y = _seq(1, 13)
    C = (4, 2, 3)
    w = (0.5, 0.3, 0.2) if variant == "independent" else None
    y, params, trace = cms_recurrent(X, blocks, C, 0.1, targets=Y, variant=variant, weights=w, return_trace=True)
    ref_y, ref = _hand_cms(blocks, X, Y, C, 0.1, weights=w)
    tol = _tol(len(X), ref_y)
    _close(y, ref_y, tol)
    for (A1, A2), (B1, B2) in zip(params, ref):
        _close(A1, B1, tol)
        _close(A2, B2, tol)
    # block l's parameters change exactly after the steps t = 0 mod C_l
    for i, c in enumerate(C):
        changed = [t for t in range(1, len(X)) if not np.array_equal(trace[t][i][0], trace[t - 1][i][0])]
        assert changed == [t for t in range(1, len(X)) if t % c == 0], (i, changed)


def test_frozen_blocks_reproduce_the_static_network(xp):
    blocks = _blocks(2, 3)
    X, Y = _seq(2, 9)
    static = np.array([_hand_forward_backward(blocks, x, t)[0] for x, t in zip(X, Y)])
    xb = tuple((xp.asarray(a), xp.asarray(b)) for a, b in blocks)
    for kwargs in ({"targets": xp.asarray(Y)}, {}):
        chunk = (None, None, None) if kwargs else (1, 2, 3)  # no targets: no error term, nothing moves
        y, params = cms_recurrent(xp.asarray(X), xb, chunk, 0.1, **kwargs)
        _close(y, static, _tol(1, static))
        for (A1, A2), (B1, B2) in zip(params, blocks):
            assert np.array_equal(to_numpy(A1), B1) and np.array_equal(to_numpy(A2), B2)
    # one frozen block in an updating chain keeps its parameters
    _, params = cms_recurrent(xp.asarray(X), xb, (1, None, 2), 0.1, targets=xp.asarray(Y))
    assert np.array_equal(to_numpy(params[1][0]), blocks[1][0])


@pytest.mark.parametrize("reinit_from", ["slower", "initial"])
def test_nested_variant_reinitialises_the_faster_block_at_the_start_of_each_slower_context(reinit_from):
    blocks = _blocks(3, 3)
    X, Y = _seq(3, 17)
    C = (8, 4, 2)
    _, _, trace = cms_recurrent(X, blocks, C, 0.1, targets=Y, variant="nested", reinit_from=reinit_from,
                                return_trace=True)
    _, _, plain = cms_recurrent(X, blocks, C, 0.1, targets=Y, variant="sequential", return_trace=True)
    for s, (Cs, Cn) in enumerate(zip(C, C[1:])):
        resets = [t for t in range(2, len(X) + 1) if (t - 1) % Cs == 0]  # t = m C_s + 1: after ceil(C_s/C_{s+1}) updates
        assert resets == list(range(Cs + 1, len(X) + 1, Cs))
        for t in range(1, len(X) + 1):
            fast = trace[t - 1][s + 1]
            source = trace[t - 1][s] if reinit_from == "slower" else blocks[s + 1]
            is_reset = all(np.array_equal(a, b) for a, b in zip(fast, source))
            if t in resets:
                assert is_reset, (s, t)
    y, params = cms_recurrent(X, blocks, C, 0.1, targets=Y, variant="nested", reinit_from=reinit_from)
    ref_y, ref = _hand_cms(blocks, X, Y, C, 0.1, reinit=reinit_from)
    _close(y, ref_y, _tol(len(X), ref_y))
    for (A1, A2), (B1, B2) in zip(params, ref):
        _close(A1, B1, _tol(len(X), B1))
    # before the first reset the nested variant is the sequential chain
    first = C[1] + 1
    for t in range(first - 1):  # trace[t] is step t + 1
        for a, b in zip(trace[t], plain[t]):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    y_plain, _ = cms_recurrent(X, blocks, C, 0.1, targets=Y)
    assert np.abs(y - y_plain)[first - 1:].max() > 1e-6  # ... and the resets change the outputs after it


@pytest.mark.parametrize("variant, C", [("sequential", (6, 3)), ("nested", (6, 3)), ("independent", (6, 3)),
                                        ("sequential", (4, None, 8))])
def test_chunk_parallel_evaluation_equals_token_by_token(xp, variant, C):
    K = len(C)
    blocks = _blocks(4, K, batch=(2,))
    X, Y = _seq(4, 14, batch=(2,))  # T = 14: a partial last chunk
    w = tuple(np.linspace(0.2, 0.6, K)) if variant == "independent" else None
    xb = tuple((xp.asarray(a), xp.asarray(b)) for a, b in blocks)
    kw = dict(targets=xp.asarray(Y), variant=variant, weights=w)
    y1, p1 = cms_recurrent(xp.asarray(X), xb, C, 0.1, **kw)
    y2, p2 = cms_chunked(xp.asarray(X), xb, C, 0.1, **kw)
    tol = _tol(X.shape[-2], to_numpy(y1))  # only the order of the chunk sums differs
    _close(y2, to_numpy(y1), tol)
    for a, b in zip(p1, p2):
        _close(b[0], to_numpy(a[0]), tol)
        _close(b[1], to_numpy(a[1]), tol)


def test_closed_form_and_iterative_levels_agree():
    blocks = _blocks(5, 2)
    X, Y = _seq(5, 8)
    y1, p1 = cms_recurrent(X, blocks, (2, 1), 0.1, targets=Y)
    y2, p2 = cms_recurrent(X, blocks, (2, 1), 0.1, targets=Y, method="iterative")
    # each block level is solved by CG to relative optimality 1e-12 (condition number 1): 8 steps * 1e-11
    _close(y2, y1, 8 * 1e-11 * max(1.0, np.abs(y1).max()))


def test_erratum_printed_chunk_sum_has_C_plus_one_terms():
    assert chunk_terms(8, 4) == [5, 6, 7, 8]
    assert printed_chunk_terms(8, 4) == [4, 5, 6, 7, 8]  # token 4 already counted at the update of step 4
    T, C = 12, 4
    counted = [t for i in range(C, T + 1, C) for t in printed_chunk_terms(i, C)]
    assert len(counted) == T + T // C - 1  # every boundary token but the first counted twice
    assert sorted(t for i in range(C, T + 1, C) for t in chunk_terms(i, C)) == list(range(1, T + 1))
    # numerically: at C = 1 the print is theta - eta (g_{t-1} + g_t), not per-step gradient descent
    blocks = _blocks(6, 1)
    X, Y = _seq(6, 6)
    y_printed, p_printed = cms_recurrent(X, blocks, (1,), 0.1, targets=Y, chunk_sum="printed")
    ref_y, ref = _hand_cms(blocks, X, Y, (1,), 0.1, printed=True)
    _close(y_printed, ref_y, _tol(6, ref_y))
    y_gd, _ = cms_recurrent(X, blocks, (1,), 0.1, targets=Y)
    gd_y, _ = _hand_cms(blocks, X, Y, (1,), 0.1)
    _close(y_gd, gd_y, _tol(6, gd_y))
    assert np.abs(y_printed - y_gd).max() > 1e-3  # the printed sum is a different rule


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_cms_declared_as_a_nested_system_equals_the_scan(variant):
    blocks = _blocks(7, 3)
    X, Y = _seq(7, 11)
    C = (3, None, 2)
    w = (0.5, 0.3, 0.2) if variant == "independent" else None
    system = cms_system(blocks, C, 0.1, variant=variant, weights=w)
    assert system.level_of == {"block3": 1, "block1": 2, "block2": 3}  # every 2, every 3, frozen
    state, _ = run(system, {f"block{i + 1}": b for i, b in enumerate(blocks)}, list(zip(X, Y)))
    _, params = cms_recurrent(X, blocks, C, 0.1, targets=Y, variant=variant, weights=w)
    for i, b in enumerate(params):
        _close(state[f"block{i + 1}"][0], b[0], _tol(len(X), b[0]))
    with pytest.raises(ValueError, match="nested variant"):
        cms_system(blocks, C, 0.1, variant="nested")


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk_sizes=(1, 2)), "one chunk size"),
    (dict(chunk_sizes=(0, 1, 1)), "ints >= 1"),
    (dict(eta=-1.0), "eta must be"),
    (dict(eta=(0.1, 0.1)), "eta must be"),
    (dict(variant="parallel"), "variant must be"),
    (dict(variant="independent"), "needs weights"),
    (dict(weights=(1, 1, 1)), "independent variant only"),
    (dict(variant="nested", chunk_sizes=(2, 4, 1)), "slowest first"),
    (dict(variant="nested", chunk_sizes=(4, 3, 1)), "slowest first"),
    (dict(reinit_from="faster"), "reinit_from"),
    (dict(chunk_sum="all"), "chunk_sum"),
    (dict(method="exact"), "method must be"),
])
def test_bad_arguments_are_named(kwargs, match):
    blocks = _blocks(8, 3)
    X, Y = _seq(8, 4)
    args = dict(chunk_sizes=(1, 1, 1), eta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cms_recurrent(X, blocks, args.pop("chunk_sizes"), args.pop("eta"), targets=Y, **args)


def test_bad_shapes_are_named():
    blocks = _blocks(9, 2)
    X, Y = _seq(9, 4)
    with pytest.raises(ValueError, match="targets must have the shape"):
        cms_recurrent(X, blocks, (1, 1), 0.1, targets=Y[:3])
    with pytest.raises(ValueError, match="T >= 1"):
        cms_recurrent(X[:0], blocks, (1, 1), 0.1)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        cms_recurrent(X, (blocks[0], (blocks[1][0][:2], blocks[1][1])), (1, 1), 0.1)
    with pytest.raises(TypeError, match="params must be"):
        cms_recurrent(X, (), (), 0.1)


# --------------------------------------------------------------------------- property: chunk-parallel == token by token


@settings(max_examples=15)
@given(st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=1, max_size=3), st.integers(1, 20),
       st.sampled_from(["sequential", "independent"]))
def test_property_chunk_parallel_equals_token_by_token(chunk_sizes, T, variant):
    K = len(chunk_sizes)
    blocks = _blocks(11, K)
    X, Y = _seq(11, T)
    w = tuple(1.0 / (i + 2) for i in range(K)) if variant == "independent" else None
    y1, p1 = cms_recurrent(X, blocks, tuple(chunk_sizes), 0.1, targets=Y, variant=variant, weights=w)
    y2, p2 = cms_chunked(X, blocks, tuple(chunk_sizes), 0.1, targets=Y, variant=variant, weights=w)
    tol = _tol(T, y1)
    _close(y2, y1, tol)
    for a, b in zip(p1, p2):
        _close(b[0], a[0], tol)
        _close(b[1], a[1], tol)


def test_flat_vector_convention_equals_the_structured_call():
    from refmem.nested.vector_cases import cms_make_inputs, cms_vectors

    inp = cms_make_inputs(4, (2,), 13, 4, 4, np)
    x = inp.pop("x")
    y, flat = cms_vectors(x, **inp)
    c = inp["cms_params"]
    want, params = cms_recurrent(x, ((c[0], c[1]), (c[2], c[3]), (c[4], c[5])), (8, 4, 1), inp["cms_eta"],
                                 targets=inp["targets"])
    assert np.array_equal(y, want) and all(np.array_equal(a, b) for a, b in zip(flat, [w for p in params for w in p]))


def test_refmem_conform_checks_a_cms_implementation():
    from refmem.conform import check

    def numpy_cms_flat(x, *, targets, cms_params, cms_chunk_1, cms_chunk_2, cms_chunk_3, cms_eta):
        blocks = ((cms_params[0], cms_params[1]), (cms_params[2], cms_params[3]), (cms_params[4], cms_params[5]))
        C = (cms_chunk_1, cms_chunk_2, cms_chunk_3)
        y = np.empty_like(x)
        for idx in np.ndindex(*x.shape[:-2]):  # one sequence at a time, token by token
            y[idx], _ = _hand_cms(blocks, x[idx], targets[idx], C, cms_eta)
        return y

    result = check(numpy_cms_flat, spec="cms", cases=["T1", "no_batch", "T63_heads3"], outputs=["o"])
    assert result.passed and len(result.rows) == 3
