"""Label checks: suspected label errors (confident learning) and thin classes (+ synthetic rows).

Both checks are for task ``classify`` only.

Config, ``curate.<name>``:

``label_errors`` (actions: ``flag`` default, ``relabel``, ``drop``; ``threshold`` = the lowest
out-of-fold probability the model must give its own suggestion, default 0.5)
    Confident learning (cleanlab) on out-of-fold predicted probabilities:

    1. features: the project encoder's embeddings (``ctx.embed``, MiniLM, 384-d) side by side with
       TF-IDF of word 1-2-grams and character 3-5-grams (the vectorizers learn no labels);
    2. a multinomial LogisticRegression (C = 4) predicts every row's label from a model that never
       saw the row: a seeded 5-fold ``StratifiedKFold``;
    3. the same again, with the rows that pass 1 found most doubtful (cleanlab
       ``find_label_issues(filter_by="low_self_confidence")``) left out of every training fold, so
       wrong labels do not teach the model to expect them (cleanlab's "prune, then retrain");
    4. cleanlab estimates how many labels are wrong from the confident joint of the pass-2
       probabilities (``num_label_issues(estimation_method="off_diagonal_calibrated")``); that many
       rows with the lowest probability of their given label are suspects;
    5. a suspect is reported only when the model's own label differs from the given one and gets
       at least ``threshold`` probability; ``change={"label": <that label>}`` is applied when the
       action is ``relabel``.

    Why these choices, measured with ``bench/bench_label_errors.py`` and the experiments behind it
    (targets: BANKING77 train with 5% of labels flipped to another intent, recall and precision
    >= 0.75; the demo data's ``wrong_label`` rows after the default pipeline, seeds 0-2, recall
    >= 0.80 and precision >= 0.90). With these defaults: BANKING77 recall 0.90, precision 0.90;
    demo recall 0.82-0.89, precision 0.92-0.96.

    - The ranking by probability of the given label is good everywhere (BANKING77: precision
      0.99 at recall 0.80); the filters differ in *where they cut* it. cleanlab's default
      ``prune_by_noise_rate`` keeps rows that sit between two genuinely close intents (BANKING77
      has dozens): precision 0.74 there. ``both`` and ``low_self_confidence`` stop short on the
      demo, whose wrong labels are *plausible* intents, so the model is less sure of the true
      one: recall 0.74-0.75 and 0.68-0.75. The calibrated count lands within 10% of the true
      number of wrong labels on the demo and 25% above it on BANKING77, where the ``threshold``
      gate removes the excess (ambiguous rows, on which the model is unsure of its own
      suggestion too). ``frac_noise``, ``prune_method`` and ``min_examples_per_class`` only tune
      the prune-by filters, which are not used.
    - ``threshold`` 0.5: "the model gives its suggestion at least even odds". At 0.45 demo
      precision falls to 0.89; at 0.55 demo recall falls to 0.77.
    - TF-IDF beside the embeddings: embeddings alone rank BANKING77 as well, but on the demo's
      templated messages one keyword decides the intent and MiniLM blurs it: precision at recall
      0.80 is 0.83-0.89 with embeddings alone, 0.91-1.0 with both. Concatenating the features
      beat averaging two models' probabilities (an average is less confident, so the cut moves).
    - The second pass: recall +5 points on BANKING77 (0.85 -> 0.90), +2 to +4 on two of the three
      demo seeds; a single pass misses a target on three of the four data sets. It doubles the fit.
    - C = 4: at C = 1 out-of-fold accuracy drops (BANKING77 0.900 vs 0.911) and so does recall
      under every cleanlab filter tried; C = 10 fitted 6x slower for no gain. ``tol`` 1e-3
      (sklearn's default is 1e-4) fitted the demo 8x faster and moved out-of-fold accuracy by
      less than 0.3 points.
    - Cost: two 5-fold fits. BANKING77 (10k rows, 77 classes) took 9 minutes, embeddings
      included, on two cores shared with other jobs (load 7); the demo (1.3k rows) well under one.

    Classes with fewer than 2 rows cannot be cross-validated: their rows are neither judged nor
    used to train, and the summary names them (``not_judged``, via ``ctx.note``). Rows whose text
    (up to case and spacing) also appears under another label are left to ``label_conflicts``
    when that check is enabled (it reports them already, and each copy would teach the held-out
    fold the other label); the summary counts them (``left_to_label_conflicts``). The check skips
    with fewer than 2 judged classes or fewer than 30 judged rows.

``thin_classes`` (actions: ``flag`` only; ``threshold`` = minimum rows per class, default 20)
    A balance report (``ctx.note(balance=...)``, merged into the check's summary: rows per class,
    largest and smallest, imbalance ratio, classes under the minimum) and one ``thin_class``
    finding per class under the minimum, on its first row. Why 20: under the default 10%/20%
    validation/test split a class of 20 keeps about 2 rows for validation and 4 for test, the
    fewest that still give a per-class score; below that its metrics are noise, and a fine-tuned
    model sees too few examples to learn it reliably. A class whose every row an earlier check
    dropped (not relabelled) is listed under ``balance.lost`` with the rows it had, and said on
    the console; the off-topic check never drops a class's last rows.

    With ``curate.synthesize: true`` the runner also calls ``synthesize``: paraphrases of real
    rows of each thin class from the project LLM, kept only when a cheap classifier agrees with
    the intended label and they are neither empty, an echo of the prompt, nor a (near) copy of an
    existing row. See ``ThinClasses.synthesize``. With the default SmolLM2-135M, 14-23% of
    candidates pass (demo data, ``warranty_claim`` cut to 8 rows); the rest mostly fail the
    classifier or run past the 40-token cap, and kept rows often read like an agent's reply
    rather than a customer's message, which is why synthesis is off by default.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.checks import LabelErrorsSettings, SemanticDuplicatesSettings, ThinClassesSettings
from tunewise.config.sections import ProjectConfig
from tunewise.core.machine import measuring_cores
from tunewise.core.progress import console, progress, track
from tunewise.core.text import surface_key
from tunewise.data.curate import Check, CurateContext, Finding, SkipCheck, register
from tunewise.models.loading import load_llm

# --- label_errors defaults (see the module docstring for why) ----------------------------------
LR_C = 4.0
LR_TOL = 1e-3
LR_MAX_ITER = 1000
CV_FOLDS = 5
PARALLEL_FOLDS_MIN_ROWS = 2000  # fewer rows: the folds are fitted one by one, in this process
MIN_SUGGESTED_P = LabelErrorsSettings.default_threshold()
MIN_ROWS_TO_JUDGE = 30
MIN_CLASS_ROWS = 2  # a class needs one row to hold out and one to train on
CHAR_NGRAM_FEATURES = 50_000  # the most frequent char n-grams; bounds memory and fit time

# --- thin_classes / synthesize defaults ------------------------------------------------------
MAX_GENERATED = 200  # candidates generated in one run, all classes together
OVERSAMPLE = 3  # candidates per needed row and round: 1 in 4 to 1 in 7 is kept (demo, SmolLM2-135M)
MAX_ROUNDS = 3  # generation rounds for classes still short
GEN_BATCH = 16
MAX_NEW_TOKENS = 40
NEAR_COPY_COSINE = SemanticDuplicatesSettings.default_threshold()  # above it, a reworded copy
PROMPT = "Rewrite this customer message in different words, keep its meaning:\n\n{text}"
# words of the instruction that a weak model tends to repeat instead of paraphrasing
_ECHO_MARKERS = ("rewrite this", "customer message", "keep its meaning", "in different words", "paraphrase", "rephrase")


@dataclass
class Suspect:
    """A row whose given label the out-of-fold model doubts."""

    position: int  # row position among the rows passed in
    given: str
    given_p: float  # out-of-fold probability of the given label
    suggested: str
    suggested_p: float


def text_features(texts: Sequence[str], embeddings: np.ndarray) -> Any:
    """Embeddings beside TF-IDF word 1-2-grams and char 3-5-grams, as one sparse matrix."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    tfidf = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32),
        TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(3, 5),
            sublinear_tf=True,
            min_df=2,
            max_features=CHAR_NGRAM_FEATURES,
            dtype=np.float32,
        ),
    )
    try:
        counts = tfidf.fit_transform(list(texts))
    except ValueError:  # "empty vocabulary": no word or repeated char n-gram (e.g. emoji-only rows)
        return sparse.csr_matrix(embeddings)
    return sparse.hstack([counts, sparse.csr_matrix(embeddings)]).tocsr()


