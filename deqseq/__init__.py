"""deqseq: deep equilibrium sequence models."""

from . import cells
from .cells import CELLS, register_cell
from .checkpoint import load_checkpoint
from .config import Config, ConfigError, ModelConfig, SolverSettings, apply_overrides, load_config
from .data import SOURCES, load_corpus, register_source
from .deq import DEQLayer, DEQOutput
from .equivalence import EquivalenceReport, check_equivalence
from .forecast import continue_series
from .generation import Generation, TokenStep, generate, stream
from .heads import HEADS, register_head
from .inputs import INPUTS, register_input
from .layout import NextTokenLayout
from .model import DEQSequenceModel, ModelOutput, eval_mode
from .model_io import ModelIO
from .sampling import SamplingConfig
from .scoring import Score, score
from .training import Trainer, TrainResult, build_run, train

__all__ = [
    "CELLS",
    "HEADS",
    "INPUTS",
    "SOURCES",
    "ModelIO",
    "register_cell",
    "register_head",
    "register_input",
    "register_source",
    "Config",
    "ConfigError",
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
    "TrainResult",
    "Trainer",
    "build_run",
    "cells",
    "apply_overrides",
    "check_equivalence",
    "continue_series",
    "eval_mode",
    "generate",
    "load_checkpoint",
    "load_config",
    "load_corpus",
    "score",
    "stream",
    "train",
]
