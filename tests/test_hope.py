"""The HOPE block (NLx-94..97): self-modifying Titans followed by a CMS chain.

References are written out here: the per-step recurrence (a NumPy loop over
both parts, its own MLPs and backward passes) and the static network.
"""

import numpy as np
import pytest

import refmem
from conftest import to_numpy
from refmem.nested.hope import hope_chunked, hope_recurrent
from refmem.nested.self_modifying_titans import random_memories

from test_cms import _hand_forward_backward
from test_self_modifying_titans import _hand_smt, _mlp, _unit

EPS = np.finfo(np.float64).eps


def _setup(seed=0, d=4, T=12, batch=(2,), K=2):
    g = np.random.default_rng(seed)
    x = g.standard_normal(batch + (T, d))
    targets = g.standard_normal(batch + (T, d))
    W_q = np.eye(d) + 0.3 * g.standard_normal((d, d))
    blocks = tuple((g.standard_normal((d, d)) / 2, g.standard_normal((d, d)) / 2) for _ in range(K))
    return x, targets, W_q, random_memories(seed, d, np), blocks


def _kw(W_q, mem, blocks, C_titans, C_cms, targets=None, eta=0.1):
    return dict(W_q=W_q, memories=mem, cms_params=blocks, cms_chunk_sizes=C_cms, cms_eta=eta, targets=targets,
                chunk_size=C_titans)


def test_chunk_size_one_is_the_per_step_recurrence():
    x, targets, W_q, mem, blocks = _setup()
    y, state = hope_recurrent(x, **_kw(W_q, mem, blocks, 1, (1, 1), targets))
    for b in range(x.shape[0]):
        o, _ = _hand_smt(x[b], mem, W_q, 1, 1)  # NLx-94, 95 per token
        ref, cms = [], [tuple(p) for p in blocks]
        for o_t, t_t in zip(o, targets[b]):  # NLx-96 with per-step GD on every block
            y_t, grads = _hand_forward_backward(cms, o_t, t_t)
            ref.append(y_t)
            cms = [(W1 - 0.1 * g1, W2 - 0.1 * g2) for (W1, W2), (g1, g2) in zip(cms, grads)]
        tol = len(ref) * 64 * EPS * max(1.0, np.abs(ref).max())  # one T-step recursion, two roundings
        assert np.abs(y[b] - np.array(ref)).max() <= tol
        assert np.abs(state["cms"][0][0][b] - cms[0][0]).max() <= tol


def test_freezing_every_memory_gives_a_static_network():
    x, targets, W_q, mem, blocks = _setup(1)
    y, state = hope_recurrent(x, **_kw(W_q, mem, blocks, None, (None, None), targets), memory_chunk_size=None)
    for b in range(x.shape[0]):
        static = [_hand_forward_backward(blocks, _mlp(*mem["memory"], _unit(W_q @ x_t)), x_t)[0] for x_t in x[b]]
        assert np.abs(y[b] - np.array(static)).max() <= 64 * EPS * max(1.0, np.abs(static).max())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(state["cms"], blocks))


def test_outputs_stay_finite_over_a_long_random_sequence():
    x, targets, W_q, mem, blocks = _setup(2, T=4096, batch=(2,), K=3)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, state = hope_chunked(x, **_kw(W_q, mem, blocks, 16, (64, 16, 4), targets), memory_chunk_size=8)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert all(np.isfinite(W).all() for pair in state["memories"].values() for W in pair)
    assert all(np.isfinite(W).all() for pair in state["cms"] for W in pair)


def test_numpy_equals_array_api_strict():
    x, targets, W_q, mem, blocks = _setup(3, T=20)
    y_np, _ = hope_chunked(x, **_kw(W_q, mem, blocks, 4, (4, 2), targets))
    with refmem.backend("array_api_strict") as xp:
        conv = lambda a: xp.asarray(a)  # noqa: E731
        y_st, _ = hope_chunked(conv(x), **_kw(conv(W_q), {n: (conv(a), conv(b)) for n, (a, b) in mem.items()},
                                              tuple((conv(a), conv(b)) for a, b in blocks), 4, (4, 2), conv(targets)))
    # the same operations in the same order on two float64 backends: only library-level rounding differs
    assert np.abs(to_numpy(y_st) - y_np).max() <= 20 * 64 * EPS * max(1.0, np.abs(y_np).max())


@pytest.mark.parametrize("C_titans, C_mem, C_cms", [(1, 1, (1, 1)), (4, 2, (8, 4)), (3, 6, (6, None))])
def test_chunked_evaluation_equals_the_sequential_one_for_the_same_chunking(C_titans, C_mem, C_cms):
    x, targets, W_q, mem, blocks = _setup(4, T=25)
    kw = _kw(W_q, mem, blocks, C_titans, C_cms, targets)
    y1, s1 = hope_recurrent(x, **kw, memory_chunk_size=C_mem)
    y2, s2 = hope_chunked(x, **kw, memory_chunk_size=C_mem)
    assert np.abs(y1 - y2).max() <= 25 * 64 * EPS * max(1.0, np.abs(y1).max())


