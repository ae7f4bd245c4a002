"""Multi-turn GRPO: the outcome-driven baseline of the paper, on the same rollout loop as LEAFE.

One training step:

    tasks_per_step tasks (from a fixed pool, in a seeded order)
    -> group_size episodes each, played by the in-process policy that SHARES the trained weights
    -> reward r = episode reward - invalid_action_penalty * (turns without a valid action)
    -> advantage A = group_advantages(r) (group = one task's episodes)                 (episodes,)
    -> token sequences: an episode's turns are packed into one sequence when every turn's prompt
       extends the previous prompt + reply (the history window covers the episode), else one
       sequence per turn; only the model's reply tokens are targets, everything the prompt or
       the environment wrote is masked (see :func:`episode_sequences`)
    -> updates_per_batch optimiser steps on grpo_loss (micro-batches, gradients accumulated so
       the mean runs over all reply tokens of the batch), then policy.weights_changed()

Weights are synced without restarting anything: the native and transformers engines run the very
modules being trained (peft's LoRA layers included) and only forget their cached keys/values after
an update. With ``policy.backend: vllm`` (GPU) the engine lives beside the trained model and gets
the new weights after every update (a LoRA adapter saved and served under a new id, or full weights
copied in; see :meth:`VLLMPolicy.follow`). Rollouts finish before each update, so no sequence is
in flight while weights change.

Run directory (``output_dir/name``):

    metrics.jsonl        one line per step (reward, success, loss, KL, clipping, speed)
    rollouts.jsonl       every episode with its step and advantage (``leafe view`` shows them by step)
    checkpoints/step-N/  trainable weights, optimiser state, RNG state (written atomically)
    model/               the final Hugging Face checkpoint (LoRA adapter or full weights) and
                         leafe_grpo.json, which marks the run finished

A killed run resumes from its last checkpoint; steps after it are redone, and since rollout seeds
derive from (seed, step, task, sample) and the engine's cache is empty after every update, the
redone steps give the same metrics as an uninterrupted run (on the CPU engines; GPU kernels in
vLLM are not bitwise deterministic, so there the redone steps are statistically equal only).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leafe.algos.grpo_loss import group_advantages, grpo_loss
from leafe.algos.sft_loss import IGNORE, target_positions
from leafe.config import ConfigError, ExperimentConfig
from leafe.method.distill import target_text, turn_prompt
from leafe.policy.checkpoints import write_training_start
from leafe.policy.memory import peak_rss_mib
from leafe.prompting import Prompter
from leafe.rollout import EpisodeJob, derive_seed, run_episodes
from leafe.runs import RunDir, append_jsonl, read_jsonl, write_atomic
from leafe.trainers.common import load_trainable
from leafe.trainers.sft import Collator, EncodedExample, encode_example
from leafe.types import SFTExample, Task, Trajectory

logger = logging.getLogger(__name__)

DONE_FILE = "leafe_grpo.json"
STATE_FILE = "state.json"  # written last into a checkpoint: its presence marks it complete
TIMING_KEYS = ("rollout_seconds", "train_seconds", "episodes_per_s", "train_tokens_per_s", "peak_rss_mib")


def episode_sequences(tokenizer: Any, prompter: Prompter, trajectory: Trajectory) -> list[EncodedExample]:
    """An episode's training sequences: ``labels`` hold the reply tokens of every turn, IGNORE on
    prompt and environment text.

    Turns are packed into one sequence while each turn's prompt text starts with the previous
    prompt + reply (the history window covers the episode): one forward pass then scores every
    turn. The packed text is tokenized once; a token is a target when its characters lie inside a
    reply. (A reply's closing blank line can tokenize differently inside the longer text than as
    the model generated it; the loss scores the tokenization the next prompt uses.) Chat prompts,
    slow tokenizers and turns that do not extend the previous text get a sequence each.
    """
    pieces = [
        (turn_prompt(prompter, trajectory.instruction, trajectory.initial_observation, trajectory.steps, turn), target_text(prompter, step))
        for turn, step in enumerate(trajectory.steps)
    ]
    if not getattr(tokenizer, "is_fast", False) or not all(isinstance(prompt, str) for prompt, _ in pieces):
        return [
            encode_example(tokenizer, SFTExample("rehearsal", prompt, target, trajectory.task.task_id, 0, turn))
            for turn, (prompt, target) in enumerate(pieces)
        ]
    groups: list[tuple[str, list[tuple[int, int]]]] = []  # (text, reply character spans)
    for prompt, target in pieces:
        span = (len(prompt), len(prompt) + len(target))
        if groups and prompt.startswith(groups[-1][0]):
            groups[-1] = (prompt + target, groups[-1][1] + [span])
        else:
            groups.append((prompt + target, [span]))
    return [_encode_spans(tokenizer, text, spans) for text, spans in groups]


def _encode_spans(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> EncodedExample:
    """Tokenize ``text`` (with the special tokens the backends add); targets are the tokens whose
    characters fall inside one of ``spans``."""
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    labels = [
        token if end > start and any(low <= start and end <= high for low, high in spans) else IGNORE
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"])
    ]
    return EncodedExample(input_ids=list(encoding["input_ids"]), labels=labels, kind=0)


def episode_reward(trajectory: Trajectory, invalid_action_penalty: float) -> float:
    """The environment's reward minus the penalty for each turn without a valid action."""
    bad = sum(step.action is None or bool(step.info.get("invalid_action")) for step in trajectory.steps)
    return trajectory.total_reward - invalid_action_penalty * bad


