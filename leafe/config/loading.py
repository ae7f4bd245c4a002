"""YAML files and dotted overrides in, a validated :class:`ExperimentConfig` out; pydantic's
errors rewritten to name the field as the YAML spells it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from leafe.config.base import ConfigError
from leafe.config.envs import ENV_CONFIGS
from leafe.config.experiment import ExperimentConfig


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key written twice in one mapping is an error (the safe
    loader keeps the last one, so a second ``policy:`` section would silently drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: yaml merges it; a key set after it wins
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply dotted overrides, validate."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass an experiment YAML (e.g. configs/sokoban_quickstart.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return config_from_dict(apply_overrides(data, overrides), source=str(path))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
