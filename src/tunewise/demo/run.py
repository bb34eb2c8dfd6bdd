"""``tunewise demo``: generate the demo support data set and a config that runs on it."""

from __future__ import annotations

from pathlib import Path

from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import write_text
from tunewise.demo.data import DemoFiles, generate_demo
from tunewise.workflows.init_project import render_config

# The prompted LLM scores every label for every row: measured 0.22-0.36 rows/s for SmolLM2-135M
# with 14 intents on 2 busy cores (the sample is scored on the test and the validation split
# both), so 60 test rows cost about 4-6 minutes; the cheap candidates score all 400 test rows.
DEMO_BASELINE = {
    "classify": {"candidates": ["majority", "tfidf_lr", "embed_lr", "zero_shot_llm"], "sample_size": 60},
    # generation on a CPU is the slow part: 20 replies of up to 64 tokens per LLM candidate
    "generate": {
        "candidates": ["nn_reply", "zero_shot_llm_gen", "rag_llm_gen"],
        "sample_size": 20,
        "max_new_tokens": 64,
    },
}


def demo_config(files: DemoFiles, task: str, seed: int) -> ProjectConfig:
    columns = {"id": "id", "input": "text"}
    columns["label" if task == "classify" else "target"] = "intent" if task == "classify" else "reply"
    return ProjectConfig.model_validate(
        {
            "task": task,
            "seed": seed,
            "data": {
                "train": files.data.name,
                "test": files.test.name,
                "format": "csv",
                "record_format": "text_label",
                "columns": columns,
                "slice_columns": ["channel", "customer_tier"],
                "knowledge_base": files.knowledge_base.name,
                "task_description": "customer-support messages to an online store about orders, returns, payments and accounts",
            },
            # the demo's budget is 5 minutes on 2 cores: the prompted-LLM baselines score a paired
            # sample of test rows (the cheap candidates score all of them); few-shot prompting,
            # several times slower on a CPU, is left to real projects
            "baseline": DEMO_BASELINE[task],
            # the fine-tuned candidates with their data-sized defaults; classify candidates score the
            # whole test set, generate candidates the same paired sample as the prompted LLM
            "train": {
                k: v
                for k, v in DEMO_BASELINE[task].items()
                if k == "max_new_tokens" or (k == "sample_size" and task == "generate")
            },
            # a support team's assumptions, stated as such: 20,000 messages a month, and $1.50 saved
            # each time a message is routed (classify) or answered (generate) right instead of wrong
            # (part of an agent's few minutes). Edit them to your numbers: the verdict follows.
            "roi": {"monthly_volume": 20000, "value_per_outcome_usd": 1.5},
        }
    )


def write_demo_project(out_dir: str | Path, task: str = "classify", seed: int = 0) -> tuple[Path, DemoFiles]:
    out_dir = Path(out_dir)
    files = generate_demo(out_dir, task=task, seed=seed)
    cfg = demo_config(files, task, seed)
    cfg_path = out_dir / "tunewise.yaml"
    write_text(cfg_path, render_config(cfg, "tunewise demo project: generated support data with known defects."))
    return cfg_path, files
