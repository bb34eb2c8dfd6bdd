from __future__ import annotations

import pytest

from tunewise.config.sections import ConfigError, ProjectConfig, config_from_dict
from tunewise.pipeline.precheck import load_config


def write(tmp_path, text: str):
    p = tmp_path / "tunewise.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    p = write(tmp_path, "task: classify\ndata:\n  train: a.csv\n  slice_colums: [x]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert f"{p}:4" in msg
    assert "unknown key 'slice_colums' under data" in msg
    assert "did you mean 'slice_columns'?" in msg


def test_nested_unknown_key_and_wrong_type_reported_together(tmp_path):
    p = write(tmp_path, "data:\n  train: a.csv\ncurate:\n  pii:\n    actoin: drop\nsplit:\n  seed: abc\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert f"{p}:5: unknown key 'actoin' under curate.pii: did you mean 'action'?" in msg
    assert f"{p}:7: split.seed" in msg and "'abc'" in msg


def test_a_key_given_twice_names_both_lines(tmp_path):
    # YAML loaders keep the last value silently; the same name in two sections is fine
    p = write(
        tmp_path,
        "seed: 1\ndata:\n  train: a.csv\ntrain:\n  lora_r: 8\n  seed: 3\n  lora_r: 16\nsplit:\n  seed: 2\nseed: 4\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).splitlines() == [
        f"{p}:7: train.lora_r is given twice (first at line 5); keep one",
        f"{p}:10: seed is given twice (first at line 1); keep one",
    ]
    p.write_text("seed: 1\ndata:\n  train: a.csv\nsplit:\n  seed: 2\n")
    assert load_config(p).seed == 1


def test_bad_literal_and_missing_required(tmp_path):
    p = write(tmp_path, "task: clasify\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "task" in str(exc.value) and "'clasify'" in str(exc.value)
    assert "missing required key 'data'" in str(exc.value)


def test_threshold_out_of_range_is_config_error():
    with pytest.raises(ConfigError, match="near_duplicates.threshold must be in"):
        config_from_dict({"data": {"train": "a.csv"}, "curate": {"near_duplicates": {"threshold": 1.5}}})


def test_invalid_yaml_and_empty_file(tmp_path):
    p = write(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_valid_config_defaults_and_relative_paths(tmp_path):
    p = write(tmp_path, "data:\n  train: data/a.csv\ntracking: off\n")
    cfg = load_config(p)
    assert isinstance(cfg, ProjectConfig)
    assert cfg.task == "classify" and cfg.models.llm == "embedded:smollm2-135m-instruct"
    assert cfg.resolve(cfg.data.train) == tmp_path / "data" / "a.csv"
    assert cfg.tracking == "off"
    assert cfg.section("split") == {
        "validation_fraction": 0.1,
        "test_fraction": 0.2,
        "seed": 0,
        "leakage_threshold": 0.5,
    }
