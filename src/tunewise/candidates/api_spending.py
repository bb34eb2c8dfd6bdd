"""What an API candidate spends: the spending cap, the ledger that carries it across runs, the monthly cost."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tunewise.candidates.base import (
    CandidateError,
)
from tunewise.core.artifacts import write_json


class SpendingCapReached(CandidateError):
    """A batch would take the spend past ``max_usd`` (``scope`` "run") or ``max_usd_project`` ("project");
    ``predictions`` holds the rows scored before it."""

    def __init__(
        self,
        message: str,
        predictions: pd.DataFrame,
        *,
        spent_usd: float,
        max_usd: float,
        estimate_usd: float,
        scope: str = "run",
    ) -> None:
        super().__init__(message)
        self.predictions = predictions
        self.spent_usd = spent_usd
        self.max_usd = max_usd
        self.estimate_usd = estimate_usd
        self.scope = scope


LEDGER_VERSION = 1


class SpendLedger:
    """Money the api_* candidates of one project spent, across runs and processes: a JSON file
    (``usd``, and per endpoint) rewritten atomically under an ``flock`` on ``<file>.lock``.

    ``usd`` includes the estimates of batches in flight (reserved before they are sent, settled to the
    real cost after), so a process that dies mid-batch leaves the ledger on the high side, never low.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": LEDGER_VERSION, "usd": 0.0, "by_endpoint": {}}
        except (OSError, ValueError) as exc:  # a damaged ledger must not let spending through unchecked
            raise CandidateError(
                f"the spending ledger {self.path} cannot be read ({type(exc).__name__}: {exc}); "
                "fix or delete it (it sums the USD the api_* candidates spent)"
            ) from None
        return data if isinstance(data, dict) else {"version": LEDGER_VERSION, "usd": 0.0, "by_endpoint": {}}

    def total(self) -> float:
        return float(self.read().get("usd", 0.0))

    def _locked(self) -> Any:
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def hold() -> Any:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

        return hold()

    def _add(self, data: dict[str, Any], usd: float, endpoint: str) -> None:

        data["usd"] = max(0.0, float(data.get("usd", 0.0)) + usd)
        by = data.setdefault("by_endpoint", {})
        by[endpoint] = max(0.0, float(by.get(endpoint, 0.0)) + usd)
        data["version"] = LEDGER_VERSION
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.path, data)

    def reserve(self, usd: float, cap: float | None, endpoint: str) -> tuple[bool, float]:
        """(reserved, total before): adds ``usd`` unless that would take the total past ``cap``."""
        with self._locked():
            data = self.read()
            before = float(data.get("usd", 0.0))
            if cap is not None and before + usd > cap + 1e-12:
                return False, before
            if usd > 0:
                self._add(data, usd, endpoint)
            return True, before

    def settle(self, delta: float, endpoint: str) -> None:
        """Correct a reservation by ``delta`` (real cost - estimate; usually negative)."""
        if delta == 0:
            return
        with self._locked():
            self._add(self.read(), delta, endpoint)


def monthly_cost(usd_per_request: float, monthly_volume: float) -> dict[str, Any]:
    """Cost a month at ``monthly_volume`` requests, with its arithmetic (as ``tunewise.decision.decide`` writes it)."""
    usd = float(usd_per_request) * float(monthly_volume)
    return {
        "usd": usd,
        "usd_per_request": float(usd_per_request),
        "monthly_volume": float(monthly_volume),
        "arithmetic": f"{monthly_volume:,.0f} requests x ${usd_per_request:.4g} a request (measured) = ${usd:,.2f}",
    }