def out_of_fold_probs(
    features: Any, y: np.ndarray, *, seed: int = 0, C: float = LR_C, left_out: np.ndarray | None = None
) -> np.ndarray:
    """Class probabilities for every row from a LogisticRegression that never saw that row.

    ``y`` holds class indices 0..K-1, each with 2+ rows. ``left_out`` (bool per row): rows kept
    out of every training fold (they are still predicted). A class that a training fold lacks
    gets probability 0 from that fold. Hand-rolled rather than ``cross_val_predict`` because of
    ``left_out``. The folds are fitted side by side, one process per core (joblib): a fit on
    sparse features runs on one core (scipy's sparse products are single-threaded), and each
    fold's model is the same whichever process fits it.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    n_classes = int(y.max()) + 1
    probs = np.zeros((len(y), n_classes))
    # classes smaller than the fold count are fine: each held-out row leaves 1+ row of its class
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, len(y)), shuffle=True, random_state=seed)
    with _quiet_small_classes():
        splits = list(folds.split(np.zeros(len(y)), y))
    if left_out is not None:
        splits = [(train[~left_out[train]], test) for train, test in splits]
    # small data: fits take milliseconds, and starting worker processes (each imports scikit-learn)
    # would cost seconds; run them here
    jobs = max(1, min(len(splits), measuring_cores())) if len(y) >= PARALLEL_FOLDS_MIN_ROWS else 1
    fitted = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_fit_fold)(features, y, train, test, C) for train, test in splits
    )
    for test, classes, fold_probs in track(
        fitted, "label errors: cross-validated fits", total=len(splits), unit="folds"
    ):
        probs[np.ix_(test, classes)] = fold_probs
    return probs


def _fit_fold(features: Any, y: np.ndarray, train: np.ndarray, test: np.ndarray, C: float) -> tuple:
    """One fold of :func:`out_of_fold_probs`: the held-out rows, the classes seen, their probabilities."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, tol=LR_TOL, max_iter=LR_MAX_ITER).fit(features[train], y[train])
    return test, model.classes_, model.predict_proba(features[test])


