"""decide: FINE_TUNE, USE_ALTERNATIVE, NOT_YET or INCONCLUSIVE, with each candidate's cost (tunewise.decision.decide)."""

from __future__ import annotations

from tunewise.core.artifacts import write_json
from tunewise.core.progress import console
from tunewise.pipeline.runner import StageContext, StageError, stage


@stage("decide", sections=("roi",), reads=("evaluate",))
def run(ctx: StageContext) -> dict:
    """Turn the evaluation into a verdict: fine-tune, use an alternative, not yet, or inconclusive."""
    from tunewise.decision.decide import DecisionError, decide  # on use: loads scipy, sklearn

    try:
        result = decide(ctx.run_dir, ctx.config.roi)
    except DecisionError as exc:
        raise StageError(str(exc)) from None
    write_json(ctx.path("decision.json"), result)
    decision, roi = result["decision"], result["roi"]
    colour = {"FINE_TUNE": "green", "USE_ALTERNATIVE": "cyan"}.get(decision["verdict"], "yellow")
    console.print(
        f"decide: [bold {colour}]{decision['verdict']}[/bold {colour}]; recommended: {decision['recommended']}"
    )
    for reason in decision["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    return {
        "verdict": decision["verdict"],
        "recommended": decision["recommended"],
        "one_time_cost_usd": roi.get("one_time_cost_usd"),
        "monthly_benefit_usd": roi.get("monthly_benefit_usd"),
        "payback_months": roi.get("payback_months"),
    }
