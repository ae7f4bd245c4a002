"""Experiment configuration: one YAML file per experiment, dotted overrides, strict validation.

    cfg = load_config("configs/sokoban_quickstart.yaml", ["policy.temperature=0.5"])

Every field is typed and range-checked; unknown fields are rejected. Any problem raises
:class:`ConfigError` whose message names the offending field (``policy.temprature: unknown
field (did you mean 'temperature'?)``). This module imports only pydantic and yaml, so a bad
config fails in well under a second, before torch or transformers are loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem; the message names the field or file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SokobanConfig(_Section):
    """Sokoban rooms (gym-sokoban's generator) and episode rules."""

    name: Literal["sokoban"] = "sokoban"
    dim: tuple[int, int] = (6, 6)
    num_boxes: int = Field(1, ge=1, le=4)
    num_steps: int = Field(20, ge=1, le=1000)
    min_solution_length: int = Field(2, ge=1)
    max_solution_length: int = Field(20, ge=1)
    terminate_on_deadlock: bool = True

    @field_validator("dim")
    @classmethod
    def _dim_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(5 <= side <= 12 for side in value):
            raise ValueError("each side must be between 5 and 12 (walls included)")
        return value


class CodingConfig(_Section):
    """Coding with execution feedback: programs judged by hidden tests in a sandbox."""

    name: Literal["coding"] = "coding"
    source: Literal["generated", "humaneval", "codecontests", "apps", "mbpp"] = "generated"
    data_path: str | None = None
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_by: Literal["problem", "template"] = "problem"
    timeout_s: float = Field(4.0, gt=0.0, le=600.0)
    cpu_time_s: float = Field(2.0, gt=0.0, le=600.0)
    memory_mb: int = Field(512, ge=64, le=65536)
    file_size_mb: int = Field(16, ge=1, le=65536)
    max_processes: int = Field(16, ge=1, le=4096)
    max_tests: int | None = Field(None, ge=1)
    feedback_chars: int = Field(300, ge=20, le=100000)
    isolation: Literal["auto", "namespaces", "hooks"] = "auto"

    @model_validator(mode="after")
    def _data_path_matches_source(self) -> CodingConfig:
        from_files = self.source in ("codecontests", "apps", "mbpp")
        if from_files and not self.data_path:
            raise ValueError(f"data_path: required when source is {self.source!r} (a file or directory of its data)")
        if not from_files and self.data_path:
            raise ValueError(f"data_path: only used with source codecontests, apps or mbpp, not {self.source!r}")
        if self.split_by == "template" and self.source != "generated":
            raise ValueError(f"split_by: 'template' only applies to source 'generated', not {self.source!r}")
        return self


HouseholdTaskType = Literal[
    "pick_and_place_simple",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_clean_then_place_in_recep",
    "look_at_obj_in_light",
]


class HouseholdConfig(_Section):
    """Household games in the style of ALFWorld, generated offline with TextWorld and cached."""

    name: Literal["household"] = "household"
    task_types: tuple[HouseholdTaskType, ...] = get_args(HouseholdTaskType)
    num_receptacles: int = Field(4, ge=2, le=8)
    num_distractors: int = Field(2, ge=0, le=6)
    closed_containers: bool = True
    show_valid_actions: bool = True
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @field_validator("task_types")
    @classmethod
    def _some_task_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one task type")
        return tuple(dict.fromkeys(value))


class AlfworldConfig(_Section):
    """ALFWorld's own games: needs the ``alfworld`` package and its game files."""

    name: Literal["alfworld"] = "alfworld"
    data_dir: str | None = None
    test_split: Literal["valid_unseen", "valid_seen"] = "valid_unseen"
    task_types: tuple[HouseholdTaskType | Literal["pick_two_obj_and_place"], ...] = (
        *get_args(HouseholdTaskType),
        "pick_two_obj_and_place",
    )
    show_valid_actions: bool = True


class ShopConfig(_Section):
    """The embedded shop (a WebShop stand-in): a generated catalogue, WebShop's page flow and reward."""

    name: Literal["shop"] = "shop"
    catalog_seed: int = Field(0, ge=0)
    num_products: int = Field(3000, ge=25, le=200_000)
    page_size: int = Field(10, ge=1, le=50)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


SCIWORLD_TASKS = (
    "boil", "change-the-state-of-matter-of", "chemistry-mix", "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color", "find-animal", "find-living-thing", "find-non-living-thing", "find-plant",
    "freeze", "grow-fruit", "grow-plant", "identify-life-stages-1", "identify-life-stages-2",
    "inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces", "inclined-plane-friction-unnamed-surfaces",
    "lifespan-longest-lived", "lifespan-longest-lived-then-shortest-lived", "lifespan-shortest-lived",
    "measure-melting-point-known-substance", "measure-melting-point-unknown-substance", "melt",
    "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant", "power-component",
    "power-component-renewable-vs-nonrenewable-energy", "test-conductivity", "test-conductivity-of-unknown-substances",
    "use-thermometer",
)

SCIWORLD_SIMPLIFICATIONS = ("easy", "teleportAction", "selfWateringFlowerPots", "openContainers", "openDoors", "noElectricalAction")


class SciWorldConfig(_Section):
    """ScienceWorld (the ``scienceworld`` package's simulator, on Java 17): task variations as tasks."""

    name: Literal["scienceworld"] = "scienceworld"
    task_names: tuple[str, ...] = ("find-non-living-thing", "lifespan-longest-lived", "lifespan-shortest-lived", "find-living-thing")
    simplification: str = "easy"
    test_split: Literal["test", "dev"] = "test"

    @field_validator("task_names")
    @classmethod
    def _known_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in SCIWORLD_TASKS]
        if unknown or not value:
            raise ValueError(f"unknown ScienceWorld task(s) {unknown}; choose from {', '.join(SCIWORLD_TASKS)}" if unknown else "must name at least one task")
        return tuple(dict.fromkeys(value))

    @field_validator("simplification")
    @classmethod
    def _known_simplifications(cls, value: str) -> str:
        unknown = [part for part in value.split(",") if part and part not in SCIWORLD_SIMPLIFICATIONS]
        if unknown:
            raise ValueError(f"unknown simplification(s) {unknown}; comma-separate from {', '.join(SCIWORLD_SIMPLIFICATIONS)}")
        return value


