"""How the agent learns: exploration (LEAFE stage 1 and its baselines), SFT data, the trainers
(SFT, GRPO, Early Experience) and the ``leafe run`` pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from leafe.config.base import Section


class ExploreSettings(Section):
    """Every knob of exploration. The paper gives none of these values; defaults are ours.

    ``trigger``, ``reflect_every``, ``max_reflections_per_node``, ``max_depth`` and
    ``max_branches_per_node`` shape the LEAFE tree only; the budget, reflector and experience
    fields apply to the baselines too (independent sampling uses no reflector).

    Attributes:
        reflector: ``"self"`` (the acting policy, the paper's choice), ``"model"`` (another
            policy) or ``"env"`` (the environment's diagnosis).
        trigger: ``"interval"`` (every ``reflect_every`` steps and at a failed end, the paper's
            schedule) or ``"feedback"`` (at steps whose feedback signals trouble, and at a
            failed end).
        reflect_every: K of the interval schedule (paper: unspecified).
        max_reflections_per_node: reflections per node at most; the last trigger points are
            kept (they see the most).
        max_depth: deepest node; nodes at this depth are not reflected on (paper: unspecified).
        max_branches_per_node: branches sampled from each distinct rollback step of a node
            (paper: unspecified).
        max_env_steps: turn budget per task, shared by all its episodes (paper: "attempt/step
            budget", value unspecified).
        max_model_tokens: prompt + completion token budget per task, reflections included
            (``None``: unlimited). Checked before each model call, so a batched round can pass
            it by a few calls; the exact spend is reported.
        max_reflection_attempts: answers tried per policy reflection before it is recorded
            as failed.
        reflection_max_new_tokens: generation cap of one reflection answer.
        experience_window: experience summaries shown in a prompt at most (the latest); 0 shows
            none (the "no experience summary" ablation: branches get only the rollback).
        max_tasks_in_flight: tasks explored together (their waves share policy batches).
        restart: when a task has nothing left to expand (LEAFE) or an attempt succeeded
            (refinement) and budget remains, start again from a fresh root. Keeps the spend of
            all methods equal; the paper does not say what happens to leftover budget.
    """

    reflector: Literal["self", "model", "env"] = "self"
    trigger: Literal["interval", "feedback"] = "interval"
    reflect_every: int = Field(4, ge=1)
    max_reflections_per_node: int = Field(2, ge=1)
    max_depth: int = Field(3, ge=0)
    max_branches_per_node: int = Field(2, ge=1)
    max_env_steps: int = Field(100, ge=1)
    max_model_tokens: int | None = Field(None, ge=1)
    max_reflection_attempts: int = Field(3, ge=1)
    reflection_max_new_tokens: int = Field(64, ge=1)
    experience_window: int = Field(3, ge=0)
    max_tasks_in_flight: int = Field(16, ge=1)
    restart: bool = True


class ExploreConfig(ExploreSettings):
    """LEAFE stage 1 (``leafe explore``): which method, on which tasks, with which knobs (the
    knobs are :class:`ExploreSettings`; the paper gives none of their values)."""

    method: Literal["leafe", "independent", "refinement"] = "leafe"
    split: Literal["train", "test"] = "train"
    num_tasks: int = Field(8, ge=1, le=100000)
    reflector_model: str | None = None


class DataConfig(Section):
    """LEAFE stage 2 data (``leafe.method.distill``): which SFT examples the trees give."""

    max_cf_per_task: int = Field(3, ge=0, le=100000)
    cf_target: Literal["turn", "branch"] = "turn"
    rehearsal_fraction: float = Field(0.2, ge=0.0, le=1.0)


class FinetuneSettings(Section):
    """What every trainer shares: which weights train (full or LoRA) and the optimiser's knobs."""

    finetune: Literal["lora", "full"] = "lora"
    lora_r: int = Field(16, ge=1, le=4096)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False


class SFTConfig(FinetuneSettings):
    """LEAFE stage 2 training (``leafe.trainers.sft``): L = L_cf + beta * L_reh on reply tokens."""

    objective: Literal["leafe", "cf_only", "reh_only"] = "leafe"
    beta: float = Field(1.0, ge=0.0)
    merge_lora: bool = False
    epochs: float = Field(2.0, gt=0.0, le=1000.0)
    batch_size: int = Field(4, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(4, ge=1, le=4096)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_seq_length: int = Field(2048, ge=16, le=1 << 20)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(5, ge=1)


class GRPOConfig(FinetuneSettings):
    """Multi-turn GRPO (``leafe.trainers.grpo``): groups of episodes per task, group-relative
    advantages, the clipped token-level surrogate on the model's own tokens, optional KL."""

    split: Literal["train", "test"] = "train"
    num_tasks: int = Field(64, ge=1)
    steps: int = Field(20, ge=1, le=1_000_000)
    tasks_per_step: int = Field(4, ge=1, le=4096)
    group_size: int = Field(8, ge=2, le=4096)
    updates_per_batch: int = Field(1, ge=1, le=64)
    micro_batch_size: int = Field(4, ge=1, le=4096)
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    clip_high: float = Field(0.28, ge=0.0)
    kl_coef: float = Field(0.0, ge=0.0)
    scale_by_std: bool = True
    invalid_action_penalty: float = Field(0.0, ge=0.0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    save_steps: int = Field(5, ge=1)


class EarlyExperienceConfig(Section):
    """Early Experience (``leafe.method.early_experience``, arXiv 2510.08558): at the states of
    expert demonstrations the policy proposes alternative actions, which are executed; the next
    observations they led to become training data without any reward."""

    variant: Literal["iwm", "sr"] = "iwm"
    split: Literal["train", "test"] = "train"
    num_tasks: int = Field(64, ge=1)
    max_states_per_task: int = Field(32, ge=1)
    alternatives: int = Field(3, ge=1, le=64)
    observation_chars: int = Field(400, ge=16)
    rationale_max_new_tokens: int = Field(64, ge=1)
    world_model_epochs: float = Field(1.0, gt=0.0, le=1000.0)


class PipelineConfig(Section):
    """``leafe run``: explore -> build data -> SFT -> evaluate, ``rounds`` times."""

    rounds: int = Field(1, ge=1, le=100)
    eval_base: bool = True
    init_from: str | None = None

