"""The check contract: one conformance test over every registered curation check, on real BANKING77
rows with a few injected defects (as test_candidates.py does for candidates).

Each check: declares a settings model (its config section: actions, what the threshold means, its
range and default) that config validation, ``tunewise init``'s comments and the docs' check table
agree with; reports exactly the issue names it declares (each one shows up on the slice, no other
does, and the runner refuses an undeclared one and counts each declared one per action); keeps no
state on ``self`` between ``find`` calls (same findings twice, ``vars(check)`` unchanged).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tunewise.config.checks import NO_THRESHOLD, CheckSettings
from tunewise.config.sections import ConfigError, CurateConfig, config_from_dict
from tunewise.core.records import answer_column, records_from_texts
from tunewise.data.curate import (
    ACTION_NAMES,
    CHECK_ORDER,
    CHECKS,
    CheckContractError,
    CurateContext,
    Engine,
    Finding,
    SkipCheck,
    curate_frame,
    load_checks,
)
from tunewise.data.issues import ISSUE_KINDS
from tunewise.pipeline.precheck import load_config
from tunewise.workflows.init_project import render_config

load_checks()
CLASSES = 6
PER_CLASS = 25

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frame(banking77) -> pd.DataFrame:
    train = pd.read_csv(banking77 / "train.csv")
    classes = sorted(train["category"].unique())[:CLASSES]
    rows = train[train["category"].isin(classes)].groupby("category").head(PER_CLASS).reset_index(drop=True)
    texts, labels = rows["text"].tolist(), rows["category"].tolist()
    texts[0] = texts[1]  # exact duplicate
    texts[2] = texts[3].upper() + "  !!"  # near duplicate
    texts[4] = ""  # empty
    texts[5] = "asdfgh qwerty"  # garbage
    texts[6] = f"{texts[6]} my email is jane.doe@example.com and card 4111 1111 1111 1111"  # PII
    texts[7] = texts[PER_CLASS + 7]  # same text, another label: a conflict
    labels[8] = labels[8].replace("_", " ").title()  # a spelling variant of a label
    texts[9] = "x"  # too short
    texts[10] = "CLICK HERE to win a free iPhone!!! Visit www.prizes.xyz NOW"  # spam
    texts[17:20] = [  # off-topic
        "What will the weather be like in Leeds tomorrow afternoon?",
        "Can you recommend a good recipe for a vegetarian lasagne?",
        "Who scored the winning goal in the football final last night?",
    ]
    texts[14] = "I would like to know why my card payment was declined at the shop this morning. " * 40  # too long
    for row in (15, PER_CLASS + 15, 2 * PER_CLASS + 15):  # wrong labels: another class's name
        labels[row] = classes[(classes.index(labels[row]) + 3) % CLASSES]
    return records_from_texts(texts, labels, source_file="banking77_train.csv")


def _generate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.drop(columns=["label"]).copy()
    out[answer_column("generate")] = [
        f"Thanks for asking about {label.replace('_', ' ')}. Here is how it works." for label in frame["label"]
    ]
    out.loc[3, answer_column("generate")] = ""
    out.loc[11, answer_column("generate")] = "Please contact us at"
    out.loc[1, answer_column("generate")] = "Our branches open at nine on weekdays and at ten on Saturdays."  # conflict
    out.loc[12, answer_column("generate")] = "N/A"  # a stand-in for a reply
    out.loc[13, answer_column("generate")] = "Hi {customer_name}, your card is on its way."  # unfilled slot
    out.loc[[10, 17, 18, 19], answer_column("generate")] = "Thank you for your message."  # one reply, unrelated inputs
    return out


def _setup(name: str, frame: pd.DataFrame, task: str | None = None):
    cls = CHECKS[name]
    task = task or ("classify" if "classify" in cls.tasks else "generate")
    cfg = config_from_dict({"task": task, "data": {"train": "x.csv"}})
    data = frame if task == "classify" else _generate_frame(frame)
    ctx = CurateContext(cfg, Engine())
    if task == "classify":
        ctx.labels_in = pd.Series(data["label"].astype(str).to_numpy(), index=data["id"].astype(str).to_numpy())
    check = cls(getattr(cfg.curate, name), cfg)
    data, _ = check.transform(data.copy(), ctx)
    return check, data, ctx


def test_every_check_in_the_order_is_registered():
    assert set(CHECKS) == set(CHECK_ORDER)


@pytest.mark.parametrize("name", CHECK_ORDER)
def test_check_declares_names_and_a_usable_default(name):
    cls = CHECKS[name]
    assert cls.name == name and cls.issues and cls.actions and cls.tasks
    assert all(isinstance(i, str) and i for i in cls.issues)
    settings = getattr(config_from_dict({"task": "classify", "data": {"train": "x.csv"}}).curate, name)
    assert settings.action is None or settings.action in cls.actions  # the default is one it can take


@pytest.mark.parametrize("name", CHECK_ORDER)
def test_findings_use_declared_issue_names(name, frame):
    check, data, ctx = _setup(name, frame)
    try:
        findings = check.find(data, ctx)
    except SkipCheck:
        pytest.skip(f"{name} skips this data")
    assert {f.issue for f in findings} <= set(check.issues), name
    assert all(0 <= f.index < len(data) for f in findings)


@pytest.mark.parametrize("name", CHECK_ORDER)
def test_find_keeps_no_state_on_self(name, frame):
    check, data, ctx = _setup(name, frame)
    before = copy.deepcopy({k: v for k, v in vars(check).items() if k not in ("settings", "project")})
    try:
        first = check.find(data.copy(), ctx)
    except SkipCheck:
        pytest.skip(f"{name} skips this data")
    after_first = {k: v for k, v in vars(check).items() if k not in ("settings", "project")}
    second = check.find(data.copy(), ctx)
    assert [(f.index, f.issue, f.detail, f.of) for f in first] == [(f.index, f.issue, f.detail, f.of) for f in second]
    changed = sorted(k for k in before.keys() | after_first.keys() if repr(before.get(k)) != repr(after_first.get(k)))
    assert not changed, f"find() changed {changed} on self"


# ---------------------------------------------------------------------------------------------
# The settings model: one place for what each check's settings mean


def _model(name: str) -> type[CheckSettings]:
    return CHECKS[name].settings_model


def _outside(model: type[CheckSettings]) -> float:
    """A value just outside the threshold's range."""
    bounds = {
        k: getattr(m, k)
        for m in model.model_fields["threshold"].metadata
        for k in ("gt", "ge", "lt", "le", "multiple_of")
        if getattr(m, k, None) is not None
    }
    if "gt" in bounds:
        return bounds["gt"]
    if "ge" in bounds:
        return bounds["ge"] - 1
    return bounds["le"] + 0.5


