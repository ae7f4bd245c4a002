"""What every config section shares: strict, frozen pydantic models and one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem; the message names the field or file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

