"""deqseq: deep equilibrium sequence models."""

from . import cells
from .checkpoint import load_checkpoint
from .config import ModelConfig, SolverSettings
from .deq import DEQLayer, DEQOutput
from .equivalence import EquivalenceReport, check_equivalence
from .generation import Generation, TokenStep, generate, stream
from .layout import NextTokenLayout
from .model import DEQSequenceModel, ModelOutput
from .sampling import SamplingConfig
from .scoring import Score, score

__all__ = [
    "DEQLayer",
    "DEQOutput",
    "DEQSequenceModel",
    "EquivalenceReport",
    "Generation",
    "ModelConfig",
    "ModelOutput",
    "NextTokenLayout",
    "SamplingConfig",
    "Score",
    "SolverSettings",
    "TokenStep",
    "cells",
    "check_equivalence",
    "generate",
    "load_checkpoint",
    "score",
    "stream",
]