def find_suspects(
    features: Any, labels: Sequence[str], *, seed: int = 0, C: float = LR_C, min_suggested_p: float = MIN_SUGGESTED_P
) -> list[Suspect]:
    """Rows whose label confident learning doubts, most suspicious first (see the module doc).

    ``labels`` must hold 2+ classes, each with 2+ rows.
    """
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues

    classes = np.array(sorted(set(labels)))
    y = np.searchsorted(classes, np.asarray(labels))
    first = out_of_fold_probs(features, y, seed=seed, C=C)
    doubtful = find_label_issues(y, first, filter_by="low_self_confidence")
    probs = out_of_fold_probs(features, y, seed=seed, C=C, left_out=doubtful)
    given_p = probs[np.arange(len(y)), y]
    n_issues = num_label_issues(y, probs, estimation_method="off_diagonal_calibrated")
    suggested = probs.argmax(axis=1)
    out = []
    for i in np.argsort(given_p, kind="stable")[:n_issues]:
        s = suggested[i]
        if s == y[i] or probs[i, s] < min_suggested_p:
            continue  # no other label to offer, or the model is unsure of its own suggestion
        out.append(Suspect(int(i), str(classes[y[i]]), float(given_p[i]), str(classes[s]), float(probs[i, s])))
    return out


