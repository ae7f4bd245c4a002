"""SFT throughput and peak memory of the stage-2 trainer on realistic Sokoban examples.

    .venv/bin/python bench/sft_throughput.py                     # full and LoRA, one process each
    .venv/bin/python bench/sft_throughput.py --finetune lora --examples 32

Examples are built without a model: expert demonstrations of train rooms played in the
environment, each turn rendered with the quickstart's prompt format (history window 8, worked
example) into the exact prompt/target pair the data builder makes. Every mode trains the default
model for ``--steps`` optimizer steps in a fresh process (so peak RSS is its own) and reports
sequence tokens/s (prompt + target, no padding), target tokens/s and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.agent import build_prompter, select_tasks  # noqa: E402
from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.envs.base import expert_actions  # noqa: E402
from leafe.method.distill import target_text, turn_prompt  # noqa: E402
from leafe.types import SFTExample, Step  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sokoban_quickstart.yaml"


def expert_examples(count: int) -> list[SFTExample]:
    """``count`` rehearsal-style examples from expert demonstrations (turns in order, rooms in order)."""
    cfg = load_config(CONFIG)
    make_env, source = build_env(cfg.env)
    prompter = build_prompter(cfg, make_env, source)
    examples: list[SFTExample] = []
    for task in select_tasks(source, "train", 200):
        env = make_env()
        initial, info = env.reset(task)
        history: list[Step] = []
        for action in expert_actions(env, task) or []:
            observation, reward, terminated, truncated, step_info = env.step(action)
            completion = f" The box must reach the goal, so I move {action}.\nAction: {action}"
            history.append(Step("", completion, action, observation, reward, terminated, truncated, 0, 0, step_info))
        for turn in range(min(len(history), cfg.rollout.max_steps)):
            prompt = turn_prompt(prompter, info["instruction"], initial, history, turn)
            examples.append(SFTExample("rehearsal", prompt, target_text(prompter, history[turn]), task.task_id, 0, turn))
            if len(examples) == count:
                return examples
    return examples


def run_one(finetune: str, count: int, steps: int, batch_size: int, lora_dropout: float = 0.05) -> dict:
    from leafe.config import SFTConfig
    from leafe.trainers.sft import train_sft

    examples = expert_examples(count)
    epochs = steps * batch_size / len(examples)
    cfg = SFTConfig(finetune=finetune, batch_size=batch_size, gradient_accumulation_steps=1, epochs=epochs,
                    save_steps=10**6, logging_steps=10**6, objective="reh_only", lora_dropout=lora_dropout)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_sft(cfg, "smollm2-135m-instruct", examples, Path(scratch), seed=0)
    mean_length = sum(len(e.prompt) for e in examples) / len(examples)
    return {
        "finetune": finetune,
        "lora_dropout": lora_dropout if finetune == "lora" else None,
        "examples": len(examples),
        "mean_prompt_chars": round(mean_length),
        "steps": result.steps,
        "batch_size": batch_size,
        "seconds": result.seconds,
        "sequence_tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "target_tokens_per_s": round(result.target_tokens / result.seconds, 1),
        "peak_rss_mib": result.peak_rss_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune", choices=("full", "lora", "both"), default="both")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps to time")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="sft.lora_dropout (the config default is 0.05)")
    args = parser.parse_args()
    if args.finetune != "both":
        print(json.dumps(run_one(args.finetune, args.examples, args.steps, args.batch_size, args.lora_dropout)), flush=True)
        return
    rows = []
    for mode in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, __file__, "--finetune", mode, "--examples", str(args.examples), "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--lora-dropout", str(args.lora_dropout)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| finetune | examples | steps x batch | seconds | tokens/s (prompt+target) | target tokens/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['finetune']} | {row['examples']} | {row['steps']} x {row['batch_size']} | {row['seconds']} "
              f"| {row['tokens_per_s']} | {row['target_tokens_per_s']} | {row['peak_rss_mib']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
