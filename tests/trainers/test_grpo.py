"""Multi-turn GRPO: only reply tokens are trained, the update follows the advantage's sign, the
rollout engine serves the updated weights without a restart, and a killed run resumes to the
same metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leafe.algos.sft_loss import IGNORE
from leafe.config import config_from_dict
from leafe.envs import build_env
from leafe.method.distill import target_text
from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.prompting import Prompter
from leafe.runs import RunDir
from leafe.trainers.grpo import TIMING_KEYS, GRPOTrainer, episode_sequences, resolve_init, step_tasks
from leafe.types import Step, Task, Trajectory

REPO = Path(__file__).resolve().parents[2]


def _trajectory(replies, sample_index=0, success=False):
    observations = [f"Room view {i}: wall at row {i}." for i in range(1, len(replies) + 1)]
    steps = tuple(
        Step(
            prompt="", completion=reply, action=reply.rsplit("Action: ", 1)[-1], observation=observation,
            reward=float(success and i == len(replies) - 1), terminated=False, truncated=False,
            prompt_tokens=0, completion_tokens=0,
        )
        for i, (reply, observation) in enumerate(zip(replies, observations))
    )
    task = Task("sokoban/train/0001", "train", {})
    return Trajectory(task, sample_index, 0, "Push the box onto the goal.", "Start view: box at row 2.", steps, success)


REPLIES = [" The box is left of me.\nAction: left", " Now push it.\nAction: up", " Done.\nAction: down"]


def test_an_episode_is_one_sequence_whose_targets_are_exactly_the_replies(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompter = Prompter(history_window=8)
    trajectory = _trajectory(REPLIES)
    (sequence,) = episode_sequences(tokenizer, prompter, trajectory)
    trained = tokenizer.decode([token for token in sequence.labels if token != IGNORE])
    assert trained == "".join(target_text(prompter, step) for step in trajectory.steps)
    assert "Room view" not in trained and "Start view" not in trained and "Observation" not in trained
    assert len(sequence.labels) == len(sequence.input_ids)
    # The targets sit where the model wrote them: each reply follows its own "Thought:".
    text = tokenizer.decode(sequence.input_ids)
    assert text.count("Thought: The box is left of me.\nAction: left\n\nObservation:\nRoom view 1") == 1


def test_a_turn_that_hides_earlier_turns_starts_a_new_sequence(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompter = Prompter(history_window=1)  # turn 3's prompt drops turn 1: it cannot extend the text
    trajectory = _trajectory(REPLIES)
    sequences = episode_sequences(tokenizer, prompter, trajectory)
    assert len(sequences) == 2
    trained = [tokenizer.decode([t for t in sequence.labels if t != IGNORE]) for sequence in sequences]
    targets = [target_text(prompter, step) for step in trajectory.steps]
    assert trained == [targets[0] + targets[1], targets[2]]
    assert "(1 earlier steps not shown)" in tokenizer.decode(sequences[1].input_ids)


def test_step_tasks_cover_the_pool_once_per_pass_in_a_seeded_order():
    pool = [Task(f"t{i}", "train", {}) for i in range(5)]
    first_pass = step_tasks(pool, 1, 3, seed=0) + step_tasks(pool, 2, 3, seed=0)[:2]
    assert sorted(t.task_id for t in first_pass) == [f"t{i}" for i in range(5)]
    assert step_tasks(pool, 2, 3, seed=0) == step_tasks(pool, 2, 3, seed=0)
    assert step_tasks(pool, 1, 5, seed=0) != step_tasks(pool, 1, 5, seed=1)


def _trainer(tiny_model_dir, tmp_path, **grpo):
    cfg = config_from_dict({
        "policy": {"model": str(tiny_model_dir), "max_batch_size": 4, "max_new_tokens": 8},
        "rollout": {"history_window": 8, "max_steps": 2},
        "grpo": {"finetune": "full", "learning_rate": 1e-3, "num_tasks": 2, **grpo},
    })
    make_env, tasks = build_env(cfg.env)
    return GRPOTrainer(cfg, RunDir(path=tmp_path, resumed=False), make_env, tasks, Prompter(history_window=8))


def _reply_logprob(trainer, trajectory):
    from leafe.trainers.grpo import reply_logprobs

    (sequence,) = episode_sequences(trainer.tokenizer, trainer.prompter, trajectory)
    with torch.no_grad():
        return float(reply_logprobs(trainer.model, trainer.collate([vars(sequence)])).sum())


def test_the_update_follows_the_sign_of_the_advantage(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    good, bad = _trajectory(REPLIES, 0, success=True), _trajectory([" Hmm.\nAction: right"] * 3, 1)
    before = _reply_logprob(trainer, good), _reply_logprob(trainer, bad)
    stats, tokens = trainer._update([good, bad], torch.tensor([1.0, -1.0]))
    after = _reply_logprob(trainer, good), _reply_logprob(trainer, bad)
    assert after[0] > before[0] and after[1] < before[1]
    assert tokens > 0 and stats["grad_norm"] > 0 and stats["ratio_mean"] == pytest.approx(1.0)


def test_zero_advantages_leave_the_weights_alone(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    stats, tokens = trainer._update([_trajectory(REPLIES), _trajectory(REPLIES, 1)], torch.zeros(2))
    assert tokens == 0 and stats["loss"] == 0.0
    assert all(torch.equal(weights[name], p) for name, p in trainer.model.named_parameters())


def test_the_rollout_engine_serves_the_updated_weights_without_a_restart(tiny_model_dir, tmp_path):
    from leafe.policy.native import NativePolicy

    trainer = _trainer(tiny_model_dir, tmp_path, learning_rate=5e-2)
    requests = [GenerationRequest(prompt=f"Observation:\nRoom {i}\nThought:", seed=i) for i in range(3)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    trainer.policy.generate(requests, greedy)  # warm the engine's prefix cache with the old weights
    trainer._update([_trajectory(REPLIES, 0, success=True), _trajectory(REPLIES[:1], 1)], torch.tensor([1.0, -1.0]))
    trainer.policy.weights_changed()
    trainer.policy.release_memory()  # as a training step does: the slots are allocated again on demand
    assert trainer.policy.slots.keys == []
    trainer.model.save_pretrained(tmp_path / "updated")
    trainer.tokenizer.save_pretrained(tmp_path / "updated")
    fresh = NativePolicy(str(tmp_path / "updated"), max_batch_size=4)
    served = [g.text for g in trainer.policy.generate(requests, greedy)]
    assert served == [g.text for g in fresh.generate(requests, greedy)]


def _native_last_logits(net, tokens):
    """The engine's logits ``(vocab,)`` after one prompt-only pass of ``tokens`` into a fresh slot."""
    shape = (1, net.kv_heads, 64, net.head_dim)
    keys, values = [torch.zeros(shape) for _ in net.layers], [torch.zeros(shape) for _ in net.layers]
    net.rope_table(64)
    empty = torch.empty(0, dtype=torch.long)
    with torch.inference_mode():
        return net.logits(net.forward(keys, values, empty, empty, [(0, 0, tokens)]))[-1]


