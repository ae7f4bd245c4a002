"""``leafe early-experience CONFIG``: collect Early Experience data, then train on it.

Run directory layout (``output_dir/name``)::

    states.jsonl        one line per chunk of tasks: {"tasks", "states", "cost", "seconds"} (resume unit)
    data.jsonl          the training examples (all phases, exported like LEAFE's data.jsonl)
    world_model/        iwm only: the first SFT phase (next-observation prediction)
    model/              the trained policy (evaluate it with leafe eval ... policy.model=...)
    summary.json        counts, collection cost (env steps, model tokens) and wall times

The command collects with the configured policy (:func:`collect_all`), releases it, then trains
(:func:`train_early_experience`). A run killed at any point resumes: finished chunks are read back, SFT resumes from its last
checkpoint, and a finished phase is not trained again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tqdm import tqdm

from leafe.agent import Agent
from leafe.config import ExperimentConfig
from leafe.method.distill import export_record
from leafe.prompting import Prompter
from leafe.method.early_experience import Cost, ExpertState, build_examples, collect
from leafe.runs import RunDir, append_jsonl, read_jsonl, write_atomic
from leafe.types import Task

logger = logging.getLogger(__name__)

TASKS_PER_CHUNK = 8


def collect_all(cfg: ExperimentConfig, run: RunDir, agent: Agent, tasks: list[Task]) -> tuple[list[ExpertState], Cost, float]:
    """All expert states of ``tasks`` with alternatives; finished chunks are read from disk.

    Returns (states in task order, total cost over every invocation, collection seconds over every
    invocation: each chunk's record keeps its own).
    """
    section = cfg.early_experience
    states_file = run.path / "states.jsonl"
    done: dict[str, list[ExpertState]] = {}
    total, seconds = Cost(), 0.0
    for record in read_jsonl(states_file):
        seconds += record.get("seconds", 0.0)
        for task_id, states in zip(record["tasks"], record["states"]):
            done[task_id] = [ExpertState.from_dict(state) for state in states]
        for key, value in record["cost"].items():
            setattr(total, key, getattr(total, key) + value)
    chunks = [tasks[i : i + TASKS_PER_CHUNK] for i in range(0, len(tasks), TASKS_PER_CHUNK)]
    with tqdm(total=len(tasks), initial=sum(task.task_id in done for task in tasks), desc="early experience", unit="task") as bar:
        for chunk in chunks:
            if all(task.task_id in done for task in chunk):
                continue
            cost, started = Cost(), time.perf_counter()
            per_task = collect(
                agent.make_env, agent.policy, agent.prompter, agent.sampling, chunk,
                variant=section.variant, alternatives=section.alternatives,
                max_states_per_task=section.max_states_per_task, observation_chars=section.observation_chars,
                rationale_max_new_tokens=section.rationale_max_new_tokens, seed=cfg.seed, cost=cost,
            )
            append_jsonl(states_file, {
                "tasks": [task.task_id for task in chunk],
                "states": [[state.to_dict() for state in states] for states in per_task],
                "cost": cost.__dict__,
                "seconds": (elapsed := round(time.perf_counter() - started, 2)),
            })
            seconds += elapsed  # as recorded, so a rerun adds up the same total
            for task, states in zip(chunk, per_task):
                done[task.task_id] = states
            for key, value in cost.__dict__.items():
                setattr(total, key, getattr(total, key) + value)
            bar.update(len(chunk))
    return [state for task in tasks for state in done[task.task_id]], total, seconds


def train_early_experience(
    cfg: ExperimentConfig, run: RunDir, states: list[ExpertState], prompter: Prompter, cost: Cost, collect_seconds: float,
    num_tasks: int,
) -> dict[str, Any]:
    """Build the examples of ``states``, train the phase(s), write ``summary.json``; returns it.

    Call it after the collecting policy is released (training loads its own copy of the model).
    """
    from leafe.trainers.sft import train_sft

    section = cfg.early_experience
    phases = build_examples(states, prompter, section.variant)
    lines = [json.dumps(export_record(example, 1.0)) for examples in phases.values() for example in examples]
    write_atomic(run.path / "data.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    if not phases["policy"]:
        raise ValueError("early_experience: no expert state was collected (no task has a demonstration)")
    # Every Early Experience target is a plain likelihood term (weight 1).
    sft = cfg.sft.model_copy(update={"objective": "reh_only", "beta": 1.0})
    trained: dict[str, Any] = {}
    start_model, field = cfg.policy.model, "policy.model"
    if section.variant == "iwm":
        if not phases["world_model"]:
            raise ValueError(
                "early_experience: the policy proposed no alternative action that differs from the expert's, so there is "
                "nothing to model; raise early_experience.alternatives or policy.temperature"
            )
        world = train_sft(sft.model_copy(update={"epochs": section.world_model_epochs}), start_model, phases["world_model"],
                          run.path / "world_model", seed=cfg.seed, device=cfg.policy.device)
        trained["world_model"] = world.to_dict()
        start_model, field = world.model_dir, "the world model this run trained (world_model)"
    policy = train_sft(sft, start_model, phases["policy"], run.path, seed=cfg.seed, device=cfg.policy.device,
                       model_field=field)
    trained["policy"] = policy.to_dict()
    summary = {
        "variant": section.variant,
        "tasks": num_tasks,
        "states": len(states),
        "states_with_alternatives": sum(bool(s.alternatives) for s in states),
        "alternatives": sum(len(s.alternatives) for s in states),
        "rationales": sum(bool(s.rationale) for s in states),
        "examples": {phase: _kinds(examples) for phase, examples in phases.items()},
        "collection_cost": {**cost.__dict__, "model_tokens": cost.prompt_tokens + cost.completion_tokens},
        "collection_seconds": round(collect_seconds, 1),
        "sft": trained,
        "model_dir": policy.model_dir,
    }
    write_atomic(run.path / "summary.json", json.dumps(summary, indent=2) + "\n")
    if cost.rationales_cut:
        logger.warning(
            "early experience: %d of %d rationales were cut mid-thought by early_experience.rationale_max_new_tokens=%d "
            "(their training targets end there); raise it if that matters", cost.rationales_cut,
            summary["states_with_alternatives"], section.rationale_max_new_tokens,
        )
    logger.info("early experience done: %s", summary)
    return summary


def _kinds(examples: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.kind] = counts.get(example.kind, 0) + 1
    return counts