class WebshopConfig(_Section):
    """A user-run WebShop server (its Flask app), reached over HTTP; goals are its fixed sessions."""

    name: Literal["webshop"] = "webshop"
    base_url: str = Field("http://127.0.0.1:3000", pattern=r"^https?://")
    timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    num_goals: int = Field(6910, ge=2)
    test_goals: int = Field(500, ge=1)
    train_start: int = Field(1500, ge=1)

    @model_validator(mode="after")
    def _splits_fit(self) -> WebshopConfig:
        if self.train_start < self.test_goals:
            raise ValueError(f"train_start: must be at least test_goals ({self.test_goals}) so the splits do not overlap")
        if self.train_start >= self.num_goals:
            raise ValueError(f"train_start: must be below num_goals ({self.num_goals}) so the train split is not empty")
        return self


def _env_name(value: Any) -> str:
    """The ``env`` section's environment name; a section without ``name`` is Sokoban."""
    name = value.get("name", "sokoban") if isinstance(value, dict) else getattr(value, "name", None)
    return name if isinstance(name, str) else repr(name)


ENV_CONFIGS: dict[str, type[BaseModel]] = {
    "sokoban": SokobanConfig,
    "coding": CodingConfig,
    "household": HouseholdConfig,
    "alfworld": AlfworldConfig,
    "shop": ShopConfig,
    "webshop": WebshopConfig,
    "scienceworld": SciWorldConfig,
}
EnvConfig = Annotated[
    Union[
        Annotated[SokobanConfig, Tag("sokoban")],
        Annotated[CodingConfig, Tag("coding")],
        Annotated[HouseholdConfig, Tag("household")],
        Annotated[AlfworldConfig, Tag("alfworld")],
        Annotated[ShopConfig, Tag("shop")],
        Annotated[WebshopConfig, Tag("webshop")],
        Annotated[SciWorldConfig, Tag("scienceworld")],
    ],
    Discriminator(
        _env_name,
        custom_error_type="unknown_env",
        custom_error_message=f"unknown environment; expected one of: {', '.join(ENV_CONFIGS)}",
    ),
]


class PolicyConfig(_Section):
    """Which model answers, through which inference backend, and how it samples."""

    backend: Literal["auto", "transformers", "native", "vllm", "openai"] = "auto"
    model: str = "smollm2-135m-instruct"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(64, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1, le=32768)
    prefix_cache_mb: int = Field(2048, ge=0, le=1 << 20)
    # Native engine: draft tokens per sequence and step, copied from the context and verified
    # exactly (prompt-lookup speculative decoding); 0 turns it off.
    speculative_tokens: int = Field(4, ge=0, le=64)
    # Native engine on the CPU: run passes of 16+ rows on oneDNN with the weights reordered once
    # (faster on the CPUs measured; one extra copy of the weights in memory); false: MKL only.
    packed_linear: bool = True
    base_url: str | None = Field(None, pattern=r"^https?://")
    api_key_env: str = "OPENAI_API_KEY"
    request_timeout_s: float = Field(120.0, gt=0.0, le=86400.0)
    max_retries: int = Field(4, ge=0, le=100)
    engine_args: dict[str, Any] = Field(default_factory=dict)


class RolloutConfig(_Section):
    """The multi-turn ReAct loop shared by every command."""

    max_steps: int = Field(10, ge=1, le=10000)
    history_window: int = Field(2, ge=0, le=1000)
    prompt_format: Literal["completion", "chat"] = "completion"
    few_shot: bool = True
    max_concurrent_episodes: int = Field(64, ge=1, le=100000)


