"""The table of nested systems: one :class:`NestedSystemSpec` per system, listed explicitly (Nested Learning; MATH.md 7).

:data:`NESTED_SYSTEMS` is what the spec tests read: every entry names its
file ``specs/<spec>.md``. A system is either *declared* (built
by ``declare(...)`` as a :class:`~refmem.nested.system.NestedSystem` that
:func:`~refmem.nested.runner.run` steps and :func:`~refmem.nested.system.diagram`
prints) or a sequence scan over ``[..., T, d]`` with a token-by-token
``recurrent`` form and a segment-at-a-time ``chunked`` form, or both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..tables import table_by_name
from . import cms, hope, momentum_mlp, optimizer_systems, self_modifying_titans


@dataclass(frozen=True)
class NestedSystemSpec:
    """A registered nested system.

    Attributes
    ----------
    name : str
        Registry name.
    spec : str
        The file ``specs/<spec>.md`` that specifies it.
    description : str
        The system in one line.
    levels : str
        Its levels from the fastest (Definition 2), in words.
    declare : callable or None
        Builds the declared :class:`~refmem.nested.system.NestedSystem`.
    recurrent, chunked : callable or None
        Token-by-token and segment-at-a-time scans over ``[..., T, d]``.
    """

    name: str
    spec: str
    description: str
    levels: str
    declare: Callable | None = None
    recurrent: Callable | None = None
    chunked: Callable | None = None


NESTED_SYSTEMS: dict[str, NestedSystemSpec] = table_by_name(
    "nested system",
    NestedSystemSpec(
        name="momentum_mlp",
        spec="nested_system",
        description="momentum SGD on a residual MLP: m = alpha m + eta grad L(W), W = W - m",
        levels="1: momentum m (every step); 2: weights W (every step, reads m of the same step)",
        declare=momentum_mlp.momentum_mlp_system,
    ),
    NestedSystemSpec(
        name="adam",
        spec="nested_system",
        description="Adam / AdamW on a linear layer: moment memories of g and g*g, then the weights",
        levels="1: first and second moments (every step, independent: one level); 2: weights (reads both)",
        declare=optimizer_systems.adam_system,
    ),
    NestedSystemSpec(
        name="m3",
        spec="nested_system",
        description="M3 (NLx Algorithm 1) on a linear layer: fast and slow momentum, second moment, orthogonalised",
        levels="1: M1, V; 2: O1 = orth(M1); 3: W; 4: M2 (every f steps, chunk sum of g); 5: O2 = orth(M2)",
        declare=optimizer_systems.m3_system,
    ),
    NestedSystemSpec(
        name="cms",
        spec="cms",
        description="chain of MLP blocks, block l updated every C_l steps by the sum of its C_l error terms",
        levels="blocks by chunk size, smallest C first; frozen blocks last (f = 0)",
        declare=cms.cms_system,
        recurrent=cms.cms_recurrent,
        chunked=cms.cms_chunked,
    ),
    NestedSystemSpec(
        name="self_modifying_titans",
        spec="self_modifying_titans",
        description="k, v, eta, alpha and the memory: residual MLPs updated by DGD with weight decay on self-generated values",
        levels="the five memories (every token, or every C tokens through snapshots); W_q and initial states outer",
        recurrent=self_modifying_titans.self_modifying_titans_recurrent,
        chunked=self_modifying_titans.self_modifying_titans_chunked,
    ),
    NestedSystemSpec(
        name="hope",
        spec="hope",
        description="self-modifying Titans followed by a CMS chain",
        levels="Titans memories (every token / C), CMS blocks by chunk size, outer level",
        recurrent=hope.hope_recurrent,
        chunked=hope.hope_chunked,
    ),
)

__all__ = ["NESTED_SYSTEMS", "NestedSystemSpec"]
