"""Retentions ``Ret(M, M_t)`` (Miras' retention gates; MATH.md 4): how strongly a level holds on to its past state.

Each retention is one module; :data:`RETENTIONS` maps names to classes.
"""

from .base import QuadraticProximal, Retention
from .forget_gate import ForgetGate
from .elastic_net import ElasticNet
from .kl_simplex import KLSimplex
from .local_l2 import LocalL2
from .lq_moneta import LqMoneta
from .weight_decay import WeightDecay

RETENTIONS: dict[str, type[Retention]] = {
    "local_l2": LocalL2,
    "forget_gate": ForgetGate,
    "weight_decay": WeightDecay,
    "elastic_net": ElasticNet,
    "kl_simplex": KLSimplex,
    "lq_moneta": LqMoneta,
}

__all__ = ["Retention", "QuadraticProximal", "LocalL2", "ForgetGate", "WeightDecay", "ElasticNet", "KLSimplex",
           "LqMoneta", "RETENTIONS"]