def test_titans_chunks_larger_than_one_are_a_different_computation():
    x, targets, W_q, mem, blocks = _setup(5, T=16)
    y1, _ = hope_recurrent(x, **_kw(W_q, mem, blocks, 1, (1, 1), targets))
    y4, _ = hope_chunked(x, **_kw(W_q, mem, blocks, 4, (1, 1), targets))
    assert np.abs(y1[..., 0, :] - y4[..., 0, :]).max() <= 64 * EPS  # the first token reads the initial state in both
    assert np.abs(y1 - y4).max() > 1e-6  # then the snapshots differ from the per-step states


def test_flat_vector_convention_equals_the_structured_call():
    from refmem.nested.self_modifying_titans import MEMORY_NAMES
    from refmem.nested.vector_cases import hope_make_inputs, hope_vectors

    inp = hope_make_inputs(3, (2,), 11, 4, 4, np)
    x = inp.pop("x")
    y = hope_vectors(x, **inp)
    m = inp["memories"]
    mem = {n: (m[2 * i], m[2 * i + 1]) for i, n in enumerate(MEMORY_NAMES)}
    c = inp["cms_params"]
    want, _ = hope_recurrent(x, inp["W_q"], cms_params=((c[0], c[1]), (c[2], c[3])), cms_chunk_sizes=(8, 2),
                             cms_eta=0.05, targets=inp["targets"], memories=mem, chunk_size=4, memory_chunk_size=2)
    assert np.array_equal(y, want)
    with pytest.raises(ValueError, match="d_k must equal d_v"):
        hope_make_inputs(3, (2,), 11, 4, 5, np)
    with pytest.raises(TypeError, match="flat tuple"):
        hope_vectors(x, **dict(inp, memories=m[:3]))


def numpy_hope_flat(x, *, targets, W_q, memories, cms_params, chunk_size, memory_chunk_size, cms_chunk_1, cms_chunk_2,
                    cms_eta, eta_max, eta_bias, alpha_bias):
    """An independent HOPE in the flat vector convention: plain loops over sequences and tokens, nothing from refmem."""
    names = ("k", "v", "eta", "alpha", "memory")
    mem = {n: (memories[2 * i], memories[2 * i + 1]) for i, n in enumerate(names)}
    blocks0 = [(cms_params[0], cms_params[1]), (cms_params[2], cms_params[3])]
    lead = x.shape[:-2]
    y = np.empty_like(x)
    for idx in np.ndindex(*lead):
        o, _ = _hand_smt(x[idx], mem, W_q, chunk_size, memory_chunk_size, eta_max, eta_bias, alpha_bias)
        blocks, sums = list(blocks0), [None, None]
        for t in range(o.shape[0]):
            y_t, grads = _hand_forward_backward(blocks, o[t], targets[idx][t])
            y[idx + (t,)] = y_t
            for i, C in enumerate((cms_chunk_1, cms_chunk_2)):
                sums[i] = grads[i] if sums[i] is None else (sums[i][0] + grads[i][0], sums[i][1] + grads[i][1])
                if (t + 1) % C == 0:
                    blocks[i] = (blocks[i][0] - cms_eta * sums[i][0], blocks[i][1] - cms_eta * sums[i][1])
                    sums[i] = None
    return y


def test_an_independent_numpy_hope_matches_the_flat_convention():
    from refmem.nested.vector_cases import hope_make_inputs, hope_vectors

    inp = hope_make_inputs(5, (2, 2), 19, 4, 4, np)
    x = inp.pop("x")
    want = hope_vectors(x, **inp)
    got = numpy_hope_flat(x, **inp)
    assert np.abs(got - want).max() <= 19 * 64 * EPS * max(1.0, np.abs(want).max())


@pytest.fixture(scope="module")
def hope_vectors_dir(tmp_path_factory):
    from refmem.vectors import generate

    out = tmp_path_factory.mktemp("hope-vectors")
    generate(str(out), ["hope"])
    return str(out)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_refmem_conform_accepts_an_independent_hope_and_rejects_a_wrong_one(dtype, hope_vectors_dir):
    from refmem.conform import check

    result = check(numpy_hope_flat, spec="hope", dtype=dtype, vectors=hope_vectors_dir,
                   cases=["T1", "T63_heads3", "no_batch"])
    assert result.passed and len(result.rows) == 3

    def per_step_snapshots(x, **kw):  # reads the per-step states instead of the chunk snapshots
        return numpy_hope_flat(x, **dict(kw, chunk_size=1, memory_chunk_size=1))

    wrong = check(per_step_snapshots, spec="hope", dtype=dtype, vectors=hope_vectors_dir, cases=["T63_heads3"])
    assert not wrong.passed
