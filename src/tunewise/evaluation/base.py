"""What every evaluation module shares: the task's metric names, the error class, number formatting."""

from __future__ import annotations

import math

from tunewise.core.errors import TunewiseError
from tunewise.core.perturb import PERTURBATIONS

PRIMARY_METRIC = {"classify": "accuracy", "generate": "chrf"}


# Secondary metrics compared against the baseline besides the primary one.
COMPARED_METRICS = {
    "classify": ("accuracy", "macro_f1"),
    "generate": ("chrf", "bleu", "rouge_l", "embedding_similarity"),
}


DEFAULT_BASELINE = {"classify": "zero_shot_llm", "generate": "zero_shot_llm_gen"}


# evaluate.baseline: predictions:FILE names the team's current system's answers on the test file
PREDICTIONS_PREFIX = "predictions:"


INCUMBENT_NAME = "incumbent"


LOWER_IS_BETTER = frozenset({"ece", "unsupported_fact_rate"})


PERTURBATION_KINDS = tuple(PERTURBATIONS)  # typos, casing, punctuation, fillers


COVERAGE_LEVELS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 100% .. 50%


class EvaluationError(TunewiseError, ValueError):
    """Evaluation cannot run as asked; the message names the file or candidate."""

    hint = "check the evaluate section of the config and that `tunewise train` finished for this run"


def pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.1%}"
