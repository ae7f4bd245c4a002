"""LEAFE stage 2 trainer: supervised fine-tuning on counterfactual and rehearsal examples.

Objective (``leafe.algos.sft_loss``): L = L_cf + beta * L_reh, each the mean NLL of its target
(reply) tokens in the batch; prompt tokens are masked. ``sft.objective`` selects the ablations:
``cf_only`` (L_cf) and ``reh_only`` (L_reh); their examples of the other kind are not trained on.

Built on transformers' :class:`~transformers.Trainer` (so accelerate gives multi-GPU/DeepSpeed
with ``accelerate launch``, gradient accumulation, bf16, cosine/linear schedules and
checkpoint/resume); only the loss is ours. Full fine-tuning or LoRA (peft). The logits are
computed only at target positions (``logits_to_keep``), which saves most of the LM-head cost
and memory of long agent prompts.

    result = train_sft(cfg.sft, "smollm2-135m-instruct", examples, Path("runs/x/sft"), seed=0)
    result.model_dir   # a Hugging Face folder: full weights, or a LoRA adapter + base reference

Layout of ``out_dir``: ``checkpoints/checkpoint-N`` (Trainer checkpoints, resumed from
automatically), ``model/`` (the final checkpoint plus tokenizer), ``model/leafe_sft.json`` (what
was trained and how fast; its presence marks the stage finished).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from leafe.algos.sft_loss import COUNTERFACTUAL, IGNORE, REHEARSAL, sft_loss, target_positions
from leafe.config import FinetuneSettings, SFTConfig
from leafe.method.distill import KINDS
from leafe.policy.checkpoints import write_training_start
from leafe.policy.memory import peak_rss_mib
from leafe.policy.transformers_backend import resolve_device
from leafe.trainers.common import load_trainable
from leafe.types import SFTExample

logger = logging.getLogger(__name__)

DONE_FILE = "leafe_sft.json"
# Loss term of each example kind: LEAFE's corrections are L_cf; every plain imitation target
# (LEAFE's rehearsal, Early Experience's world-model / imitation / rationale targets) is L_reh.
_KIND_IDS = {
    "counterfactual": COUNTERFACTUAL,
    "rehearsal": REHEARSAL,
    "world_model": REHEARSAL,
    "imitation": REHEARSAL,
    "reflection": REHEARSAL,
}


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example: ``labels`` equals ``input_ids`` on the target reply, ``IGNORE``
    on the prompt. Both ``(seq,)``."""

    input_ids: list[int]
    labels: list[int]
    kind: int


@dataclass(frozen=True)
class SFTResult:
    """What a finished SFT stage produced.

    ``tokens`` counts the non-padding sequence tokens (prompt + target) this invocation trained
    on, ``target_tokens`` those the loss was computed on; ``seconds`` and ``tokens_per_s`` are of
    the same invocation (a resumed run reports its remaining part); ``train_loss`` is the mean
    training loss over the steps.
    """

    model_dir: str
    base_model: str
    finetune: str
    objective: str
    examples: dict[str, int]
    dropped_too_long: int
    steps: int
    tokens: int
    target_tokens: int
    seconds: float
    tokens_per_s: float
    peak_rss_mib: float
    train_loss: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def objective_weights(cfg: SFTConfig) -> tuple[float, float]:
    """(weight of L_cf, weight of L_reh) of ``cfg.objective``."""
    return {"leafe": (1.0, cfg.beta), "cf_only": (1.0, 0.0), "reh_only": (0.0, 1.0)}[cfg.objective]