# What the curate section held before the settings models (the generic enabled/action/threshold
# per check). It feeds the stage cache key: the same defaults, types included, keep old runs cached.
OLD_DEFAULTS = {
    "standardise": ("relabel", None),
    "empty_garbage": ("drop", None),
    "too_short": ("drop", 2.0),
    "too_long": ("drop", 512.0),
    "exact_duplicates": ("drop", None),
    "near_duplicates": ("drop", 0.7),
    "semantic_duplicates": ("flag", 0.95),
    "label_conflicts": ("relabel", 0.9),
    "label_errors": ("flag", 0.5),
    "off_topic": ("drop", 0.5),
    "pii": ("redact", None),
    "thin_classes": ("flag", 20.0),
    "generation": ("flag", None),
}


@pytest.mark.parametrize("name", CHECK_ORDER)
def test_check_declares_a_settings_model_the_config_uses(name):
    cls = CHECKS[name]
    model = cls.settings_model
    assert issubclass(model, CheckSettings) and model.check == name
    assert CurateConfig.model_fields[name].annotation is model  # config validation uses it
    assert cls.actions == model.actions
    default = model()
    assert default.action == cls.actions[0]
    assert CurateConfig.model_fields[name].description == model.help_text() and model.help_text()
    threshold = model.model_fields["threshold"]
    if model.uses_threshold():
        # a described threshold: its meaning and range are in the help text, its default is in range
        assert model.threshold_meaning() != NO_THRESHOLD and model.threshold_meaning() in threshold.description
        assert model.threshold_range() in threshold.description and model.threshold_range() != "any number"
        model(threshold=model.default_threshold())
    else:
        assert threshold.description == NO_THRESHOLD


def test_defaults_and_their_types_are_unchanged():
    section = config_from_dict({"data": {"train": "x.csv"}}).section("curate")
    for name, (action, threshold) in OLD_DEFAULTS.items():
        assert section[name] == {"enabled": name != "semantic_duplicates", "action": action, "threshold": threshold}
        assert type(section[name]["threshold"]) is type(threshold)  # 2.0, not 2: the cache key hashes the dump


def test_an_existing_config_with_generic_check_sections_still_loads(tmp_path):
    curate = {
        name: {"enabled": True, "action": action, "threshold": threshold}
        for name, (action, threshold) in OLD_DEFAULTS.items()
    }
    curate["near_duplicates"]["threshold"] = 0.8
    path = tmp_path / "tunewise.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "x.csv"}, "tracking": "off", "curate": curate}))
    cfg = load_config(path, precheck=False)
    assert cfg.curate.near_duplicates.threshold == 0.8 and cfg.curate.pii.action == "redact"


