"""The report's charts: matplotlib figures as inline SVG (text as paths, ids unique within the page)."""

from __future__ import annotations

import io
import re
from typing import Any

from tunewise.reporting.format import finite_or_none

# Colours per candidate kind, shared by every chart and the page's legend.
KIND_COLOURS = {"baseline": "#8c8c8c", "cheap": "#4c72b0", "finetuned": "#dd8452"}
OTHER_COLOUR = "#55a868"


# ---------------------------------------------------------------------------------------------
# Charts: matplotlib to inline SVG


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


# Text as paths: the page needs no font; a fixed salt keeps the SVG ids the same from run to run.
# Applied with rc_context around the page's charts, so other plots in the process keep their style.
CHART_STYLE = {"svg.fonttype": "path", "svg.hashsalt": "tunewise-report", "font.size": 10}


_chart_count = 0  # charts drawn for the page being built: their id prefixes


def reset_chart_ids() -> None:
    """Start the page's chart ids again at c1 (each page numbers its own charts)."""
    global _chart_count
    _chart_count = 0


def to_svg(fig: Any) -> str:
    """The figure as an <svg> element to inline: no XML header, ids made unique within the page,
    fixed width and height dropped so CSS can shrink it to the screen."""
    global _chart_count
    plt = pyplot()
    buffer = io.StringIO()
    fig.savefig(
        buffer,
        format="svg",
        bbox_inches="tight",
        metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
    )
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    _chart_count += 1
    prefix = f"c{_chart_count}-"
    # Several SVGs share ids (figure_1, glyph paths); an id referenced from another chart would
    # draw the wrong thing, so every id and every reference to one gets this chart's prefix.
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
    match = re.match(r'<svg[^>]*?\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"', text)
    width_px = round(float(match.group(1)) * 4 / 3) if match else 640
    text = re.sub(r'^(<svg[^>]*?)\swidth="[\d.]+pt"\s+height="[\d.]+pt"', r"\1", text, count=1)
    text = text.replace("<svg", f'<svg role="img" style="max-width:{width_px}px"', 1)
    return text


def kind_colour(kind: str | None) -> str:
    return KIND_COLOURS.get(kind or "", OTHER_COLOUR)


def candidates_chart(candidates: list[dict], metric: str, chosen: str | None, baseline: str | None) -> str | None:
    """Horizontal bars of the primary metric with ci95 error bars, one per candidate, coloured by kind."""
    rows = [c for c in candidates if finite_or_none(c.get("metrics", {}).get(metric)) is not None]
    if not rows:
        return None
    plt = pyplot()
    from matplotlib.patches import Patch

    rows = sorted(rows, key=lambda c: c["metrics"][metric])
    values = [c["metrics"][metric] for c in rows]
    lows, highs = [], []
    for c, v in zip(rows, values):
        low, high = (c.get("ci95", {}).get(metric) or [None, None])[:2]
        lows.append(max(0.0, v - low) if finite_or_none(low) is not None else 0.0)
        highs.append(max(0.0, high - v) if finite_or_none(high) is not None else 0.0)
    # Short tick labels keep the chart wide enough to read on a phone; n goes beside the value.
    labels = [c["name"] + (" *" if c["name"] == chosen else "") for c in rows]
    fig, ax = plt.subplots(figsize=(5.2, 0.42 * len(rows) + 1.1))
    ax.barh(
        range(len(rows)),
        values,
        xerr=[lows, highs],
        capsize=3,
        color=[kind_colour(c.get("kind")) for c in rows],
        edgecolor="#333333",
        linewidth=[1.6 if c["name"] in (chosen, baseline) else 0.4 for c in rows],
    )
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel(f"{metric} on the test set, 95% interval" + (f"; * compared with {baseline}" if chosen else ""))
    for i, (c, v) in enumerate(zip(rows, values)):
        ax.text(v, i + 0.32, f" {v:.3g} (n={c.get('n_eval', '?')})", va="center", fontsize=8)
    kinds = list(dict.fromkeys(c.get("kind") or "other" for c in rows))
    ax.legend(handles=[Patch(color=kind_colour(k), label=k) for k in kinds], loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def curves_charts(name: str, curves: dict) -> list[str]:
    """Training loss per step with validation loss, and the monitored validation metric: two
    panels drawn apart so a phone stacks them instead of shrinking both."""
    train = [p for p in curves.get("train", []) if finite_or_none(p.get("loss")) is not None]
    validation = curves.get("validation", []) or []
    if not train and not validation:
        return []
    plt = pyplot()
    monitor = curves.get("monitor")
    metric_names = [monitor] if monitor and monitor != "loss" else []
    metric_names += [k for k in ("accuracy", "macro_f1", "chrf") if k != monitor]
    metric = next((m for m in metric_names if any(finite_or_none(p.get(m)) is not None for p in validation)), None)
    best = finite_or_none(curves.get("best_step"))
    charts = []
    ax = plt.subplots(figsize=(4.2, 2.8))[1]
    if train:
        ax.plot(
            [p["step"] for p in train],
            [p["loss"] for p in train],
            color="#4c72b0",
            linewidth=0.8,
            alpha=0.7,
            label="training loss",
        )
    val_loss = [p for p in validation if finite_or_none(p.get("loss")) is not None]
    if val_loss:
        ax.plot(
            [p["step"] for p in val_loss],
            [p["loss"] for p in val_loss],
            "o-",
            color="#dd8452",
            markersize=3,
            label="validation loss",
        )
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: loss", fontsize=10)
    charts.append(ax)
    if metric:
        points = [p for p in validation if finite_or_none(p.get(metric)) is not None]
        right = plt.subplots(figsize=(4.2, 2.8))[1]
        right.plot([p["step"] for p in points], [p[metric] for p in points], "o-", color="#55a868", markersize=3)
        right.set_ylabel(f"validation {metric}")
        right.set_title(f"{name}: validation {metric}" + (" (monitored)" if metric == monitor else ""), fontsize=10)
        charts.append(right)
    out = []
    for a in charts:
        if best is not None:
            a.axvline(best, color="#999999", linestyle=":", linewidth=1)
        a.set_xlabel("optimiser step")
        a.spines[["top", "right"]].set_visible(False)
        out.append(to_svg(a.figure))
    return out


def payback_chart(roi: dict) -> str | None:
    """Cumulative net money over the months with its interval band, break-even line and horizon."""
    points = [p for p in roi.get("cumulative") or [] if finite_or_none(p.get("net_usd")) is not None]
    if len(points) < 2:
        return None
    plt = pyplot()
    months = [p["month"] for p in points]
    net = [p["net_usd"] for p in points]
    low = [finite_or_none(p.get("low")) if finite_or_none(p.get("low")) is not None else p["net_usd"] for p in points]
    high = [
        finite_or_none(p.get("high")) if finite_or_none(p.get("high")) is not None else p["net_usd"] for p in points
    ]
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    ax.fill_between(months, low, high, color="#dd8452", alpha=0.25, linewidth=0, label="95% interval")
    ax.plot(months, net, "o-", color="#dd8452", markersize=3, label="cumulative net: benefit minus costs")
    ax.axhline(0, color="#333333", linewidth=0.8)
    payback = finite_or_none(roi.get("payback_months"))
    if payback is not None and payback <= months[-1]:
        ax.axvline(payback, color="#55a868", linestyle="--", linewidth=1, label=f"payback {payback:.2g} months")
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("months after go-live")
    ax.set_ylabel("cumulative net")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"-${-v:,.0f}" if v < 0 else f"${v:,.0f}"))
    ax.legend(fontsize=7, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)