def step_tasks(pool: Sequence[Task], step: int, per_step: int, seed: int) -> list[Task]:
    """The tasks of training step ``step`` (1-based): the pool in a seeded order, reshuffled per pass."""
    chosen = []
    for index in range((step - 1) * per_step, step * per_step):
        epoch, position = divmod(index, len(pool))
        order = list(range(len(pool)))
        random.Random(derive_seed(seed, "grpo-order", epoch)).shuffle(order)
        chosen.append(pool[order[position]])
    return chosen


def reply_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities of the target tokens, ``(n_targets,)`` in :func:`target_positions` order.

    Logits are computed only at target positions (``logits_to_keep``), like the SFT trainer.
    """
    rows, positions, targets = target_positions(batch["labels"])
    keep = torch.unique(positions)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    logits = outputs.logits[rows, torch.searchsorted(keep, positions)].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


@dataclass(frozen=True)
class GRPOResult:
    """What a finished GRPO run produced (also written to ``model/leafe_grpo.json``)."""

    model_dir: str
    base_model: str
    finetune: str
    steps: int
    episodes: int
    env_steps: int
    model_tokens: int
    seconds: float
    episodes_per_s: float
    train_tokens_per_s: float
    peak_rss_mib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GRPOTrainer:
    """Multi-turn GRPO over ``cfg`` (see the module docstring). ``run()`` trains or resumes."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir, make_env: Any, task_source: Any, prompter: Prompter) -> None:
        from leafe.agent import select_tasks

        if cfg.policy.backend == "openai" or cfg.policy.base_url:
            raise ConfigError(
                "policy.backend: GRPO rolls out with the weights it trains and syncs them after every "
                "update; use native, transformers or vllm (or auto without base_url), not an HTTP server"
            )
        self.cfg, self.settings, self.run_dir = cfg, cfg.grpo, run.path
        self.make_env, self.prompter = make_env, prompter
        self.pool = select_tasks(task_source, cfg.grpo.split, cfg.grpo.num_tasks, "grpo.num_tasks")
        self.model, self.tokenizer, self.base = load_trainable(cfg.grpo, cfg.policy.model, cfg.seed)
        from leafe.policy.transformers_backend import resolve_device
        from leafe.trainers.sft import use_bf16

        self.device = resolve_device(cfg.policy.device)
        self.model.to(self.device)
        self.bf16 = use_bf16(cfg.grpo, self.device)  # autocast for the update passes (CUDA)
        self.reference = self._reference_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.grpo.learning_rate, weight_decay=cfg.grpo.weight_decay)
        self.policy = self._policy()
        self.collate = Collator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id)

    def _reference_model(self) -> Any:
        """The KL reference: the adapter switched off (LoRA) or a frozen copy of the start (full)."""
        if self.settings.kl_coef == 0 or self.settings.finetune == "lora":
            return None
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32).eval()
        return reference.requires_grad_(False).to(self.device)

    def _policy(self) -> Any:
        """The rollout engine: an in-process policy over the modules being trained (weights
        shared, never copied), or vLLM beside them (``policy.backend: vllm``, synced per update)."""
        policy_cfg = self.cfg.policy
        if policy_cfg.backend == "vllm":
            from leafe.policy.vllm_backend import VLLMPolicy

            engine = VLLMPolicy(self.base, dtype=policy_cfg.dtype, engine_args=policy_cfg.engine_args, enable_lora=self.settings.finetune == "lora")
            engine.follow(self.model, self.run_dir / "vllm-adapter")
            return engine
        network = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        from leafe.policy.native import SUPPORTED_MODEL_TYPES, NativePolicy

        if policy_cfg.backend != "transformers" and network.config.model_type in SUPPORTED_MODEL_TYPES:
            native = NativePolicy.from_model(
                network,
                self.tokenizer,
                max_batch_size=policy_cfg.max_batch_size,
                prefix_cache_mb=policy_cfg.prefix_cache_mb,
                speculative_tokens=policy_cfg.speculative_tokens,
                packed_linear=policy_cfg.packed_linear,
            )
            if self.settings.finetune == "lora":  # the base weights are frozen: fuse them (adapters stay live)
                native.net.fuse_projections()
            return native
        from leafe.policy.transformers_backend import TransformersPolicy

        return TransformersPolicy.from_model(network, self.tokenizer, max_batch_size=policy_cfg.max_batch_size)

    # ------------------------------------------------------------------ the loop

    def run(self) -> GRPOResult:
        done = self.run_dir / "model" / DONE_FILE
        if done.is_file():
            return GRPOResult(**json.loads(done.read_text()))
        start = self._resume()
        totals = self._totals(start)
        from tqdm import tqdm

        bar = tqdm(range(start + 1, self.settings.steps + 1), initial=start, total=self.settings.steps, desc="grpo steps")
        for step in bar:
            metrics = self.train_step(step)
            append_jsonl(self.run_dir / "metrics.jsonl", metrics)
            for key in ("episodes", "env_steps", "model_tokens", "rollout_seconds", "train_seconds", "train_tokens"):
                totals[key] += metrics[key]
            bar.set_postfix(success=f"{metrics['success_rate']:.2f}", reward=f"{metrics['mean_reward']:.2f}")
            if step % self.settings.save_steps == 0 or step == self.settings.steps:
                self._save_checkpoint(step)
        return self._publish(totals)

    def train_step(self, step: int) -> dict[str, Any]:
        """Roll out one batch of groups, update the weights, return the step's metrics."""
        tasks = step_tasks(self.pool, step, self.settings.tasks_per_step, self.cfg.seed)
        # sample_index = position in the step, unique even if a task appears twice (a pass boundary)
        jobs = [
            EpisodeJob(task=task, sample_index=index, seed=derive_seed(self.cfg.seed, "grpo", step, index))
            for index, task in enumerate(task for task in tasks for _ in range(self.settings.group_size))
        ]
        started = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            finished = run_episodes(
                jobs, self.make_env, self.policy, self.prompter, self._sampling(), self.cfg.rollout.max_steps,
                max_concurrent=self.cfg.rollout.max_concurrent_episodes,
            )
        rollout_seconds = time.perf_counter() - started
        release = getattr(self.policy, "release_memory", None)
        if release is not None:  # the update needs the memory of the engine's key/value slots
            release()
        by_index = {t.sample_index: t for t in finished}
        episodes = [by_index[job.sample_index] for job in jobs]  # job order, not finish order
        rewards = torch.tensor([episode_reward(t, self.settings.invalid_action_penalty) for t in episodes])
        groups = torch.tensor([i // self.settings.group_size for i in range(len(episodes))])
        advantages = group_advantages(rewards, groups, scale_by_std=self.settings.scale_by_std)
        for trajectory, advantage in zip(episodes, advantages.tolist()):
            append_jsonl(self.run_dir / "rollouts.jsonl", {"step": step, "advantage": advantage, **trajectory.to_dict()})

        started = time.perf_counter()
        stats, tokens = self._update(episodes, advantages)
        train_seconds = time.perf_counter() - started
        self.policy.weights_changed()
        return {
            "step": step,
            "episodes": len(episodes),
            "success_rate": round(sum(t.success for t in episodes) / len(episodes), 6),
            "mean_reward": round(float(rewards.mean()), 6),
            "groups_with_signal": int(sum(float(advantages[groups == g].abs().sum()) > 0 for g in range(len(tasks)))),
            **{key: round(value, 6) for key, value in stats.items()},
            "env_steps": sum(len(t.steps) for t in episodes),
            "model_tokens": sum(t.prompt_tokens + t.completion_tokens for t in episodes),  # as budgets count them
            "generated_tokens": sum(t.completion_tokens for t in episodes),
            "train_tokens": tokens,
            "rollout_seconds": round(rollout_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "episodes_per_s": round(len(episodes) / rollout_seconds, 3) if rollout_seconds > 0 else 0.0,
            "train_tokens_per_s": round(tokens / train_seconds, 1) if train_seconds > 0 else 0.0,
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }

    def _sampling(self) -> Any:
        from leafe.policy.base import SamplingParams

        policy = self.cfg.policy
        return SamplingParams(temperature=policy.temperature, top_p=policy.top_p, max_new_tokens=policy.max_new_tokens)

    def _update(self, episodes: Sequence[Trajectory], advantages: torch.Tensor) -> tuple[dict[str, float], int]:
        """``updates_per_batch`` optimiser steps on the batch; (token-weighted stats, tokens seen)."""
        items = [
            (sequence, advantage)
            for trajectory, advantage in zip(episodes, advantages.tolist())
            if advantage != 0.0  # a zero advantage contributes no gradient
            for sequence in episode_sequences(self.tokenizer, self.prompter, trajectory)
        ]
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 1.0, "grad_norm": 0.0}
        targets = sum(sum(label != IGNORE for label in sequence.labels[1:]) for sequence, _ in items)
        if not items or targets == 0:
            return stats, 0
        size = self.settings.micro_batch_size
        micro = [items[i : i + size] for i in range(0, len(items), size)]
        batches = [
            {key: value.to(self.device) for key, value in self.collate([asdict(sequence) for sequence, _ in chunk]).items()}
            for chunk in micro
        ]
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            old = [reply_logprobs(self.model, batch) for batch in batches] if self.settings.updates_per_batch > 1 else None
            reference = [self._reference_logprobs(batch) for batch in batches] if self.settings.kl_coef > 0 else None
        self.model.train()
        tokens = 0
        for _update in range(self.settings.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0}
            for index, (chunk, batch) in enumerate(zip(micro, batches)):
                rows, _positions, _targets = target_positions(batch["labels"])
                per_token = torch.tensor([advantage for _, advantage in chunk], device=self.device)[rows]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logprobs = reply_logprobs(self.model, batch)
                loss, chunk_stats = grpo_loss(
                    logprobs[:, None],
                    (old[index] if old is not None else logprobs.detach())[:, None],
                    per_token,
                    torch.ones_like(logprobs)[:, None],
                    clip_low=self.settings.clip_low,
                    clip_high=self.settings.clip_high,
                    ref_logprobs=reference[index][:, None] if reference is not None else None,
                    kl_coef=self.settings.kl_coef,
                )
                share = logprobs.numel() / targets  # the batch mean is over all reply tokens
                (loss * share).backward()
                totals["loss"] += float(loss.detach()) * share
                for key in ("kl", "clip_fraction", "ratio_mean"):
                    totals[key] += chunk_stats[key] * share
                tokens += int(batch["attention_mask"].sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.settings.max_grad_norm
            )
            self.optimizer.step()
            stats = {**totals, "grad_norm": float(grad_norm)}
        self.model.eval()
        return stats, tokens

    def _reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is not None:
            return reply_logprobs(self.reference, batch)
        with self.model.disable_adapter():
            return reply_logprobs(self.model, batch)

    # ------------------------------------------------------------------ checkpoints

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def _save_checkpoint(self, step: int) -> None:
        from safetensors.torch import save_file

        folder = self.run_dir / "checkpoints"
        scratch, final = folder / f"step-{step}.partial", folder / f"step-{step}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        save_file(self._trainable_state(), str(scratch / "trainable.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
                   scratch / "optimizer.pt")
        (scratch / STATE_FILE).write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)
        for old in self._checkpoints()[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)

    def _checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder cut short by a kill has no state file)."""
        folder = self.run_dir / "checkpoints"
        found = [p for p in folder.glob("step-*") if p.name.split("-")[-1].isdigit() and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def _resume(self) -> int:
        """Load the last complete checkpoint; drop records of the steps after it. Returns its step."""
        checkpoints = self._checkpoints()
        step = 0
        if checkpoints:
            from safetensors.torch import load_file

            latest = checkpoints[-1]
            step = json.loads((latest / STATE_FILE).read_text())["step"]
            state = load_file(str(latest / "trainable.safetensors"))
            missing = set(self._trainable_state()) - set(state)
            if missing:
                raise ConfigError(f"grpo: checkpoint {latest} does not match grpo.finetune/lora settings (missing {sorted(missing)[:3]})")
            self.model.load_state_dict(state, strict=False)
            saved = torch.load(latest / "optimizer.pt", weights_only=False)
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["torch_rng"])
            random.setstate(saved["python_rng"])
            self.policy.weights_changed()
            logger.info("grpo: resuming from %s", latest)
        for name in ("metrics.jsonl", "rollouts.jsonl"):
            path = self.run_dir / name
            if path.exists():
                kept = [record for record in read_jsonl(path) if record["step"] <= step]
                write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
        return step

    def _totals(self, step: int) -> dict[str, float]:
        totals = dict.fromkeys(("episodes", "env_steps", "model_tokens", "rollout_seconds", "train_seconds", "train_tokens"), 0.0)
        path = self.run_dir / "metrics.jsonl"
        for record in read_jsonl(path) if path.exists() else []:
            for key in totals:
                totals[key] += record[key]
        return totals

    def _publish(self, totals: dict[str, float]) -> GRPOResult:
        """Write ``model/`` (adapter or full weights, tokenizer, done marker) in one rename."""
        model_dir, scratch = self.run_dir / "model", self.run_dir / "model.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        self.model.save_pretrained(str(scratch))
        self.tokenizer.save_pretrained(str(scratch))
        write_training_start(scratch, self.cfg.policy.model)  # an adapter's base may be a cached merge
        seconds = totals["rollout_seconds"] + totals["train_seconds"]
        result = GRPOResult(
            model_dir=str(model_dir),
            base_model=self.base,
            finetune=self.settings.finetune,
            steps=self.settings.steps,
            episodes=int(totals["episodes"]),
            env_steps=int(totals["env_steps"]),
            model_tokens=int(totals["model_tokens"]),
            seconds=round(seconds, 1),
            episodes_per_s=round(totals["episodes"] / totals["rollout_seconds"], 3) if totals["rollout_seconds"] else 0.0,
            train_tokens_per_s=round(totals["train_tokens"] / totals["train_seconds"], 1) if totals["train_seconds"] else 0.0,
            peak_rss_mib=round(peak_rss_mib(), 1),
        )
        (scratch / DONE_FILE).write_text(json.dumps(result.to_dict(), indent=2))
        shutil.rmtree(model_dir, ignore_errors=True)
        scratch.rename(model_dir)
        return result


def train_grpo(cfg: ExperimentConfig, fresh: bool = False) -> GRPOResult:
    """``leafe grpo CONFIG``: train (or resume) the GRPO run of ``cfg`` in ``output_dir/name``."""
    from leafe.agent import build_prompter
    from leafe.envs import build_env

    from leafe.policy import check_before_loading

    make_env, task_source = build_env(cfg.env)
    check_before_loading(cfg.policy, cfg.policy.model, "policy.model")  # before the run directory records the config
    run = RunDir.open(cfg, command="grpo", fresh=fresh)
    trainer = GRPOTrainer(cfg, run, make_env, task_source, build_prompter(cfg, make_env, task_source))
    return trainer.run()


def resolve_init(reference: str) -> str:
    """``run.init_from``: a GRPO (or SFT) run directory means its finished ``model/``; anything
    else is a model reference passed through (embedded name, folder, hub id)."""
    path = Path(reference)
    for candidate in (path / "model", path):
        if (candidate / DONE_FILE).is_file() or (candidate / "leafe_sft.json").is_file():
            return str(candidate)
    if (path / "checkpoints").is_dir() and not (path / "model").exists():
        raise ConfigError(f"run.init_from: {reference} is a run that has not finished (no model/ yet); finish it first")
    return reference
