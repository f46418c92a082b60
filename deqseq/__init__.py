"""deqseq: deep equilibrium sequence models."""

from . import cells
from .config import ModelConfig, SolverSettings
from .deq import DEQLayer, DEQOutput
from .equivalence import EquivalenceReport, check_equivalence
from .model import DEQSequenceModel, ModelOutput

__all__ = [
    "DEQLayer",
    "DEQOutput",
    "DEQSequenceModel",
    "EquivalenceReport",
    "ModelConfig",
    "ModelOutput",
    "SolverSettings",
    "cells",
    "check_equivalence",
]
