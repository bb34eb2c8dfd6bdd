"""Time the default LLM's first load (GGUF de-quantisation + safetensors cache build) and its
second load (from the cache), each in a fresh process with an empty temporary TUNEWISE_HOME.

    python bench/bench_model_load.py            # prints key=value lines
    python bench/bench_model_load.py --json     # one JSON object

Each timing covers ``load_llm()`` only; importing torch/transformers is timed apart (import_s)
because every command pays it whether or not a model is loaded. Target: second load under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECOND_LOAD_S = 5.0
SPEC = "embedded:smollm2-135m-instruct"


def _child() -> None:
    """One load in this process; prints a JSON line with the timings."""
    started = time.perf_counter()
    import torch  # noqa: F401  (timed as import_s)
    import transformers  # noqa: F401

    from tunewise.models.loading import load_llm, resolve_llm

    imported = time.perf_counter()
    model, tokenizer = load_llm(SPEC)
    loaded = time.perf_counter()
    cache = resolve_llm(SPEC).path
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "load_s": loaded - imported,
                "cache_mb": sum(f.stat().st_size for f in cache.iterdir()) / 1e6,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def _run_child(home: Path) -> dict:
    env = {
        **os.environ,
        "TUNEWISE_HOME": str(home),
        "TUNEWISE_PROGRESS": "off",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"child load failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child()
        return

    home = Path(tempfile.mkdtemp(prefix="tunewise-bench-home-"))
    try:
        first = _run_child(home)  # empty home: converts the GGUF
        second = _run_child(home)  # the cache is there now
    finally:
        shutil.rmtree(home, ignore_errors=True)

    result = {
        "llm_first_load_s": round(first["load_s"], 2),
        "llm_second_load_s": round(second["load_s"], 2),
        "ratio": round(first["load_s"] / second["load_s"], 1),
        "target_second_load_under_5s": "PASS" if second["load_s"] < TARGET_SECOND_LOAD_S else "FAIL",
        "import_s": round(second["import_s"], 2),
        "cache_mb": round(second["cache_mb"]),
        "parameters": second["parameters"],
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}={value}{'x' if key == 'ratio' else ''}")


if __name__ == "__main__":
    main()
