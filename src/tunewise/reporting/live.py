"""The report's "Live traffic" section: the monitor's view of a server's request log
(``tunewise report --live LOG``)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.sections import MonitorConfig
from tunewise.core.artifacts import json_safe
from tunewise.reporting.charts import OTHER_COLOUR, kind_colour, pyplot, to_svg
from tunewise.reporting.errors import ReportError
from tunewise.reporting.format import finite_or_none

# ---------------------------------------------------------------------------------------------
# Live traffic: the monitor's view of a server's request log (``build_report(live=...)``)

LIVE_MAX_HISTORY = 12  # arm-weight changes shown on the page (newest last)


def _mask_url(url: str) -> str:
    """The URL with its password hidden (Store.safe_url's rule), also when SQLAlchemy cannot parse it."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL may still hold a password
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def live_store_url(live: str | Path) -> str:
    """The request log's SQLAlchemy URL: a URL as given, or a SQLite file path as ``sqlite:///<abs path>``.

    A SQLite file must exist: opening a missing one would create an empty log and report nothing.
    """
    text = str(live).strip()
    if not text:
        raise ReportError("--live: give the server's request log (a SQLite .db file or a SQLAlchemy URL)")
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ReportError(
                f"live request log {path}: no such file (the server's log is "
                "runs/<id>/serve/requests.db unless serve.store_url names another)"
            )
        return f"sqlite:///{path.resolve()}"
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(text)
    except Exception:  # noqa: BLE001
        raise ReportError(
            f"live request log {_mask_url(text)}: not a SQLAlchemy URL "
            "(e.g. sqlite:////abs/requests.db or postgresql+psycopg://user@host/db)"
        ) from None
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).is_file()
    ):
        raise ReportError(f"live request log {_mask_url(text)}: no such file {parsed.database}")
    return text


def _monitor_config(config: dict) -> tuple[Any, str | None]:
    """The run's ``monitor:`` settings; the defaults (and a note) when config.json's section does not validate."""
    from pydantic import ValidationError

    try:
        return MonitorConfig.model_validate(config.get("monitor") or {}), None
    except ValidationError as exc:
        return (
            MonitorConfig(),
            f"config.json's monitor section is not valid here ({exc.error_count()} error(s)); default settings used",
        )


def _utc(ts: Any) -> str:
    number = finite_or_none(ts)
    return "n/a" if number is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(number))


