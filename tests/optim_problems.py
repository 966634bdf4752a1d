"""A seeded noisy quadratic the optimiser tests run on (drawn with NumPy, handed to the backend).

``g_t(W) = (W - target) + noise_t``: the gradient noise keeps the moments of
the adaptive optimisers away from zero for the whole run, so a relative
comparison of trajectories measures rounding, not the cancellation of a
vanishing gradient.
"""

import numpy as np

from refmem.metrics import rel_error


class NoisyQuadratic:
    def __init__(self, seed, shape, T, noise=0.5):
        rng = np.random.default_rng(seed)
        self.shape, self.T = shape, T
        self.target = rng.standard_normal(shape)
        self.noise = noise * rng.standard_normal((T,) + shape)
        self.W0 = rng.standard_normal(shape)

    def grad_np(self, W, t):
        return (W - self.target) + self.noise[t]

    def grad(self, W, t, xp):
        return (W - xp.asarray(self.target)) + xp.asarray(self.noise[t])


def run(opt, problem, xp, method="closed", T=None):
    """The optimiser's trajectory ``[W_0 .. W_T]`` as NumPy arrays."""
    from conftest import to_numpy

    W = xp.asarray(problem.W0)
    state = opt.init(W)
    out = [problem.W0]
    for t in range(problem.T if T is None else T):
        W, state, _ = opt.step(W, problem.grad(W, t, xp), state, method=method)
        out.append(to_numpy(W))
    return np.stack(out)


def max_rel(a, b):
    """Largest relative difference of two trajectories: max_t max|a_t - b_t| / max|b_t|."""
    return max(rel_error(x, y, np) for x, y in zip(a, b))
