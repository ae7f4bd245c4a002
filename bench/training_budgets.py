"""Training budgets of finished runs side by side: env steps, model tokens, trained tokens, wall.

    .venv/bin/python bench/training_budgets.py leafe=OUT/leafe grpo=OUT/grpo ee-iwm=OUT/ee-iwm

Each ``LABEL=RUN_DIR`` is a run directory of ``leafe run`` (round 1's exploration and SFT are
counted, not its evaluations; steps spent replaying to rollback points are shown apart),
``leafe grpo`` or ``leafe early-experience``. Model tokens are prompt + completion tokens of every
model call made to collect the training data (rollouts, reflections, rationales), as the
exploration budgets count them. Wall time is what the run's own records say: GRPO's rollout +
update seconds; Early Experience's collection plus SFT seconds (a run made before collection
seconds were kept per chunk counts only its last invocation's collection); LEAFE's time from the
start of exploration to the end of SFT, from ``leafe.log`` (a run that was killed and resumed has
the gap between its invocations in it).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_times(run: Path, start: str, end: str) -> float | None:
    """Seconds from the first log line containing ``start`` to the last containing ``end``."""
    first = last = None
    log = run / "leafe.log"
    for line in log.read_text().splitlines() if log.is_file() else []:
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if first is None and start in line:
            first = when
        if first is not None and end in line:
            last = when
    return (last - first).total_seconds() if first and last else None


def leafe_budget(run: Path) -> dict[str, float | None]:
    """Round 1's exploration + SFT of a ``leafe run`` directory."""
    explore = json.loads((run / "round-1" / "explore" / "stage.json").read_text())["result"]
    sft = json.loads((run / "round-1" / "sft" / "stage.json").read_text())["result"]
    return {
        "env_steps": explore["env_steps"],
        "rollback_env_steps": explore.get("rollback_env_steps", 0),
        "model_tokens": explore["model_tokens"],
        "trained_tokens": sft["tokens"],
        "optimizer_steps": sft["steps"],
        "seconds": _log_times(run, "leafe.method.explore: explore", "Merged LoRA adapter")
        or _log_times(run, "leafe.method.explore: explore", "leafe.pipeline: data"),
        "peak_rss_mib": sft.get("peak_rss_mib"),
    }


def grpo_budget(run: Path) -> dict[str, float | None]:
    """Every step of a ``leafe grpo`` run (``metrics.jsonl``)."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "env_steps": sum(s["env_steps"] for s in steps),
        "model_tokens": sum(s["model_tokens"] for s in steps),
        "trained_tokens": sum(s["train_tokens"] for s in steps),
        "optimizer_steps": len(steps),
        "seconds": sum(s["rollout_seconds"] + s["train_seconds"] for s in steps),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in steps),
    }


def early_experience_budget(run: Path) -> dict[str, float | None]:
    """Collection + SFT phases of a ``leafe early-experience`` run (``summary.json``)."""
    summary = json.loads((run / "summary.json").read_text())
    phases = summary["sft"].values()
    collection = summary.get("collection_seconds", summary.get("collection_seconds_this_invocation", 0.0))
    return {
        "env_steps": summary["collection_cost"]["env_steps"],
        "model_tokens": summary["collection_cost"]["model_tokens"],
        "trained_tokens": sum(p["tokens"] for p in phases),
        "optimizer_steps": sum(p["steps"] for p in phases),
        "seconds": collection + sum(p["seconds"] for p in phases),
        "peak_rss_mib": max(p["peak_rss_mib"] for p in phases),
    }


def budget(run: Path) -> dict[str, float | None]:
    """The budget of ``run``, whichever command made it."""
    if (run / "round-1" / "sft" / "stage.json").is_file():
        return leafe_budget(run)
    if (run / "metrics.jsonl").is_file():
        return grpo_budget(run)
    if (run / "summary.json").is_file():
        return early_experience_budget(run)
    raise SystemExit(f"{run}: not a finished leafe run, grpo or early-experience directory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    args = parser.parse_args()
    print("| training | env steps | model tokens | trained tokens | optimizer steps | wall | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: expected LABEL=RUN_DIR")
        b = budget(Path(path))
        steps = f"{b['env_steps']:,}" + (f" (+{b['rollback_env_steps']:,} rollback)" if b.get("rollback_env_steps") else "")
        wall = f"{b['seconds'] / 60:.1f} min" if b["seconds"] else "?"
        rss = f"{b['peak_rss_mib'] / 1024:.1f} GiB" if b["peak_rss_mib"] else "?"
        print(
            f"| {label} | {steps} | {b['model_tokens']:,} | {b['trained_tokens']:,} | "
            f"{b['optimizer_steps']} | {wall} | {rss} |"
        )


if __name__ == "__main__":
    main()