def _read_live(
    url: str, run_dir: Path, config: Any, since: str | None, task: str
) -> tuple[dict, list[dict], pd.DataFrame]:
    """The monitor report (no embedding drift), the arm-weight history and (ts, arm, candidate) per request."""
    from sqlalchemy.exc import SQLAlchemyError

    from tunewise.monitoring.monitor import monitor_run, parse_since  # on use: loads scipy
    from tunewise.monitoring.store import Store, StoreError  # on use: loads sqlalchemy

    try:
        parse_since(since if since is not None else config.since)
    except ValueError as exc:
        raise ReportError(f"live window: {exc}") from None
    safe = _mask_url(url)
    try:
        report = monitor_run(url, run_dir, config, since=since, encoder=None, task=task)
        store = Store(url)
        try:
            history = store.arm_history()
            timeline = store.requests_frame(report["window"]["since"])[["ts", "arm", "candidate"]]
        finally:
            store.close()
    except StoreError as exc:  # its message already names the URL without the password
        raise ReportError(f"cannot read the live request log: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:  # a corrupt file, a refused connection, a missing table
        first_line = (str(exc).splitlines() or [""])[0]
        raise ReportError(f"cannot read the live request log {safe}: {type(exc).__name__}: {first_line}") from None
    last = report["window"].get("last")
    if last is not None:  # rows logged after the monitor's read are not in its numbers either
        timeline = timeline[timeline["ts"] <= last]
    return report, history, timeline


def live_metric_chart(rows: list[dict], metric: str, offline_metric: str | None, level: float) -> str | None:
    """Online metric per arm with its interval; the candidate's offline (evaluate) score as a hollow diamond."""
    rows = [r for r in rows if finite_or_none(r.get("online_metric")) is not None]
    if not rows:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(5.2, 0.55 * len(rows) + 1.3))
    for i, r in enumerate(rows):
        value = r["online_metric"]
        low, high = (r.get("online_ci") or [value, value])[:2]
        ax.errorbar(
            [value],
            [i],
            xerr=[[max(0.0, value - low)], [max(0.0, high - value)]],
            fmt="o",
            capsize=4,
            color=r.get("colour") or OTHER_COLOUR,
            markersize=7,
        )
        ax.text(value, i + 0.28, f"{value:.3g} (n={r.get('feedback_n')})", ha="center", fontsize=8)
        if finite_or_none(r.get("offline")) is not None:
            ax.plot([r["offline"]], [i], "D", mfc="none", mec="#222222", markersize=8)
    ax.set_yticks(range(len(rows)), [f"{r['arm']}\n{r.get('candidate') or '?'}" for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.3)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"online {metric.replace('_', ' ')}, {level:.0%} interval")
    handles = [Line2D([], [], marker="o", color="#555555", linestyle="none", label="online")]
    if offline_metric and any(finite_or_none(r.get("offline")) is not None for r in rows):
        handles.append(
            Line2D(
                [],
                [],
                marker="D",
                mfc="none",
                mec="#222222",
                linestyle="none",
                label=f"offline {offline_metric} (evaluate)",
            )
        )
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def live_traffic_chart(timeline: pd.DataFrame, colours: dict[str, str] | None = None) -> str | None:
    """Requests per arm over the window, binned; None when the window has no length to bin."""
    if len(timeline) < 2:
        return None
    ts = timeline["ts"].astype(float).to_numpy()
    start, span = float(ts.min()), float(ts.max() - ts.min())
    if span <= 0:
        return None
    unit, seconds = (
        ("minutes", 60.0) if span <= 3 * 3600 else ("hours", 3600.0) if span <= 4 * 86400 else ("days", 86400.0)
    )
    edges = np.linspace(0, span / seconds, min(30, max(6, int(math.sqrt(len(ts))))) + 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    for arm in sorted(timeline["arm"].astype(str).unique()):
        mine = (timeline.loc[timeline["arm"].astype(str) == arm, "ts"].astype(float).to_numpy() - start) / seconds
        counts, _ = np.histogram(mine, edges)
        ax.stairs(counts, edges, label=arm, linewidth=1.4, color=(colours or {}).get(arm))
    ax.set_xlabel(f"{unit} since {_utc(start)}")
    ax.set_ylabel("requests per bin")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def live_section(
    live: str, run_dir: Path, config: dict, evaluation: dict, task: str, since: str | None = None
) -> tuple[dict, dict]:
    """The "Live traffic" section's content and the full monitor report (report/live.json)."""
    url = live_store_url(live)
    monitor_config, config_note = _monitor_config(config)
    report, history, timeline = _read_live(url, run_dir, monitor_config, since, task)
    weights = report.get("weights") or {}
    offline_by_name = {c.get("name"): c for c in evaluation.get("candidates") or []}
    metric = report.get("online_metric")
    # the offline marker only where it is the same measure: label accuracy online vs test accuracy offline
    offline_metric = "accuracy" if metric == "accuracy" else None
    arms = report.get("arms") or {}
    rows = []
    for arm in sorted(set(arms) | set(weights), key=lambda a: (a != report.get("incumbent"), a)):
        entry = arms.get(arm) or {}
        candidate = (weights.get(arm) or {}).get("candidate")
        if candidate is None and len(timeline):
            served = timeline.loc[timeline["arm"] == arm, "candidate"].dropna()
            candidate = served.mode().iloc[0] if len(served) else None
        offline = offline_by_name.get(candidate) or {}
        verdict = (report.get("verdicts") or {}).get(arm)
        needed = None
        if verdict and verdict.get("verdict") == "keep testing":
            more = (verdict.get("more_needed") or {}).get("candidate")
            needed = {"labelled": more, "requests": verdict.get("requests_needed")}
        rows.append(
            {
                "arm": arm,
                "candidate": candidate,
                "kind": offline.get("kind"),
                "weight": (weights.get(arm) or {}).get("weight"),
                "incumbent": arm == report.get("incumbent"),
                "assigned": entry.get("requests_assigned", 0),
                "answered": entry.get("requests_answered", 0),
                "errors": entry.get("failed", 0),
                "error_rate": entry.get("error_rate"),
                "p50": entry.get("latency_p50_ms"),
                "p99": entry.get("latency_p99_ms"),
                "feedback_n": entry.get("feedback_n", 0),
                "online_metric": entry.get("online_metric"),
                "online_ci": entry.get("online_ci"),
                "offline": (offline.get("metrics") or {}).get(offline_metric) if offline_metric else None,
                "verdict": verdict,
                "needed": needed,
            }
        )
    # one colour per arm in both charts: its candidate's kind colour, unless two arms would share one
    colours = [kind_colour(r["kind"]) if r["kind"] else None for r in rows]
    if None in colours or len(set(colours)) < len(colours):
        colours = [f"C{i % 10}" for i in range(len(rows))]
    for r, colour in zip(rows, colours):
        r["colour"] = colour
    drift_rows = []
    drift = report.get("drift") or {}
    names = {
        "predicted_labels": "predicted labels vs training labels",
        "feedback_labels": "feedback labels vs training labels",
        "reply_length": "reply length vs training replies",
    }
    for key, label in names.items():
        if key in drift:
            entry = drift[key]
            drift_rows.append(
                {
                    "what": label,
                    "psi": entry.get("psi"),
                    "level": entry.get("level"),
                    "n": entry.get("n_recent"),
                    "reason": entry.get("reason"),
                }
            )
    level = monitor_config.confidence_level
    n_requests = report["window"]["requests"]
    section = {
        "present": True,
        "store": _mask_url(url),
        "window": report["window"],
        "since_text": _utc(report["window"].get("since"))
        if report["window"].get("since") is not None
        else "the start of the log",
        "first": _utc(report["window"].get("first")),
        "last": _utc(report["window"].get("last")),
        "requests": n_requests,
        "empty": n_requests == 0,
        "metric": metric,
        "level": level,
        "incumbent": report.get("incumbent"),
        "rows": rows,
        "weights": weights,
        "history": [
            {"when": _utc(h.get("ts")), "weights": h.get("weights") or {}, "reason": h.get("reason")}
            for h in history[-LIVE_MAX_HISTORY:]
        ],
        "history_total": len(history),
        "verdict_note": report.get("verdict_note"),
        "drift_rows": drift_rows,
        "drift_note": drift.get("reason") if drift.get("status") == "not computed" else None,
        "budgets": report.get("budgets") or [],
        "actions": report.get("actions") or [],
        "needs_action": bool(report.get("needs_action")),
        "config_note": config_note,
        "offline_metric": offline_metric,
        "budget_limits": {
            "p50": monitor_config.latency_p50_budget_ms,
            "p99": monitor_config.latency_p99_budget_ms,
            "error_rate": monitor_config.error_rate_budget,
        },
        "metric_chart": None,
        "traffic_chart": None,
    }
    if n_requests:  # an empty log gets words, not empty axes
        section["metric_chart"] = live_metric_chart(rows, metric or "metric", offline_metric, level)
        section["traffic_chart"] = live_traffic_chart(timeline, {r["arm"]: r["colour"] for r in rows})
    full = {
        **report,
        "store": section["store"],
        "arm_history": history,
        "embedding_drift_note": "not computed for the report page (too slow for a page build); "
        "`tunewise monitor` computes it",
    }
    return section, json_safe(full)


def live_summary(section: dict, report: dict) -> dict:
    """summary.json's ``live`` entry: per arm requests, errors, online metric with interval, verdict; actions."""
    arms = {}
    for r in section["rows"]:
        verdict = r.get("verdict") or {}
        arms[r["arm"]] = {
            "candidate": r["candidate"],
            "weight": r["weight"],
            "requests": r["assigned"],
            "answered": r["answered"],
            "errors": r["errors"],
            "error_rate": r["error_rate"],
            "feedback_n": r["feedback_n"],
            "online_metric": r["online_metric"],
            "online_ci": r["online_ci"],
            "offline_metric": r["offline"],
            "verdict": verdict.get("verdict"),
            "reason": verdict.get("reason"),
        }
    return json_safe(
        {
            "store": section["store"],
            "window": report.get("window"),
            "metric": section["metric"],
            "incumbent": section["incumbent"],
            "arms": arms,
            "actions": section["actions"],
            "needs_action": section["needs_action"],
        }
    )
