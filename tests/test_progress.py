"""Progress in a log file (tunewise.core.progress): when stderr is a file, not a terminal, long work
prints a plain line every TUNEWISE_PROGRESS_INTERVAL seconds with done/total, rate and ETA, and a
final line; TUNEWISE_PROGRESS=off prints nothing. Every case runs a real loop (or real tunewise
work) in a child process whose stderr is a file, with its own environment: the test session
itself runs with TUNEWISE_PROGRESS=off (tests/conftest.py, .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLOCK = r"\d+:\d\d:\d\d"
NUMBER = r"[\d,]+(?:\.\d+)?(?:e[-+]\d+)?"


def _run(
    tmp_path: Path, code: str, *args: str, mode: str | None = "auto", interval: str | None = "0.1", timeout: float = 240
) -> tuple[str, str]:
    """Run ``code`` in a child Python with stderr redirected to a file; (stderr text, stdout text)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWISE_PROGRESS")}
    if mode is not None:
        env["TUNEWISE_PROGRESS"] = mode
    if interval is not None:
        env["TUNEWISE_PROGRESS_INTERVAL"] = interval
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: BLAS threads only contend
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=timeout,
            text=True,
        )
    text = err_path.read_text()
    assert done.returncode == 0, text
    return text, done.stdout


def _periodic(text: str, label: str, unit: str) -> list[re.Match]:
    pattern = re.compile(
        rf"^{re.escape(label)}: (\d[\d,]*)/(\d[\d,]*) \((\d+)%\) ({NUMBER}|-) {unit}/s, "
        rf"elapsed ({CLOCK}), ETA ({CLOCK}|\?)(?: \| (.*))?$"
    )
    return [m for m in map(pattern.match, text.splitlines()) if m]


def _int(s: str) -> int:
    return int(s.replace(",", ""))


LOOP = """
    import time
    from tunewise.core.progress import progress
    with progress("scoring", 40, unit="rows") as advance:
        for i in range(40):
            time.sleep(0.03)
            advance(1)
            if i == 20:
                advance(0, description="second half")
"""


def test_a_log_file_gets_periodic_lines_with_rate_and_eta_and_a_final_line(tmp_path):
    text, stdout = _run(tmp_path, LOOP)
    assert stdout == ""  # progress goes to stderr only: stdout stays clean for --json
    lines = text.splitlines()
    periodic = _periodic(text, "scoring", "rows")
    assert len(periodic) >= 4, text  # 1.2 s of work at a 0.1 s interval (the first line after 0.1 s)
    done = [_int(m.group(1)) for m in periodic]
    assert done == sorted(done) and 0 < done[-1] < 40
    assert all(_int(m.group(2)) == 40 for m in periodic)
    moving = [m for m in periodic if m.group(4) != "-"]
    assert moving and all(float(m.group(4).replace(",", "")) > 0 and m.group(6) != "?" for m in moving)
    # a rate near the true one (about 33 rows/s; generous bounds for a loaded machine)
    assert 5 < float(moving[-1].group(4)) < 60
    # what is being worked on now follows the counts
    assert any(m.group(7) == "second half" for m in periodic)
    final = re.fullmatch(rf"scoring: done 40/40 \(100%\) in ({CLOCK}), mean ({NUMBER}) rows/s", lines[-1])
    assert final, lines[-1]
    assert 5 < float(final.group(2)) < 60
    assert sum("scoring: done" in line for line in lines) == 1


def test_a_line_appears_every_interval_even_while_one_step_is_slow(tmp_path):
    text, _ = _run(
        tmp_path,
        """
        import time
        from tunewise.core.progress import progress
        with progress("train demo", 2, unit="steps") as advance:
            time.sleep(0.8)  # one slow step: no advance() call for 8 intervals
            advance(1)
            time.sleep(0.05)
            advance(1)
    """,
    )
    waiting = [m for m in _periodic(text, "train demo", "steps") if m.group(1) == "0"]
    assert len(waiting) >= 4, text
    assert all(m.group(4) == "-" and m.group(6) == "?" for m in waiting)  # no rate yet: no made-up ETA
    assert text.splitlines()[-1].startswith("train demo: done 2/2 (100%) in ")


def test_off_prints_nothing_and_on_is_not_a_log(tmp_path):
    text, stdout = _run(tmp_path, LOOP, mode="off")
    assert text == "" and stdout == ""
    # an unset interval means 30 s: this 1.2 s loop prints at most its first line (after 1 s)
    # and its final line
    lines = _run(tmp_path, LOOP, interval=None)[0].splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("scoring: done 40/40"), lines
    # on: Rich's bar even into a file (its own format), never the plain lines
    text, _ = _run(tmp_path, LOOP, mode="on")
    assert "40/40" in text and "rows/s" in text and not _periodic(text, "scoring", "rows")


