"""Optimisers are memories too (NL 2.3, NLx 4, MATH.md 2 and 6).

Every optimiser is a stack of levels; each level is an associative memory
whose update solves a small stated problem, in closed form or by an
iterative solver that knows nothing of the closed form.

:data:`OPTIMIZERS` is the one table of what exists; :func:`make` builds one
by name with torch.optim's hyperparameter names and defaults:

>>> import numpy as np
>>> from refmem.optimizers import make
>>> opt = make("adam", lr=1e-2)
>>> W = np.ones((2, 3)); state = opt.init(W)
>>> W, state, reports = opt.step(W, np.full((2, 3), 0.5), state)
>>> sorted(reports)
['first_moment', 'second_moment', 'weights']
>>> bool(np.allclose(W, 1 - 1e-2))   # the first Adam step moves every entry by lr
True

The two examples of the Nested Learning paper's section 2 stay as modules of their own:
:mod:`.local_surprise` (gradient descent on a one-layer MLP is a memory of
local surprise, NL-2..6) and :mod:`.momentum` (momentum is a two-level
memory, NL-7..11, NLx-10..13).
"""

from __future__ import annotations

import inspect

from . import local_surprise, momentum
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .deep_momentum import DeepMomentum
from .delta_momentum import DeltaMomentum
from .m3 import M3
from .muon import Muon
from .optimizer import METHODS, Optimizer
from .preconditioned_momentum import PreconditionedMomentum
from .rmsprop import RMSprop
from .sgd import SGD

OPTIMIZERS: dict[str, type] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "muon": Muon,
    "m3": M3,
    "preconditioned_momentum": PreconditionedMomentum,
    "delta_momentum": DeltaMomentum,
    "deep_momentum": DeepMomentum,
}


def make(name: str, **hyperparameters) -> Optimizer:
    """The optimiser ``name`` of :data:`OPTIMIZERS` with the given hyperparameters.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the known ones), or a hyperparameter out of range.
    TypeError
        A hyperparameter the optimiser does not have (the message lists its hyperparameters).

    Examples
    --------
    Adam's first step, solved in closed form and by its iterative levels: the
    bias-corrected moments are ``g`` and ``g^2``, so the step is ``lr g / (|g| + eps)``.

    >>> import numpy as np
    >>> from refmem.optimizers import make
    >>> opt = make("adam", lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    >>> W, g = np.ones((2, 3)), np.full((2, 3), 0.5)   # weights, gradient [d_out, d_in]
    >>> W_closed, state, _ = opt.step(W, g, opt.init(W))
    >>> W_iter, _, _ = opt.step(W, g, opt.init(W), method="iterative")
    >>> bool(np.allclose(W_closed, W - 0.1 * g / (np.abs(g) + 1e-8))), bool(np.allclose(W_iter, W_closed))
    (True, True)
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"name must be one of {sorted(OPTIMIZERS)}; got {name!r}")
    cls = OPTIMIZERS[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise TypeError(f"{name} has no hyperparameter {', '.join(map(repr, unknown))}; its hyperparameters: {known}")
    return cls(**hyperparameters)


__all__ = ["OPTIMIZERS", "METHODS", "Optimizer", "make", "local_surprise", "momentum",
           "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Muon", "M3",
           "PreconditionedMomentum", "DeltaMomentum", "DeepMomentum"]
