"""Arms of an A/B or canary split: parsing, resolving against a run's gate, weights and sticky assignment; where to listen."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.core.layout import RunLayout
from tunewise.monitoring.feedback import CANDIDATE, INCUMBENT
from tunewise.serving.base import ServeError, widen_config


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: Any = None, insecure: bool = False) -> str | None:
    """Refuse (ServeError) to listen on a non-loopback ``host`` without an API key, unless
    ``insecure``; returns a warning to print when serving anyway, else None."""
    config = widen_config(config)
    if is_loopback(host):
        return None
    has_key = bool(os.environ.get(config.api_key_env))
    if has_key:
        if not os.environ.get(config.admin_key_env):
            return (
                f"listening on {host}; {config.admin_key_env} is not set, so /admin/arms (promote, rollback) "
                "and forced arms answer loopback clients only"
            )
        return None
    if not insecure:
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who reaches the port could use "
            f"the models and post feedback. Set {config.api_key_env} (and {config.admin_key_env} for "
            "promote/rollback from other hosts), listen on 127.0.0.1, or pass --insecure to serve "
            "without a key anyway"
        )
    return (
        f"listening on {host} WITHOUT an API key (--insecure): anyone who reaches the port can use the models "
        "and post feedback, and the Host header is not checked"
    )


def check_arms(run_dir: str | Path, specs: list[ArmSpec]) -> None:
    """Every arm's candidate exists: trained in ``train/<name>/adapter`` or a registered candidate
    (refitted at start). Raises ServeError naming the arm and the candidate; cheap (no model load)."""
    from tunewise.candidates.registry import CANDIDATES  # on use: loads scipy, sklearn

    run_dir = Path(run_dir)
    for spec in specs:
        trained = (RunLayout(run_dir).adapter(spec.candidate) / "tunewise_train.json").exists()
        if not trained and spec.candidate not in CANDIDATES:
            raise ServeError(
                f"arm {spec.name!r}: candidate {spec.candidate!r} is not trained in {run_dir / 'train'} "
                f"and is not a registered candidate (known: {', '.join(sorted(CANDIDATES))})"
            )
        if not trained and not (RunLayout(run_dir).split("train")).exists():
            raise ServeError(
                f"arm {spec.name!r}: candidate {spec.candidate!r} is refitted on the run's split, and "
                f"{run_dir / 'split' / 'train.parquet'} is not there"
            )


@dataclass(frozen=True)
class ArmSpec:
    name: str
    candidate: str
    weight: float
    max_batch: int | None = None  # None: ServeConfig.max_batch (the bench serves one arm one-at-a-time)


def parse_arms(text: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """``"incumbent=0.9,candidate:encoder_ft=0.1"`` -> {"incumbent": 0.9, "candidate:encoder_ft": 0.1}."""
    if text is None or isinstance(text, Mapping):
        return dict(text) if text is not None else None
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.rpartition("=")
        if not sep or not name:
            raise ServeError(f"--arms: {part!r} is not ARM=WEIGHT (e.g. incumbent=0.9,candidate=0.1)")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise ServeError(f"--arms: weight {weight!r} of {name!r} is not a number") from None
    return out


def _gate_roles(run_dir: Path) -> dict[str, str | None]:
    summary_path = RunLayout(run_dir).summary("evaluate")
    if not summary_path.exists():
        raise ServeError(f"{summary_path} not found: run `tunewise evaluate` before serving")
    gate = json.loads(summary_path.read_text()).get("gate", {})
    candidate = gate.get("candidate")
    decision_path = run_dir / "decide" / "decision.json"
    if decision_path.exists():
        candidate = json.loads(decision_path.read_text()).get("decision", {}).get("recommended") or candidate
    return {INCUMBENT: gate.get("baseline"), CANDIDATE: candidate}


def resolve_arms(run_dir: str | Path, arms: str | Mapping[str, float] | None) -> list[ArmSpec]:
    """Arm specs from ``--arms``: ``incumbent`` and ``candidate`` name the gate's baseline and the
    recommended candidate; any other arm name is a candidate name; ``ARM:CANDIDATE`` names both."""
    run_dir = Path(run_dir)
    weights = parse_arms(arms)
    roles = _gate_roles(run_dir)
    if weights is None:
        if roles[INCUMBENT] and roles[CANDIDATE] and roles[INCUMBENT] != roles[CANDIDATE]:
            weights = {INCUMBENT: 0.9, CANDIDATE: 0.1}
        else:
            weights = {INCUMBENT: 1.0}
    specs = []
    for key, weight in weights.items():
        name, _, candidate = key.partition(":")
        if not candidate:
            candidate = roles.get(name) if name in roles else name
        if not candidate:
            raise ServeError(
                f"arm {name!r}: the evaluation names no {name} (evaluate/summary.json gate); "
                f"give it as {name}:CANDIDATE=WEIGHT"
            )
        if not (weight >= 0 and math.isfinite(weight)):
            raise ServeError(f"arm {name!r}: weight must be a non-negative number, got {weight}")
        specs.append(ArmSpec(name=name, candidate=candidate, weight=float(weight)))
    if len({s.name for s in specs}) != len(specs):
        raise ServeError("arm names must be distinct")
    if not any(s.weight > 0 for s in specs):
        raise ServeError("at least one arm needs a positive weight")
    return specs


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to sum to 1. Each must be a finite number >= 0 and at least one above 0;
    they are divided by the largest first, so huge values (1e308) do not overflow the sum.
    Raises ValueError saying what is wrong."""
    if not weights:
        raise ValueError("no weights given")
    values: dict[str, float] = {}
    for name, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"weight of {name!r} is not a number: {weight!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
        values[name] = value
    largest = max(values.values())
    if largest <= 0:
        raise ValueError("all weights are zero: at least one arm needs a positive weight")
    scaled = {name: value / largest for name, value in values.items()}
    total = math.fsum(scaled.values())
    out = {name: value / total for name, value in scaled.items()}
    if not all(math.isfinite(v) and v >= 0 for v in out.values()) or not math.isclose(math.fsum(out.values()), 1.0):
        raise ValueError(f"weights {dict(weights)} cannot be normalised")
    return out


def _unit_interval(key: str) -> float:
    # sha256, not hash(): Python salts str hashes per process, and replicas must agree.
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_arm(key: str, weights: Mapping[str, float]) -> str:
    """The arm of ``key`` (a user): its point in [0, 1) against the cumulative weights, arms in name
    order. Sticky, the same in every replica, and when one arm's share grows the users who move
    only move towards it (for two arms)."""
    names = sorted(n for n, w in weights.items() if w > 0)
    if not names:
        raise ServeError("no arm has a positive weight")
    total = float(sum(weights[n] for n in names))
    point = _unit_interval(key) * total
    cumulative = 0.0
    for name in names:
        cumulative += weights[name]
        if point < cumulative:
            return name
    return names[-1]
