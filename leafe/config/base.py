"""What every config section shares: strict, frozen pydantic models and one error type."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A configuration problem; the message names the field or file."""


def _numeric(annotation: Any) -> bool:
    """Whether a field of this type holds a number (``int``, ``float``, optionally ``None``)."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        members = set(get_args(annotation)) - {type(None)}
        return bool(members) and members <= {int, float}
    return False


class Section(BaseModel):
    """A config section: unknown fields are errors, values are frozen, and a number field
    refuses ``true``/``false`` (pydantic would read them as 1 and 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value
