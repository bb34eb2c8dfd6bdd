"""The check contract: one conformance test over every registered curation check, on real BANKING77
rows with a few injected defects (as test_candidates.py does for candidates).

Each check: reports only the issue names it declares, keeps no state on ``self`` between ``find``
calls (same findings twice, ``vars(check)`` unchanged), and has a default action it can take.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from tunewise.config import config_from_dict
from tunewise.curate import CHECK_ORDER, CHECKS, CurateContext, Engine, SkipCheck, _load_checks
from tunewise.records import answer_column, records_from_texts

_load_checks()
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
    return records_from_texts(texts, labels, source_file="banking77_train.csv")


def _generate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.drop(columns=["label"]).copy()
    out[answer_column("generate")] = [f"Thanks for asking about {label.replace('_', ' ')}. Here is how it works." for label in frame["label"]]
    out.loc[3, answer_column("generate")] = ""
    out.loc[11, answer_column("generate")] = "Please contact us at"
    return out


def _setup(name: str, frame: pd.DataFrame):
    cls = CHECKS[name]
    task = "classify" if "classify" in cls.tasks else "generate"
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