@contextmanager
def _quiet_small_classes() -> Iterator[None]:
    """Silence sklearn's "least populated class has only N members": expected, and handled."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        yield


@register
class LabelErrors(Check):
    name = "label_errors"
    issues = ("suspected_label_error",)
    settings_model = LabelErrorsSettings
    tasks = ("classify",)

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        threshold = float(self.threshold)  # in [0, 1]: the settings model checked it
        labels = frame["label"].astype(str)
        usable = np.ones(len(frame), dtype=bool)
        in_conflict = 0
        if self.project.curate.label_conflicts.enabled:
            # the same text under two labels: label_conflicts has reported it already
            same_text = frame["input"].astype(str).map(surface_key)
            conflicted = labels.groupby(same_text).transform("nunique").to_numpy() > 1
            usable &= ~conflicted
            in_conflict = int(conflicted.sum())
        counts = labels[usable].value_counts()
        too_small = counts[counts < MIN_CLASS_ROWS]
        usable &= ~labels.isin(too_small.index).to_numpy()
        judged = np.flatnonzero(usable)
        coverage: dict[str, Any] = {  # which rows were judged, for the summary
            "judged_rows": len(judged),
            "judged_classes": int((counts >= MIN_CLASS_ROWS).sum()),
            "not_judged": {str(k): int(v) for k, v in too_small.items()},
            "left_to_label_conflicts": in_conflict,
        }
        if len(too_small):
            names = ", ".join(repr(c) for c in too_small.index[:10]) + (" ..." if len(too_small) > 10 else "")
            coverage["note"] = (
                f"rows of {len(too_small)} class(es) with fewer than {MIN_CLASS_ROWS} rows not judged: {names}"
            )
        ctx.note(self.name, **coverage)
        if coverage["judged_classes"] < 2:
            raise SkipCheck(
                f"needs at least 2 classes with {MIN_CLASS_ROWS}+ rows, "
                f"found {coverage['judged_classes']}" + (f" ({coverage['note']})" if len(too_small) else "")
            )
        if len(judged) < MIN_ROWS_TO_JUDGE:
            raise SkipCheck(
                f"only {len(judged)} rows to judge (classes with {MIN_CLASS_ROWS}+ rows); "
                f"needs {MIN_ROWS_TO_JUDGE} for out-of-fold predictions"
            )
        texts = frame["input"].astype(str).to_numpy()[judged].tolist()
        features = text_features(texts, ctx.embed(texts))
        suspects = find_suspects(
            features, labels.to_numpy()[judged].tolist(), seed=self.project.seed, min_suggested_p=threshold
        )
        return [
            Finding(
                index=int(judged[s.position]),
                issue="suspected_label_error",
                detail=f"given '{s.given}' (p={s.given_p:.2f}), model says '{s.suggested}' (p={s.suggested_p:.2f})",
                change={"label": s.suggested},
            )
            for s in suspects
        ]


def balance_report(labels: pd.Series, minimum: int) -> dict[str, Any]:
    """Rows per class (largest first), the imbalance ratio and the classes under ``minimum``."""
    counts = labels.astype(str).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")  # ties in name order
    thin = counts[counts < minimum].sort_values(kind="stable")
    return {
        "minimum": minimum,
        "rows": int(counts.sum()),
        "classes": len(counts),
        "counts": {str(k): int(v) for k, v in counts.items()},
        "largest": int(counts.iloc[0]) if len(counts) else 0,
        "smallest": int(counts.iloc[-1]) if len(counts) else 0,
        "imbalance_ratio": round(float(counts.iloc[0] / counts.iloc[-1]), 2) if len(counts) else None,
        "thin": {str(k): int(v) for k, v in thin.items()},
    }


def lost_classes(labels_in: pd.Series | None, frame: pd.DataFrame) -> dict[str, int]:
    """Classes curation received that have no row left, not even relabelled: label -> rows it had."""
    if labels_in is None or not len(labels_in):
        return {}
    gone = sorted(set(labels_in) - set(frame["label"].astype(str)))
    if not gone:
        return {}
    surviving = set(frame["id"].astype(str))
    out = {}
    for label in gone:
        ids = labels_in.index[labels_in.to_numpy() == label]
        if not any(i in surviving for i in ids):  # a relabelled class lives on under its new name
            out[label] = len(ids)
    return out


@register
class ThinClasses(Check):
    name = "thin_classes"
    issues = ("thin_class",)
    settings_model = ThinClassesSettings
    tasks = ("classify",)

    @property
    def minimum(self) -> int:
        return int(self.threshold)  # a whole number >= 1: the settings model checked it

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if not len(frame):
            raise SkipCheck("no rows left to count")
        labels = frame["label"].astype(str)
        balance = balance_report(labels, self.minimum)
        balance["lost"] = lost = lost_classes(ctx.labels_in, frame)
        ctx.note(self.name, balance=balance)
        if lost:
            from rich.markup import escape

            console.print(
                "[yellow]curate: "
                + escape(", ".join(f"class '{label}' lost all its {n} row(s)" for label, n in lost.items()))
                + " to earlier checks (see curate/issues.csv)[/yellow]",
                highlight=False,
            )
        first_row = {label: i for i, label in reversed(list(enumerate(labels)))}
        return [
            Finding(
                index=first_row[label],
                issue="thin_class",
                detail=f"class '{label}' has {count} rows < minimum {self.minimum}",
            )
            for label, count in balance["thin"].items()
        ]

    def synthesize(self, frame: pd.DataFrame, ctx: CurateContext) -> tuple[pd.DataFrame, list[Finding]]:
        """New rows for thin classes: LLM paraphrases of their real rows that pass three gates.

        Returns rows in the frame's columns (``synthetic=True``, ``id`` ``syn-<class>-<n>``,
        ``source_file`` "synthetic", meta columns copied from the row paraphrased) and one
        ``synthetic`` Finding per returned row (``index`` = its position in the returned frame,
        ``of`` = the id of the row it paraphrases), for the runner to record with action
        ``added``. ``ctx.note(.., synthesis=...)`` counts what was generated, kept and rejected
        (by reason), and the acceptance rate.

        A candidate is kept only when (a) a LogisticRegression on the encoder's embeddings of
        the current rows predicts its intended label, (b) it is neither an exact copy (up to
        case and whitespace) nor a near copy (cosine >= 0.95) of an existing row or of an
        earlier kept candidate, and (c) it is a finished, non-empty message of 3+ words that does
        not echo the instruction. Per class it aims for ``minimum - count`` rows, asking for
        ``OVERSAMPLE`` candidates per missing row in each of up to ``MAX_ROUNDS`` rounds, and stops
        after ``MAX_GENERATED`` candidates overall, so a run stays small on a CPU. Sampling is
        seeded (``seed`` + round) without moving the global torch RNG. Does nothing unless
        ``curate.synthesize`` is on.
        """
        added: list[Finding] = []
        labels = frame["label"].astype(str)
        counts = labels.value_counts()
        needed = {str(k): int(self.minimum - v) for k, v in counts.items() if v < self.minimum}
        stats: dict[str, Any] = {"generated": 0, "kept": 0, "rejected": {}, "per_class": {}}
        ctx.note(self.name, synthesis=stats)  # filled in below
        if not needed or not self.project.curate.synthesize:
            return frame.iloc[0:0].copy(), added
        if len(counts) < 2:
            stats["note"] = "needs 2+ classes: the agreement classifier has nothing to tell apart"
            return frame.iloc[0:0].copy(), added

        from sklearn.linear_model import LogisticRegression

        inputs = frame["input"].astype(str).tolist()
        existing = ctx.embed(inputs)
        judge = LogisticRegression(C=LR_C, max_iter=LR_MAX_ITER).fit(existing, labels.to_numpy())
        seen_texts = {surface_key(t) for t in inputs}
        kept_vectors = [existing]
        model, tokenizer = _load_generator(self.project)
        rng = np.random.default_rng(self.project.seed)
        new_rows: list[dict[str, Any]] = []
        kept_per_class = {label: 0 for label in needed}
        ids = set(frame["id"].astype(str))
        budget = MAX_GENERATED
        for round_no in range(MAX_ROUNDS):
            # which real rows to paraphrase this round: cycle through each class's rows
            jobs: list[tuple[str, int]] = []
            for label, want in needed.items():
                short = want - kept_per_class[label]
                sources = np.flatnonzero(labels.to_numpy() == label)
                take = min(short * OVERSAMPLE, budget - len(jobs))
                if short <= 0 or take <= 0:
                    continue
                jobs += [(label, int(i)) for i in rng.permutation(np.resize(sources, take))]
            if not jobs:
                break
            budget -= len(jobs)
            outputs = _paraphrase(
                model, tokenizer, [inputs[i] for _, i in jobs], seed=self.project.seed + round_no, round_no=round_no
            )
            stats["generated"] += len(jobs)
            candidates = [
                (label, i, _clean_generation(text, finished)) for (label, i), (text, finished) in zip(jobs, outputs)
            ]
            vectors = ctx.embed([c or "" for _, _, c in candidates])
            predicted = judge.predict(vectors)
            for (label, i, text), vector, guess in zip(candidates, vectors, predicted):
                reason = _reject_reason(text, inputs[i])
                if reason is None and kept_per_class[label] >= needed[label]:
                    reason = "class already full"
                if reason is None and guess != label:
                    reason = "classifier disagrees"
                if reason is None and surface_key(text) in seen_texts:
                    reason = "exact copy"
                if reason is None and max(float((block @ vector).max()) for block in kept_vectors) >= NEAR_COPY_COSINE:
                    reason = "near copy"
                if reason is not None:
                    stats["rejected"][reason] = stats["rejected"].get(reason, 0) + 1
                    continue
                seen_texts.add(surface_key(text))
                kept_vectors.append(vector[None, :])
                kept_per_class[label] += 1
                new_id = _new_id(label, kept_per_class[label], ids)
                ids.add(new_id)
                source = frame.iloc[i]
                row = {column: source[column] for column in frame.columns}
                row.update(
                    id=new_id,
                    input=text,
                    context="[]",
                    label=label,
                    source_file="synthetic",
                    source_line=None,
                    synthetic=True,
                )
                added.append(
                    Finding(
                        index=len(new_rows),
                        issue="synthetic",
                        detail=f"paraphrase for thin class '{label}' ({counts[label]} rows < minimum {self.minimum})",
                        of=str(source["id"]),
                    )
                )
                new_rows.append(row)
        stats["kept"] = len(new_rows)
        stats["per_class"] = {
            label: {"had": int(counts[label]), "needed": needed[label], "kept": kept_per_class[label]}
            for label in needed
        }
        stats["acceptance_rate"] = round(len(new_rows) / stats["generated"], 3) if stats["generated"] else None
        return pd.DataFrame(new_rows, columns=list(frame.columns)), added


# --- synthesis helpers --------------------------------------------------------------------


def _new_id(label: str, n: int, taken: set[str]) -> str:
    slug = re.sub(r"\s+", "_", label.strip()) or "class"
    candidate = f"syn-{slug}-{n}"
    while candidate in taken:  # a user id that happens to look like ours
        n += 1000
        candidate = f"syn-{slug}-{n}"
    return candidate


def _load_generator(project: ProjectConfig) -> tuple[Any, Any]:

    return load_llm(
        project.models.llm, offline=project.models.offline, trust_remote_code=project.models.trust_remote_code
    )


def _paraphrase(model: Any, tokenizer: Any, texts: list[str], *, seed: int, round_no: int) -> list[tuple[str, bool]]:
    """Sampled paraphrases, one per text: (generated text, whether it ended before the token cap)."""
    import torch

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT.format(text=t)}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    stop_ids = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        stop_ids.add(end_of_turn)
    device = next(model.parameters()).device
    out: list[tuple[str, bool]] = []
    # fork_rng: the seed fixes this sampling without moving the caller's global torch RNG
    with (
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(),
        progress(f"synthesizing (round {round_no + 1})", len(texts), unit="texts") as advance,
    ):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), GEN_BATCH):
            batch = prompts[start : start + GEN_BATCH]
            encoded = tokenizer(
                batch, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
            ).to(device)
            generated = model.generate(
                **encoded,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                max_new_tokens=MAX_NEW_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(stop_ids),
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            for row in new_tokens.tolist():
                finished = any(t in stop_ids for t in row)
                out.append((tokenizer.decode(row, skip_special_tokens=True), finished))
            advance(len(batch))
    return out


_QUOTED = re.compile(r"[\"“]([^\"”]{8,})[\"”]")
_LEAD_IN = re.compile(r"^(sure|here('s| is)|certainly|rewritten|paraphrase|rephrased)\b[^:\n]*:\s*", re.IGNORECASE)


def _clean_generation(text: str, finished: bool) -> str | None:
    """The message inside a generation, or None when it was cut off at the token cap.

    Small models wrap the answer ("Here is the rewritten message: \"...\""); keep only the
    quoted part when there is one, else the first paragraph without a lead-in.
    """
    if not finished:
        return None
    text = text.strip()
    quoted = _QUOTED.search(text)
    if quoted:
        return quoted.group(1).strip()
    text = _LEAD_IN.sub("", text).strip()
    return text.split("\n\n")[0].strip().strip("\"'“”").strip()


def _reject_reason(text: str | None, source: str) -> str | None:
    if text is None:
        return "cut off"
    if len(text.split()) < 3:
        return "empty or too short"
    lowered = text.casefold()
    if any(marker in lowered for marker in _ECHO_MARKERS):
        return "echoes the prompt"
    if surface_key(text) == surface_key(source):
        return "exact copy"
    return None
