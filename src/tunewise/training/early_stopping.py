"""Early stopping and the overfitting watch (which validation is the best, when to stop), and
``convergence``: whether a cap stopped a run that was still improving (``under_trained``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunewise.training.plan import RunPlan


@dataclass
class WatchDecision:
    improved: bool
    stop: bool
    reason: str | None = None  # "early_stopping" | "overfitting"
    message: str | None = None


@dataclass
class EarlyStopping:
    """Picks the best checkpoint and says when to stop.

    - improvement: the monitored metric beats the best so far by more than ``min_delta``
      (higher is better for accuracy, macro_f1 and chrf; lower for loss);
    - early stopping: ``patience`` validations in a row without improvement;
    - overfitting watch: the metric got worse at each of the last ``overfit_window`` validations
      (each one worse than the one before) while the mean training loss since the previous
      validation fell each time. That is memorising, not a plateau: stop with a warning,
      even with early stopping turned off, and keep the best checkpoint.
    """

    mode: Literal["max", "min"]
    patience: int = 3
    min_delta: float = 0.0
    overfit_window: int = 2
    enabled: bool = True
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, metric, train loss)
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def _better(self, a: float, b: float, delta: float = 0.0) -> bool:
        return a > b + delta if self.mode == "max" else a < b - delta

    def update(self, step: int, metric: float, train_loss: float) -> WatchDecision:
        self.history.append((step, float(metric), float(train_loss)))
        improved = self.best is None or self._better(metric, self.best, self.min_delta)
        if improved:
            self.best, self.best_step, self.since_best = float(metric), step, 0
        else:
            self.since_best += 1
        k = self.overfit_window
        if len(self.history) > k:
            recent = self.history[-(k + 1) :]
            worse = all(self._better(a[1], b[1]) for a, b in zip(recent, recent[1:]))
            falling = all(b[2] < a[2] for a, b in zip(recent, recent[1:]))
            if worse and falling:
                return WatchDecision(
                    improved,
                    True,
                    "overfitting",
                    f"validation got worse {k} times in a row (step {recent[0][0]} to {step}) while the "
                    f"training loss kept falling ({recent[0][2]:.4f} -> {recent[-1][2]:.4f}): the model "
                    f"is memorising the training data. Stopped; the best checkpoint (step "
                    f"{self.best_step}) is kept. Fewer epochs, more data, `augment`, or a lower "
                    f"learning rate may help.",
                )
        if self.enabled and self.since_best >= self.patience:
            return WatchDecision(
                improved,
                True,
                "early_stopping",
                f"no improvement in {self.patience} validations; best at step {self.best_step}",
            )
        return WatchDecision(improved, False)

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "best_step": self.best_step, "since_best": self.since_best}

    def load(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]
        self.best, self.best_step, self.since_best = state["best"], state["best_step"], state["since_best"]


# stop reasons of a run that a limit the user set ended, not its curve. The default budget is not
# one: it is sized to converge, and with min_delta 0 a last validation 0.0006 above the one
# before (noise) would flag a converged run
CAPS = ("max_steps", "epochs", "max_minutes")
CAP_ADVICE = {
    "max_steps": "raise train.max_steps or remove it",
    "epochs": "raise train.epochs or remove it",
    "max_minutes": "raise train.max_minutes or remove it",
    "budget": "set train.epochs above the default budget",
}


def convergence(
    plan: RunPlan, watch: EarlyStopping, stop_reason: str, validation: list[dict[str, Any]], patience: int
) -> dict[str, Any]:
    """Whether a limit stopped training while validation was still improving (``under_trained``).

    Under-trained: a cap the user set (``max_steps``, ``epochs``, ``max_minutes``) ended
    the run while the monitored metric was still improving: the last validation was the best, or
    the best came within the last ``patience`` validations (early stopping had not seen a plateau).
    None when there was no validation to tell. Returns under_trained, its reason and the
    validation curve as [step, metric] pairs.
    """
    curve = [[int(e["step"]), e[plan.monitor]] for e in validation if plan.monitor in e]
    info: dict[str, Any] = {"under_trained": False, "under_trained_reason": None, "validation_curve": curve}
    if stop_reason == "interrupted":
        info["under_trained"] = None
        info["under_trained_reason"] = "interrupted before the end of its plan: resume it to finish"
        return info
    if stop_reason not in CAPS:
        return info
    if not curve or watch.best_step is None:
        info["under_trained"] = None
        info["under_trained_reason"] = f"stopped by {stop_reason} with no validation data: convergence unknown"
        return info
    since_best = sum(1 for step, _ in curve if step > watch.best_step)
    if since_best >= patience:
        return info  # a plateau of `patience` validations before the cap: converged enough
    where = (
        "the last validation"
        if since_best == 0
        else f"{since_best} validation(s) before the last, within patience {patience}"
    )
    limit = {
        "max_steps": f"the step cap train.max_steps = {plan.total_steps}",
        "epochs": f"the epoch cap train.epochs = {plan.epochs}",
        "max_minutes": f"the time cap train.max_minutes = {plan.max_minutes or 0:g}",
        "budget": f"the default budget of {plan.budget_epochs} epochs",
    }[stop_reason]
    info["under_trained"] = True
    info["under_trained_reason"] = (
        f"under-trained: {limit} stopped training at step {curve[-1][0]} while validation {plan.monitor} was still "
        f"improving (best {watch.best:.4g} at step {watch.best_step}, {where}); {CAP_ADVICE[stop_reason]} to "
        "train to convergence"
    )
    return info