@pytest.mark.parametrize("name", [n for n in CHECK_ORDER if _model(n).uses_threshold()])
def test_an_out_of_range_threshold_names_the_check_the_field_and_the_range(name, tmp_path):
    model = _model(name)
    bad = _outside(model)
    path = tmp_path / "tunewise.yaml"
    path.write_text(f"data:\n  train: x.csv\ncurate:\n  {name}:\n    threshold: {bad}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, precheck=False)
    message = str(err.value)
    assert f"{path}:5: curate.{name}.threshold" in message
    assert f"{name}.threshold must be {model.threshold_range()}: {model.threshold_meaning()}" in message
    assert f"(got {bad})" in message


def test_init_comments_say_what_each_threshold_means():
    rendered = render_config(config_from_dict({"data": {"train": "x.csv"}}))
    lines = rendered.splitlines()
    for name in CHECK_ORDER:
        model = _model(name)
        at = lines.index(f"  {name}:  # {model.help_text()}")
        threshold_line = next(line for line in lines[at + 1 : at + 4] if line.startswith("    threshold:"))
        assert threshold_line.endswith(f"  # {model.model_fields['threshold'].description}")
        action_line = next(line for line in lines[at + 1 : at + 4] if line.startswith("    action:"))
        assert all(action in action_line.split("#", 1)[1] for action in model.actions)


def _docs_table() -> dict[str, list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "user-guide.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|(.*)\|\s*$", text, flags=re.M)
    return {name: [cell.strip() for cell in rest.split("|")] for name, rest in rows if name in CHECKS}


def test_docs_check_table_matches_the_settings():
    table = _docs_table()
    assert set(table) == set(CHECK_ORDER)
    for name, (_finds, action, threshold) in table.items():
        model = _model(name)
        assert action == model.actions[0], name
        if model.uses_threshold():
            assert f"{model.default_threshold():g}" in threshold and model.threshold_range() in threshold, name
        else:
            assert threshold == "", name


# ---------------------------------------------------------------------------------------------
# Issue names: declared, all shown on the slice, enforced and counted by the runner


@pytest.mark.parametrize("name", CHECK_ORDER)
def test_declared_issue_names_are_what_find_reports(name, frame):
    cls = CHECKS[name]
    assert set(cls.issues) <= set(ISSUE_KINDS)
    seen = set()
    for task in cls.tasks:
        check, data, ctx = _setup(name, frame, task)
        try:
            seen |= {f.issue for f in check.find(data, ctx)}
        except SkipCheck:
            continue
    assert seen == set(cls.issues), name


def _fast_config(**curate):
    on = {"too_short", "exact_duplicates", "pii", "thin_classes", "standardise", "empty_garbage"}
    sections = {name: {"enabled": name in on} for name in CHECK_ORDER}
    return config_from_dict({"task": "classify", "data": {"train": "x.csv"}, "curate": {**sections, **curate}})


def test_runner_counts_each_declared_issue_per_action(frame):
    cfg = _fast_config(pii={"action": "flag"})
    result = curate_frame(frame, cfg)
    table = result.issues.frame()
    for name, counts in result.summary["checks"].items():
        check = CHECKS[name]
        outcomes = {"dropped", "flagged"} | {ACTION_NAMES[a] for a in check.actions}
        keys = {f"{action}_{issue}" for issue in check.issues for action in outcomes}
        assert keys <= set(counts), name  # every declared issue, zeros included
        assert sum(counts[k] for k in keys) == counts["found"], name
    assert result.summary["checks"]["exact_duplicates"]["dropped_exact_duplicate"] >= 1
    assert result.summary["checks"]["pii"]["flagged_pii"] >= 1
    assert result.summary["checks"]["standardise"]["relabeled_label_variant"] >= 1
    by_table = table.groupby(["action", "issue"]).size()
    assert result.summary["issue_action_counts"] == {f"{a}_{i}": int(n) for (a, i), n in by_table.items()}
    # the fields outside readers use are still there
    assert {"rows_in", "rows_out", "issue_counts", "action_counts", "checks", "skipped", "examples"} <= set(
        result.summary
    )


def test_runner_refuses_an_issue_name_a_check_does_not_declare(frame, monkeypatch):
    monkeypatch.setattr(CHECKS["too_short"], "find", lambda self, data, ctx: [Finding(0, "garbage", "not mine")])
    with pytest.raises(CheckContractError, match="too_short reported issue.s. garbage it does not declare"):
        curate_frame(frame, _fast_config())
