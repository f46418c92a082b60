"""The experiment config: the schema (deqseq.config.sections, with the model and solver sections defined beside
their owners) and its loader on OmegaConf (deqseq.config.loader)."""

from ..checks import ConfigError
from ..deq import SolverSettings
from ..model_config import ModelConfig
from .loader import apply_overrides, config_from_dict, config_to_dict, dump_yaml, load_config
from .sections import (
    ADVERSARIAL_MODES,
    Config,
    DataConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ADVERSARIAL_MODES",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "SolverSettings",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_yaml",
    "load_config",
]
