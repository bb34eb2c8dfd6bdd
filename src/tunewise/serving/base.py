"""What the serving modules share: the serve section's config class, the error class, the run's project config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunewise.config.sections import ServeConfig as _SectionServeConfig, config_from_dict
from tunewise.core.errors import TunewiseError

log = logging.getLogger("tunewise.serving.app")


class ServeError(TunewiseError, RuntimeError):
    """The server cannot start as asked; the message says what to change."""

    hint = "check the serve section of the config and the command's options; `tunewise serve --help` lists them"


ServeConfig = _SectionServeConfig  # the serve section, hardening settings included (issue 18)


def widen_config(config: Any) -> ServeConfig:
    if config is None:
        return ServeConfig()
    if isinstance(config, ServeConfig):
        return config
    return ServeConfig(**config.model_dump())


def run_project_config(run_dir: Path, cfg: Any = None) -> Any:
    if cfg is not None:
        return cfg

    saved = run_dir / "config.json"
    if saved.exists():
        try:
            return config_from_dict(json.loads(saved.read_text()), base_dir=run_dir.parent.parent)
        except Exception as exc:  # noqa: BLE001 - defaults still serve the common case
            log.warning("run config %s not usable (%s); using default settings", saved, exc)
    return None