def test_a_lora_run_serves_its_live_adapters_on_fused_base_weights(tiny_model_dir, tmp_path):
    """GRPO with LoRA rolls out on the engine's fused projections (the frozen base weights) and
    adds the adapters as they are after each update: its logits are the peft model's."""
    trainer = _trainer(tiny_model_dir, tmp_path, finetune="lora", learning_rate=5e-2)
    net = trainer.policy.net
    assert net._qkv and net._qkv_wrapped[0] is not None
    trainer._update([_trajectory(REPLIES, 0, success=True), _trajectory(REPLIES[:1], 1)], torch.tensor([1.0, -1.0]))
    trainer.model.eval()
    assert any(p.abs().sum() > 0 for name, p in trainer.model.named_parameters() if "lora_B" in name)
    tokens = trainer.tokenizer("Observation:\nRoom 0\nThought:")["input_ids"]
    with torch.inference_mode():
        expected = trainer.model(torch.tensor([tokens])).logits[0, -1]
    served = _native_last_logits(net, tokens)
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)


def test_resolve_init_finds_a_finished_run_model(tmp_path):
    (tmp_path / "grpo-run" / "model").mkdir(parents=True)
    assert resolve_init(str(tmp_path / "grpo-run")) == str(tmp_path / "grpo-run")  # not finished, no checkpoints
    (tmp_path / "grpo-run" / "model" / "leafe_grpo.json").write_text("{}")
    assert resolve_init(str(tmp_path / "grpo-run")) == str(tmp_path / "grpo-run" / "model")
    assert resolve_init("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_grpo_refuses_a_backend_that_cannot_share_the_trained_weights(tmp_path):
    from leafe.cli import main

    config = REPO / "configs" / "sokoban_quickstart.yaml"
    code = main(["grpo", str(config), f"output_dir={tmp_path}", "policy.backend=openai", "policy.base_url=http://127.0.0.1:9"])
    assert code == 2


def test_grpo_on_vllm_without_vllm_says_how_to_install_it(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed; tests/policy/test_vllm_backend.py covers GRPO on it")
    from leafe.cli import main

    config = REPO / "configs" / "sokoban_quickstart.yaml"
    assert main(["grpo", str(config), f"output_dir={tmp_path}", "policy.backend=vllm", "grpo.num_tasks=2"]) == 2
    assert "policy.backend: vllm is not importable here" in capsys.readouterr().err


def _grpo_command(out: Path, name: str) -> list[str]:
    # Rooms of 1-2 moves, temperature 1 and a penalty for turns without a valid action: the groups'
    # rewards differ, so every step updates the embedded model. Whether a step's groups differ depends
    # on the draws; with groups of 2, seeds 1 and 2 each give both steps a group with signal (measured),
    # and the test checks that before relying on it. Two steps are enough:
    # the run is killed while updating step 2, so the resumed step 2 samples from step 1's restored
    # weights and updates with its restored optimiser moments.
    return [
        sys.executable, "-m", "leafe.cli", "grpo", str(REPO / "configs" / "sokoban_quickstart.yaml"), f"name={name}",
        f"output_dir={out}", "seed=1", "env.max_solution_length=2", "rollout.max_steps=2", "policy.max_new_tokens=24",
        "policy.temperature=1.0", "grpo.steps=2", "grpo.tasks_per_step=2", "grpo.group_size=2", "grpo.num_tasks=4",
        "grpo.save_steps=1", "grpo.learning_rate=1e-4", "grpo.invalid_action_penalty=0.5", "grpo.lora_r=4",
    ]


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


@pytest.mark.slow
@pytest.mark.minutes(4)
def test_a_grpo_run_killed_mid_update_resumes_to_the_same_metrics(tmp_path):
    straight = subprocess.run(_grpo_command(tmp_path, "straight"), capture_output=True, text=True, timeout=1800)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _metrics(tmp_path / "straight")
    assert [m["step"] for m in expected] == [1, 2]
    # Every step updates the weights, so the resumed step 2 depends on the restored weights (its
    # metrics) and optimiser state (the final adapter); either lost would show below.
    assert all(m["groups_with_signal"] > 0 and m["grad_norm"] > 0 for m in expected), expected

    run = tmp_path / "killed"
    first = subprocess.Popen(_grpo_command(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "step-1" / "state.json"
    rollouts = run / "rollouts.jsonl"

    def updating_step_2() -> bool:  # step 2's episodes are written just before its update
        return rollouts.exists() and '"step": 2' in rollouts.read_text()

    deadline = time.time() + 1200
    while not updating_step_2() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert checkpoint.exists() and not (run / "checkpoints" / "step-2").exists() and not (run / "model").exists()
    second = subprocess.run(_grpo_command(tmp_path, "killed"), capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in (run / "leafe.log").read_text()
    assert _metrics(run) == expected
    from safetensors.torch import load_file

    resumed, uninterrupted = (load_file(str(r / "model" / "adapter_model.safetensors")) for r in (run, tmp_path / "straight"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)
    assert json.loads((run / "model" / "leafe_grpo.json").read_text())["steps"] == 2
    assert (run / "model" / "adapter_model.safetensors").is_file()


def test_a_task_drawn_twice_in_one_step_keeps_every_episode(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, tasks_per_step=3, group_size=2)  # a pool of 2 tasks
    assert len({t.task_id for t in step_tasks(trainer.pool, 1, 3, seed=0)}) == 2
    metrics = trainer.train_step(1)
    records = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert metrics["episodes"] == 6 and sorted(r["sample_index"] for r in records) == list(range(6))
    assert len({r["seed"] for r in records}) == 6
    from leafe.viewer import rollouts_payload, write_view

    groups = rollouts_payload(records)  # what `leafe view` shows of a GRPO run: one group per step and task
    assert len(groups) == 2 and sum(len(g["episodes"]) for g in groups) == 6
    assert all(g["task_id"].startswith("step 1 / ") for g in groups) and write_view(tmp_path).is_file()
