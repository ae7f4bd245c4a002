"""The ``env`` section: one model per environment, chosen by its ``name`` (Sokoban when absent)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from leafe.config.base import Section


class SokobanConfig(Section):
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


class CodingConfig(Section):
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


class HouseholdConfig(Section):
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


class AlfworldConfig(Section):
    """ALFWorld's own games: needs the ``alfworld`` package and its game files."""

    name: Literal["alfworld"] = "alfworld"
    data_dir: str | None = None
    test_split: Literal["valid_unseen", "valid_seen"] = "valid_unseen"
    task_types: tuple[HouseholdTaskType | Literal["pick_two_obj_and_place"], ...] = (
        *get_args(HouseholdTaskType),
        "pick_two_obj_and_place",
    )
    show_valid_actions: bool = True


class ShopConfig(Section):
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


class SciWorldConfig(Section):
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


class WebshopConfig(Section):
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

