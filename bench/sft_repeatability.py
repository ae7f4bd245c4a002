"""Does SFT with the same seed give the same weights? Twice in one process, and across processes.

    .venv/bin/python bench/sft_repeatability.py            # run it twice and compare the hashes
    .venv/bin/python bench/sft_repeatability.py --finetune lora --examples 16 --steps 4

Trains the default model on ``--examples`` expert Sokoban examples (the same ones as
``bench/sft_throughput.py``) twice in this process, each time with seed 0 into its own folder,
and prints one JSON line per run: the mode, the train loss and a SHA-256 of the saved weights
(``model.safetensors`` for full fine-tuning, ``adapter_model.safetensors`` for LoRA). Equal
hashes within a process and across two invocations mean the run repeats bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_throughput import expert_examples  # noqa: E402

WEIGHT_FILES = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}


def train_once(finetune: str, examples: list, steps: int, batch_size: int) -> dict:
    """One SFT run with seed 0 in a scratch folder: its train loss and the weights' SHA-256."""
    from leafe.config import SFTConfig
    from leafe.trainers.sft import train_sft

    cfg = SFTConfig(finetune=finetune, batch_size=batch_size, gradient_accumulation_steps=1,
                    epochs=steps * batch_size / len(examples), save_steps=10**6, logging_steps=10**6,
                    objective="reh_only")
    with tempfile.TemporaryDirectory() as scratch:
        result = train_sft(cfg, "smollm2-135m-instruct", examples, Path(scratch), seed=0)
        weights = Path(scratch) / "model" / WEIGHT_FILES[finetune]
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return {"finetune": finetune, "train_loss": result.train_loss, "sha256": digest[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune", choices=("full", "lora", "both"), default="both")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    examples = expert_examples(args.examples)
    modes = ("full", "lora") if args.finetune == "both" else (args.finetune,)
    for mode in modes:
        runs = [train_once(mode, examples, args.steps, args.batch_size) for _ in range(2)]
        for run in runs:
            print(json.dumps(run), flush=True)
        print(json.dumps({"finetune": mode, "same_in_one_process": runs[0]["sha256"] == runs[1]["sha256"]}), flush=True)


if __name__ == "__main__":
    main()
