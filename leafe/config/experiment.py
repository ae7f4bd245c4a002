"""A whole experiment: every section together, and the rules that span sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from leafe.config.base import ConfigError, Section
from leafe.config.envs import EnvConfig, SokobanConfig
from leafe.config.runtime import EvalConfig, PolicyConfig, RolloutConfig, WorkersConfig
from leafe.config.training import DataConfig, EarlyExperienceConfig, ExploreConfig, GRPOConfig, PipelineConfig, SFTConfig


class ExperimentConfig(Section):
    """A whole experiment. ``output_dir/name`` is its run directory."""

    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = Field(0, ge=0)
    output_dir: str = "runs"
    env: EnvConfig = SokobanConfig()
    policy: PolicyConfig = PolicyConfig()
    rollout: RolloutConfig = RolloutConfig()
    workers: WorkersConfig = WorkersConfig()
    eval: EvalConfig = EvalConfig()
    explore: ExploreConfig = ExploreConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    early_experience: EarlyExperienceConfig = EarlyExperienceConfig()
    run: PipelineConfig = PipelineConfig()

    @field_validator("env", mode="before")
    @classmethod
    def _default_env_name(cls, value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:
            return {"name": "sokoban", **value}
        return value

    @field_validator("name")
    @classmethod
    def _not_only_dots(cls, value: str) -> str:
        if set(value) == {"."}:
            raise ValueError("must not be '.' or '..' (it names the run directory)")
        return value

    def check_consistency(self) -> None:
        """Cross-field rules that single-field validators cannot see."""
        if max(self.eval.ks) > self.eval.samples_per_task:
            raise ConfigError(
                f"eval.ks: k={max(self.eval.ks)} exceeds eval.samples_per_task="
                f"{self.eval.samples_per_task}; Pass@k needs n >= k samples per task"
            )
        if (self.explore.reflector == "model") != bool(self.explore.reflector_model):
            raise ConfigError("explore.reflector_model: set it exactly when explore.reflector is 'model'")
        if isinstance(self.env, SokobanConfig) and self.env.min_solution_length > self.env.max_solution_length:
            raise ConfigError("env.min_solution_length: must not exceed env.max_solution_length")
        if self.policy.backend == "openai" and not self.policy.base_url:
            raise ConfigError("policy.base_url: required for policy.backend: openai (e.g. http://localhost:8000/v1)")
        if self.policy.engine_args and self.policy.backend not in ("vllm", "auto"):
            raise ConfigError(f"policy.engine_args: only the vllm backend reads it (policy.backend is {self.policy.backend!r})")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