def test_threads_count_exactly_and_a_failure_says_stopped(tmp_path):
    text, _ = _run(
        tmp_path,
        """
        import threading
        from tunewise.core.progress import progress
        with progress("parallel", 4 * 50_000, unit="rows") as advance:
            def work():
                for _ in range(50_000):
                    advance()
            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        try:
            with progress("failing", 10, unit="rows") as advance:
                advance(3)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    """,
    )
    lines = text.splitlines()
    assert any(line.startswith("parallel: done 200,000/200,000 (100%) in ") for line in lines), text
    assert re.fullmatch(
        rf"failing: stopped at 3/10 \(30%\) after {CLOCK}, mean {NUMBER} rows/s \(RuntimeError\)", lines[-1]
    ), lines[-1]


def test_nested_progress_works_as_a_rich_bar_and_as_lines(tmp_path):
    code = """
        import time
        from tunewise.core.progress import progress
        with progress("outer", 2, unit="checks") as outer:
            for k in range(2):
                with progress(f"inner {k}", 5, unit="texts") as inner:
                    for _ in range(5):
                        time.sleep(0.02)
                        inner(1)
                outer(1)
    """
    text, _ = _run(tmp_path, code, mode="on")  # Rich allows one live display: the inner one joins it
    assert "inner 0: done 5/5" in text and "inner 1: done 5/5" in text and "2/2" in text
    text, _ = _run(tmp_path, code)
    assert "inner 0: done 5/5 (100%)" in text and text.splitlines()[-1].startswith("outer: done 2/2 (100%)")


def test_real_learning_curve_and_near_duplicates_log_their_progress(tmp_path, banking77):
    text, stdout = _run(
        tmp_path,
        """
        import functools, sys
        import pandas as pd
        from tunewise.candidates.factory import build_candidate
        from tunewise.decision.curve import learning_curve
        from tunewise.data.neardup import find_near_duplicates

        raw = pd.read_csv(sys.argv[1] + "/train.csv")
        raw = raw[raw["category"].isin(raw["category"].value_counts().index[:6])]  # 6 intents: quick fits
        raw = raw.sample(frac=1.0, random_state=0).reset_index(drop=True)
        frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(raw))], "input": raw["text"], "context": "[]",
                              "label": raw["category"]})
        train, test = frame.iloc[:600].reset_index(drop=True), frame.iloc[600:].reset_index(drop=True)
        learning_curve(train, test.head(100), test, candidates=["tfidf_lr", "majority"],
                       factory=functools.partial(build_candidate, config={}), fractions=[0.25, 0.5, 0.75, 1.0],
                       n_resamples=50)
        texts = pd.read_csv(sys.argv[1] + "/train.csv")["text"].tolist()[:3000]
        find_near_duplicates(texts + [t + " please" for t in texts[:300]], threshold=0.7, progress=True)
        print("ok")
    """,
        str(banking77),
        interval="0.05",
    )
    assert stdout.strip() == "ok"
    lines = text.splitlines()
    fits = _periodic(text, "learning curve", "fits")
    assert fits, text
    assert all(_int(m.group(2)) == 8 for m in fits)
    assert any((m.group(7) or "").startswith("curve tfidf_lr at ") for m in fits)  # names the fit running now
    assert any(
        re.fullmatch(rf"learning curve: done 8/8 \(100%\) in {CLOCK}, mean {NUMBER} fits/s", line) for line in lines
    ), text
    assert any(line.startswith("learning curve: bootstrap: done 100/100 (100%)") for line in lines), text
    for phase, unit in (("minhash", "texts"), ("lsh", "bands"), ("verify", "pairs")):
        assert any(line.startswith(f"near-dup: {phase}: done ") and f" {unit}/s" in line for line in lines), text


@pytest.mark.parametrize("value", ["abc", "-1", "0"])
def test_a_bad_interval_never_breaks_a_run(tmp_path, value):
    text, _ = _run(
        tmp_path,
        """
        from tunewise.core.progress import progress
        with progress("quick", 3) as advance:
            advance(3)
    """,
        interval=value,
    )
    assert text.splitlines()[-1].startswith("quick: done 3/3 (100%)")


def test_a_fine_tuned_classifier_scoring_a_data_set_logs_progress_and_a_serving_batch_does_not(tmp_path, tiny_llm):
    text, stdout = _run(
        tmp_path,
        """
        import sys
        import pandas as pd
        from tunewise.candidates.finetuned import LoraClassifier
        from tunewise.config.sections import TrainConfig

        def frame(n):
            words = ["refund please", "where is my order", "reset my password"]
            return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "input": [f"{words[i % 3]} {i}" for i in range(n)],
                                 "context": "[]", "label": [f"l{i % 3}" for i in range(n)]})

        config = TrainConfig(max_steps=2, batch_size=8, num_threads=1, precision="fp32")
        model = LoraClassifier(llm=sys.argv[1], train_config=config).fit(frame(24))
        print("small batch")
        model.predict(frame(20))
        print("data set")
        model.predict(frame(1200))
        print("ok")
    """,
        tiny_llm,
    )
    assert stdout.split() == ["small", "batch", "data", "set", "ok"]
    scoring = [line for line in text.splitlines() if line.startswith("lora_llm: scoring")]
    assert scoring and scoring[-1].startswith("lora_llm: scoring: done 1,200/1,200 (100%)"), text
    assert all("/1,200 " in line for line in scoring), text  # the 20-row batch printed nothing
