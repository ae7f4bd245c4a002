"""Experiment configuration: one YAML file per experiment, dotted overrides, strict validation.

    cfg = load_config("configs/sokoban_quickstart.yaml", ["policy.temperature=0.5"])

Every field is typed and range-checked; unknown fields are rejected. Any problem raises
:class:`ConfigError` whose message names the offending field (``policy.temprature: unknown
field (did you mean 'temperature'?)``). This package imports only pydantic and yaml, so a bad
config fails in well under a second, before torch or transformers are loaded.

The schema, section by section (each field's type, range and meaning):

- :mod:`leafe.config.envs`: ``env`` (one model per environment, chosen by ``name``);
- :mod:`leafe.config.runtime`: ``policy``, ``rollout``, ``workers``, ``eval``;
- :mod:`leafe.config.training`: ``explore``, ``data``, ``sft``, ``grpo``, ``early_experience``,
  ``run``;
- :mod:`leafe.config.experiment`: the whole file and its cross-section rules;
- :mod:`leafe.config.loading`: YAML, overrides and error messages.
"""

from leafe.config.base import ConfigError
from leafe.config.envs import (
    ENV_CONFIGS,
    SCIWORLD_SIMPLIFICATIONS,
    SCIWORLD_TASKS,
    AlfworldConfig,
    CodingConfig,
    EnvConfig,
    HouseholdConfig,
    SciWorldConfig,
    ShopConfig,
    SokobanConfig,
    WebshopConfig,
)
from leafe.config.experiment import ExperimentConfig
from leafe.config.loading import apply_overrides, config_from_dict, config_to_yaml, load_config, parse_override
from leafe.config.runtime import EvalConfig, PolicyConfig, RolloutConfig, WorkersConfig
from leafe.config.training import (
    DataConfig,
    EarlyExperienceConfig,
    ExploreConfig,
    ExploreSettings,
    FinetuneSettings,
    GRPOConfig,
    PipelineConfig,
    SFTConfig,
)

__all__ = [
    "ENV_CONFIGS",
    "SCIWORLD_SIMPLIFICATIONS",
    "SCIWORLD_TASKS",
    "AlfworldConfig",
    "CodingConfig",
    "ConfigError",
    "DataConfig",
    "EarlyExperienceConfig",
    "EnvConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ExploreConfig",
    "ExploreSettings",
    "FinetuneSettings",
    "GRPOConfig",
    "HouseholdConfig",
    "PipelineConfig",
    "PolicyConfig",
    "RolloutConfig",
    "SFTConfig",
    "SciWorldConfig",
    "ShopConfig",
    "SokobanConfig",
    "WebshopConfig",
    "WorkersConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
    "parse_override",
]