def encode_example(tokenizer: Any, example: SFTExample) -> EncodedExample:
    """Tokenize prompt and target the way the policy meets them: the prompt as the backends
    encode it (a string with the tokenizer's special tokens; chat messages through the chat
    template with the generation prompt), then the target's tokens (for chat, up to and
    including the template's end-of-turn text)."""
    if isinstance(example.prompt, str):
        prompt_ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        target = example.completion
    else:
        messages = list(example.prompt)
        prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": example.completion}], tokenize=False)
        if not full.startswith(prefix):
            raise ValueError("the chat template renders the assistant turn differently from its generation prompt")
        prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        target = full[len(prefix) :]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError(f"{example.task_id} turn {example.turn}: empty target")
    return EncodedExample(
        input_ids=list(prompt_ids) + list(target_ids),
        labels=[IGNORE] * len(prompt_ids) + list(target_ids),
        kind=_KIND_IDS[example.kind],
    )


class Collator:
    """Right-pads a list of encoded examples into ``input_ids``/``attention_mask``/``labels``
    ``(batch, max_len)`` and ``kind`` ``(batch,)``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in batch)
        pad = lambda values, fill: [list(v) + [fill] * (width - len(v)) for v in values]  # noqa: E731
        return {
            "input_ids": torch.tensor(pad([item["input_ids"] for item in batch], self.pad_token_id)),
            "attention_mask": torch.tensor(pad([[1] * len(item["input_ids"]) for item in batch], 0)),
            "labels": torch.tensor(pad([item["labels"] for item in batch], IGNORE)),
            "kind": torch.tensor([item["kind"] for item in batch]),
        }


class LeafeSFTTrainer(Trainer):
    """A :class:`~transformers.Trainer` whose loss is :func:`leafe.algos.sft_loss.sft_loss`."""

    def __init__(self, *args: Any, cf_weight: float = 1.0, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cf_weight = cf_weight
        self.beta = beta
        self.target_tokens = 0
        self.sequence_tokens = 0
        self._stats: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - Trainer's API
        labels, kinds = inputs["labels"], inputs["kind"]
        rows, positions, targets = target_positions(labels)
        # Logits only where a target is predicted: the union of target positions over the batch.
        keep = torch.unique(positions)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
        logits = outputs.logits[rows, torch.searchsorted(keep, positions)]
        loss, stats = sft_loss(logits, targets, kinds[rows], beta=self.beta, cf_weight=self.cf_weight)
        if model.training:
            self.target_tokens += int(targets.numel())
            self.sequence_tokens += int(inputs["attention_mask"].sum())
            for key, value in stats.items():
                if key.endswith("_nll"):
                    self._stats.setdefault(key, []).append(value)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._stats.items():
            logs[key] = round(sum(values) / len(values), 4)
        self._stats = {}
        super().log(logs, start_time)


def use_bf16(cfg: FinetuneSettings, device: torch.device) -> bool:
    """Whether to train in bf16 mixed precision."""
    if cfg.precision == "bfloat16":
        return True
    if cfg.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was fully written, or None.

    The Trainer writes a checkpoint's ``trainer_state.json`` last, so a folder without a readable
    one was cut by a kill mid-save; such folders are deleted (their step is redone).
    """
    candidates = sorted(
        (path for path in folder.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()),
        key=lambda path: int(path.name.split("-")[-1]),
        reverse=True,
    )
    for path in candidates:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, json.JSONDecodeError):
            logger.warning("sft: removing %s, a checkpoint cut short by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def train_sft(
    cfg: SFTConfig,
    base_model: str,
    examples: Sequence[SFTExample],
    out_dir: Path,
    seed: int = 0,
    device: str = "auto",
    model_field: str = "policy.model",
) -> SFTResult:
    """Fine-tune ``base_model`` on ``examples`` into ``out_dir/model``; resumes from the last
    checkpoint in ``out_dir/checkpoints``; returns at once if ``out_dir/model`` is finished.

    Raises:
        ValueError: no example of a kind the objective trains on, or none fits ``max_seq_length``;
            a ConfigError naming ``model_field`` when ``base_model`` cannot load, or
            ``policy.device`` when torch cannot use ``device``.
    """
    target_device = resolve_device(device)  # a device torch cannot use is an error even when there is nothing to do
    model_dir = out_dir / "model"
    if (model_dir / DONE_FILE).is_file():  # finished (perhaps elsewhere, then copied here)
        recorded = json.loads((model_dir / DONE_FILE).read_text())
        recorded["model_dir"] = str(model_dir / "merged" if Path(recorded["model_dir"]).name == "merged" else model_dir)
        return SFTResult(**recorded)
    cf_weight, beta = objective_weights(cfg)
    term_weight = {COUNTERFACTUAL: cf_weight, REHEARSAL: beta}
    chosen = [example for example in examples if term_weight[_KIND_IDS[example.kind]] > 0]
    if not chosen:
        wanted = sorted(kind for kind, term in _KIND_IDS.items() if term_weight[term] > 0)
        raise ValueError(
            f"sft.objective={cfg.objective!r}: no {' or '.join(wanted)} examples to train on "
            "(exploration found no successful episode of that kind; explore more tasks or a bigger budget)"
        )
    model, tokenizer, base = load_trainable(cfg, base_model, seed, field=model_field)
    encoded = [encode_example(tokenizer, example) for example in chosen]
    fitting = [item for item in encoded if len(item.input_ids) <= cfg.max_seq_length]
    if not fitting:
        raise ValueError(f"sft.max_seq_length={cfg.max_seq_length}: every example is longer; raise it")
    if len(fitting) < len(encoded):
        logger.warning("sft: dropped %d examples longer than max_seq_length=%d", len(encoded) - len(fitting), cfg.max_seq_length)
    dataset = [asdict(item) for item in fitting]

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg, target_device),
        use_cpu=target_device.type == "cpu",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to="none",
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every trained parameter is used (DDP under accelerate/torchrun)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = LeafeSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(pad_id),
        cf_weight=cf_weight,
        beta=beta,
    )
    checkpoint = last_complete_checkpoint(Path(args.output_dir))
    if checkpoint:
        logger.info("sft: resuming from %s", checkpoint)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    # This invocation's tokens (a resumed run counts its own steps), summed over processes.
    tokens = int(trainer.accelerator.reduce(torch.tensor(trainer.sequence_tokens), reduction="sum"))
    target_tokens = int(trainer.accelerator.reduce(torch.tensor(trainer.target_tokens), reduction="sum"))
    counts = {kind: sum(example.kind == kind for example in chosen) for kind in dict.fromkeys([*KINDS, *(e.kind for e in chosen)])}
    result = SFTResult(
        model_dir=str(model_dir / "merged" if cfg.finetune == "lora" and cfg.merge_lora else model_dir),
        base_model=base,
        finetune=cfg.finetune,
        objective=cfg.objective,
        examples=counts,
        dropped_too_long=len(encoded) - len(fitting),
        steps=output.global_step,
        tokens=tokens,
        target_tokens=target_tokens,
        seconds=round(seconds, 1),
        tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        peak_rss_mib=round(peak_rss_mib(), 1),
        train_loss=round(float(output.training_loss), 4),
    )
    if trainer.is_world_process_zero():
        shutil.rmtree(out_dir / "model.partial", ignore_errors=True)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(out_dir / "model.partial"))  # every process takes part; only the main one writes
    if trainer.is_world_process_zero():
        _publish(trainer, tokenizer, cfg, out_dir, result, base_model)
    trainer.accelerator.wait_for_everyone()
    return result


def _publish(trainer: LeafeSFTTrainer, tokenizer: Any, cfg: SFTConfig, out_dir: Path, result: SFTResult, start: str) -> None:
    """Complete the saved ``model.partial`` (tokenizer, merged copy, the model training started
    from, done marker) and rename it to ``model`` in one step, so a kill never leaves a ``model``
    directory that looks finished."""
    model_dir, scratch = out_dir / "model", out_dir / "model.partial"
    tokenizer.save_pretrained(str(scratch))
    write_training_start(scratch, start)  # an adapter's base may be a cached merge: how to rebuild it
    if cfg.finetune == "lora" and cfg.merge_lora:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(scratch / "merged"))
        tokenizer.save_pretrained(str(scratch / "merged"))
    (scratch / DONE_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    scratch.rename(model_dir)
