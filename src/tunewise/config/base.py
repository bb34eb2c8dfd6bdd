"""The base of every config section, and the config's error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tunewise.core.errors import TunewiseError


class ConfigError(TunewiseError):
    """A config problem the user must fix; the message says where and how."""

    hint = "fix the setting named above in the config file; `tunewise init DATA_FILE` writes a commented example"


class Section(BaseModel):
    # forbid: a misspelt key must be an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
