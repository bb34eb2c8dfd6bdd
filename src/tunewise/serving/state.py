"""What a running server holds: the arms, their models and weights, the request log, the metrics.

The app's lifespan builds one :class:`ServingState` and sets it as ``app.state.tunewise``; the
routes and the key checks read it from there (:func:`state_of`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request

from tunewise.monitoring.feedback import INCUMBENT
from tunewise.serving.arms import ArmSpec, normalise_weights
from tunewise.serving.base import ServeConfig, ServeError, log
from tunewise.serving.batching import MicroBatcher
from tunewise.serving.guard import ServeMetrics
from tunewise.serving.served_model import ServedModel

__all__ = ["ServingState", "refresh_weights", "state_of"]


class ServingState:
    def __init__(
        self,
        run_dir: Path,
        config: ServeConfig,
        specs: list[ArmSpec],
        models: dict[str, ServedModel],
        store: Any,
        api_key: str | None,
        admin_key: str | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.specs = {s.name: s for s in specs}
        self.models = models
        self.store = store
        self.api_key = api_key
        self.admin_key = admin_key
        self.metrics = ServeMetrics()
        self.weights: dict[str, float] = {s.name: s.weight for s in specs}
        self.weights_version = 0  # bumped by /admin/arms: a re-read started before it is not applied
        self.incumbent = config.incumbent or (INCUMBENT if INCUMBENT in self.specs else specs[0].name)
        if self.incumbent not in self.specs:
            raise ServeError(f"incumbent {self.incumbent!r} is not one of the arms {sorted(self.specs)}")
        self.task = next(iter(models.values())).task
        self.batchers: dict[str, MicroBatcher] = {}
        self.writer: Any = None
        self.started = time.time()

    def model_of(self, arm: str) -> ServedModel:
        return self.models[self.specs[arm].candidate]

    def apply_weights(self, stored: Mapping[str, tuple[str, float]]) -> bool:
        """Serve with the stored weights (what every replica reads); False, keeping the current
        ones, when the stored ones are unusable (not finite, negative, all zero)."""
        weights = {name: float(stored[name][1]) if name in stored else w for name, w in self.weights.items()}
        try:
            normalise_weights(weights)
        except ValueError as exc:
            log.warning("stored arm weights %s are unusable (%s); keeping %s", weights, exc, self.weights)
            return False
        self.weights = weights
        for name, w in self.weights.items():
            self.metrics.weights.labels(name).set(w)
        return True


def state_of(request: Request) -> ServingState:
    """The state of the app answering ``request`` (set by the app's lifespan)."""
    return request.app.state.tunewise


async def refresh_weights(state: ServingState) -> None:
    """Re-read the weights: another replica, or promote/rollback through it, may have changed them."""
    while True:
        await asyncio.sleep(state.config.arms_refresh_s)
        try:
            version = state.weights_version
            stored = await asyncio.to_thread(state.store.arm_weights)
            if version == state.weights_version:  # else /admin/arms wrote (and applied) newer ones meanwhile
                state.apply_weights(stored)
        except Exception as exc:  # noqa: BLE001 - keep serving with the weights we have
            log.warning("could not re-read arm weights: %s", exc)
