"""decide: the measured gain priced against its cost: payback, ROI and GO / NO-GO (tunewise.decide)."""

from __future__ import annotations

from ..runner import StageContext, StageError, stage


@stage("decide", sections=("roi",), reads=("evaluate",))
def run(ctx: StageContext) -> dict:
    """Turn the evaluation's gain into cost, benefit, payback and a GO / NO-GO verdict."""
    from ..artifacts import write_json
    from ..decide import DecisionError, decide
    from ..progress import console

    try:
        result = decide(ctx.run_dir, ctx.config.roi)
    except DecisionError as exc:
        raise StageError(str(exc)) from None
    write_json(ctx.path("decision.json"), result)
    decision, roi = result["decision"], result["roi"]
    colour = "green" if decision["verdict"] == "GO" else "yellow"
    console.print(f"decide: [bold {colour}]{decision['verdict']}[/bold {colour}]; recommended: {decision['recommended']}")
    for reason in decision["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    return {"verdict": decision["verdict"], "recommended": decision["recommended"],
            "one_time_cost_usd": roi.get("one_time_cost_usd"), "monthly_benefit_usd": roi.get("monthly_benefit_usd"),
            "payback_months": roi.get("payback_months")}