class WorkersConfig(_Section):
    """Where ``leafe eval`` (sample), ``leafe explore`` and ``leafe run`` play episodes: in this
    process (``num: 1``) or on ``num`` Ray actors (``pip install -e ".[ray]"``), each with its own
    environments and model, streaming finished episodes and trees back (:mod:`leafe.workers`).
    """

    num: int = Field(1, ge=1, le=100000)
    # None: a new Ray on this machine; "auto" or "head-ip:6379": join a running cluster from one
    # of its nodes (a Ray Client address, ray://, cannot stream the records back).
    ray_address: str | None = None
    cpus: float = Field(1.0, gt=0.0, le=4096.0)  # per worker; its torch threads are max(1, floor(cpus))
    gpus: float = Field(0.0, ge=0.0, le=64.0)  # per worker, e.g. 1 with policy.backend: vllm

    @field_validator("ray_address")
    @classmethod
    def _not_ray_client(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("ray://"):
            raise ValueError("a Ray Client address (ray://) cannot stream records back; run leafe on a node "
                             "of the cluster with ray_address: auto (or submit it with `ray job submit`)")
        return value


class EvalConfig(_Section):
    """Pass@k evaluation: n independent samples per task.

    ``method: sample`` plays one episode per sample. ``method: reflexion`` (inference-time
    reflection) makes each sample a chain of attempts: after a failed attempt the ``explore``
    section's reflector writes a lesson and the next attempt starts over with the lessons in its
    prompt, until one succeeds or ``budget_episodes * rollout.max_steps`` turns are spent (an
    attempt that ends early leaves its turns to the next ones). Reflexion is ``leafe eval``'s
    alone: ``leafe run`` evaluates by sampling and refuses it.
    """

    method: Literal["sample", "reflexion"] = "sample"
    budget_episodes: int = Field(3, ge=1, le=1000)
    split: Literal["train", "test"] = "test"
    num_tasks: int = Field(8, ge=1, le=100000)
    samples_per_task: int = Field(8, ge=1, le=100000)
    ks: tuple[int, ...] = (1, 2, 4, 8)
    num_bootstrap: int = Field(1000, ge=10, le=1000000)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must be a non-empty list of integers >= 1")
        return tuple(sorted(set(value)))


class ExploreSettings(_Section):
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


class DataConfig(_Section):
    """LEAFE stage 2 data (``leafe.method.distill``): which SFT examples the trees give."""

    max_cf_per_task: int = Field(3, ge=0, le=100000)
    cf_target: Literal["turn", "branch"] = "turn"
    rehearsal_fraction: float = Field(0.2, ge=0.0, le=1.0)


class FinetuneSettings(_Section):
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


class EarlyExperienceConfig(_Section):
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


class PipelineConfig(_Section):
    """``leafe run``: explore -> build data -> SFT -> evaluate, ``rounds`` times."""

    rounds: int = Field(1, ge=1, le=100)
    eval_base: bool = True
    init_from: str | None = None


class ExperimentConfig(_Section):
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

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _suggest(section: type[BaseModel], loc: Sequence[str | int]) -> str:
    """' (did you mean ...?)' for an unknown field name, or ''. ``loc`` keeps union tags."""
    model: Any = section
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if part == "env" and model is ExperimentConfig and parts and parts[0] in ENV_CONFIGS:
            annotation = ENV_CONFIGS[parts.pop(0)]  # the union member named by the tag
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _readable_loc(loc: Sequence[str | int]) -> list[str | int]:
    """``loc`` without pydantic's validator and union-tag parts: ``env.coding.timeout_s`` ->
    ``env.timeout_s``."""
    parts = [part for part in loc if not (isinstance(part, str) and part.startswith("function-"))]
    if len(parts) >= 2 and parts[0] == "env" and parts[1] in ENV_CONFIGS:
        del parts[1]
    return parts


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = _readable_loc(item["loc"])
        where = ".".join(str(part) for part in loc) or "<top level>"
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field{_suggest(ExperimentConfig, _tagged_loc(item['loc']))}")
        elif item["type"] == "unknown_env" and not isinstance(item.get("input"), dict):
            lines.append(f"{where}: must be a section with a name ({', '.join(ENV_CONFIGS)}), got {item.get('input')!r}")
        elif item["type"] == "unknown_env":
            lines.append(f"{where}.name: {message} (got {item['input'].get('name')!r})")
        elif message.partition(":")[0].isidentifier() and ": " in message and item["type"] == "value_error":
            field, _, detail = message.partition(": ")  # a model validator naming its field
            lines.append(f"{where + '.' if loc else ''}{field}: {detail}")
        else:
            lines.append(f"{where}: {message} (got {item.get('input')!r})")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def _tagged_loc(loc: Sequence[str | int]) -> list[str | int]:
    return [part for part in loc if not (isinstance(part, str) and part.startswith("function-"))]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"policy.temperature=0.5"`` -> (["policy", "temperature"], 0.5). Values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. policy.temperature=0.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted override set (sections are created as needed)."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return merged


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Validate a plain dict into an :class:`ExperimentConfig` (raises :class:`ConfigError`)."""
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    cfg.check_consistency()
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply dotted overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return config_from_dict(apply_overrides(data, overrides), source=str(path))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
