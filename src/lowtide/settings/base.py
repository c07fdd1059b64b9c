"""The base of every settings section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown keys are refused so that a typo in the config file is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)
