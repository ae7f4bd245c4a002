"""LEAFE stage 2 data: turn experience trees into supervised examples (L = L_cf + beta * L_reh).

* **Counterfactual** (L_cf). Every branch on the path of a successful history is a correction
  that worked: the branch took over its parent's first ``prefix_length`` turns and then acted
  differently. The example's input is the history up to that rollback point and the task,
  WITHOUT the experience summary that prompted the correction; the target is the corrected turn
  (``cf_target: turn``: the branch's first turn with a valid action) or each of the branch's turns
  up to the end of its own segment (``cf_target: branch``). At most ``max_cf_per_task`` corrections per task (paper: 3), drawn
  with the run seed when there are more.
* **Rehearsal** (L_reh). Rejection sampling: the successful histories of a tree (roots and
  branches) are kept, a random ``rehearsal_fraction`` of them overall (paper: 20%; at least one
  when any exists), and every turn of a kept history with a valid action becomes an example.

Only turns with a parseable action the environment accepted are targets (:func:`is_target`).

Prompts are rebuilt with the run's :class:`~leafe.prompting.Prompter` from the recorded
observations and replies, so an example is exactly what the policy sees at test time (no
reflection, no experience). Identical (prompt, target) pairs are kept once per kind.

Exported JSONL (:func:`export_record`) carries the same example in the forms common SFT stacks
read: ``prompt``/``completion`` (TRL's prompt-completion format: strings for the completion
prompt format, message lists for chat), ``messages`` with a per-message ``train`` flag (axolotl's
``chat_template`` with ``message_field_training: train``; LLaMA-Factory's sharegpt format with
``mask_history``), and ``segments`` with per-segment ``label`` (axolotl's template-free
``input_output``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

from leafe.method.tree import ExperienceTree
from leafe.policy.base import Prompt
from leafe.prompting import Prompter, Turn
from leafe.types import SFTExample, Step

KINDS = ("counterfactual", "rehearsal")


def turn_prompt(prompter: Prompter, instruction: str, initial_observation: str, history: Sequence[Step], turn: int) -> Prompt:
    """The prompt of turn ``turn`` (0-based) of ``history`` as the policy sees it without any
    experience summary: the recorded turns before it and the observation it answered."""
    seen = [initial_observation] + [step.observation for step in history]
    turns = [Turn(observation=seen[i], reply=prompter.reply(step.completion)) for i, step in enumerate(history[:turn])]
    return prompter.build(instruction, turns, seen[turn])


def target_text(prompter: Prompter, step: Step) -> str:
    """The reply a turn is trained to produce.

    Completion format: what follows the prompt's trailing ``"Thought:"``, up to the ``Action:``
    line, then a blank line (one of the stop strings, so the model learns where to stop); for
    code actions, up to the closing fence and its newline (the code format's stop string). Chat
    format: the assistant message (the trainer appends the template's end-of-turn token).
    """
    return reply_target(prompter, prompter.reply(step.completion))


def reply_target(prompter: Prompter, reply: str) -> str:
    """The training target of a normalised reply (``Thought: ...`` then the action; see
    :func:`target_text`)."""
    if prompter.prompt_format == "chat":
        return reply
    body = reply[len("Thought:") :].strip() if reply.startswith("Thought:") else reply
    # End with the text that completes a stop string: a blank line, or a closed code block's newline.
    return f" {body}\n" if prompter.action_format == "code" else f" {body}\n\n"


def is_target(step: Step) -> bool:
    """Whether a turn is worth imitating: it had a parseable action that the environment accepted
    (a successful history can still contain a malformed or invalid move; copying it teaches nothing)."""
    return step.action is not None and not step.info.get("invalid_action", False)


def _example(kind: str, prompter: Prompter, tree: ExperienceTree, node_id: int, history: Sequence[Step], turn: int) -> SFTExample:
    prompt = turn_prompt(prompter, tree.instruction, tree.initial_observation, history, turn)
    return SFTExample(
        kind=kind,
        prompt=prompt if isinstance(prompt, str) else [dict(message) for message in prompt],
        completion=target_text(prompter, history[turn]),
        task_id=tree.task.task_id,
        node_id=node_id,
        turn=turn,
    )


def corrections(tree: ExperienceTree) -> list[tuple[int, int]]:
    """The successful corrections of a tree as (successful node, branch node) pairs.

    A branch node counts when a successful history runs through its first own step, i.e. it is
    the successful node itself or an ancestor whose segment the successful node's history keeps.
    Each branch counts once (with the first successful node, in id order, that runs through it).
    """
    found: dict[int, int] = {}
    for node in tree.nodes:
        if node.outcome != "success":
            continue
        kept_turns = len(tree.history(node.node_id))  # turns of the history that reach `node`
        current = node
        while current.parent_id is not None:
            if current.prefix_length < kept_turns and current.steps and current.node_id not in found:
                found[current.node_id] = node.node_id
            kept_turns = min(kept_turns, current.prefix_length)
            current = tree.nodes[current.parent_id]
    return sorted((success, branch) for branch, success in found.items())


def counterfactual_examples(
    tree: ExperienceTree, prompter: Prompter, max_per_task: int, target: str, rng: random.Random
) -> list[SFTExample]:
    """L_cf examples of one tree (see the module docstring); ``target`` is ``"turn"`` or ``"branch"``."""
    pairs = corrections(tree)
    if len(pairs) > max_per_task:
        pairs = sorted(rng.sample(pairs, max_per_task))
    examples = []
    for success_id, branch_id in pairs:
        history = tree.history(success_id)
        branch = tree.nodes[branch_id]
        segment = range(branch.prefix_length, min(len(history), branch.prefix_length + len(branch.steps)))
        turns = [turn for turn in segment if is_target(history[turn])]
        examples += [_example("counterfactual", prompter, tree, success_id, history, turn) for turn in turns[: 1 if target == "turn" else None]]
    return examples


def rehearsal_examples(trees: Sequence[ExperienceTree], prompter: Prompter, fraction: float, rng: random.Random) -> list[SFTExample]:
    """L_reh examples: every action turn of a random ``fraction`` of all successful histories."""
    successes = [(tree, node.node_id) for tree in trees for node in tree.nodes if node.outcome == "success"]
    if not successes or fraction <= 0:
        return []
    keep = min(len(successes), max(1, math.ceil(fraction * len(successes))))
    chosen = sorted(rng.sample(range(len(successes)), keep))
    examples = []
    for index in chosen:
        tree, node_id = successes[index]
        history = tree.history(node_id)
        examples += [
            _example("rehearsal", prompter, tree, node_id, history, turn)
            for turn in range(len(history))
            if is_target(history[turn])
        ]
    return examples


def _dedupe(examples: Iterable[SFTExample]) -> list[SFTExample]:
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for example in examples:
        key = (example.kind, repr(example.prompt), example.completion)
        if key not in seen:
            seen.add(key)
            unique.append(example)
    return unique


def build_examples(
    trees: Sequence[ExperienceTree],
    prompter: Prompter,
    *,
    max_cf_per_task: int = 3,
    cf_target: str = "turn",
    rehearsal_fraction: float = 0.2,
    seed: int = 0,
) -> list[SFTExample]:
    """All stage-2 examples of ``trees``: counterfactual ones (tree order), then rehearsal ones.

    Deterministic for a given ``seed`` and tree order.
    """
    if cf_target not in ("turn", "branch"):
        raise ValueError(f"cf_target must be 'turn' or 'branch', got {cf_target!r}")
    rng = random.Random(seed)
    trees = sorted(trees, key=lambda tree: tree.task.task_id)
    counterfactual = [
        example for tree in trees for example in counterfactual_examples(tree, prompter, max_cf_per_task, cf_target, rng)
    ]
    return _dedupe(counterfactual) + _dedupe(rehearsal_examples(trees, prompter, rehearsal_fraction, rng))


def export_record(example: SFTExample, weight: float) -> dict[str, Any]:
    """One JSONL line readable by TRL, LLaMA-Factory and axolotl (see the module docstring).

    ``weight`` is the example's loss weight (1 for L_cf, beta for L_reh) for stacks that take one.
    """
    if isinstance(example.prompt, str):
        prompt_messages = [{"role": "user", "content": example.prompt}]
        completion: str | list[dict[str, str]] = example.completion
        segments = [{"text": example.prompt, "label": False}, {"text": example.completion, "label": True}]
    else:
        prompt_messages = [dict(message) for message in example.prompt]
        completion = [{"role": "assistant", "content": example.completion}]
        segments = None
    messages = [{**message, "train": False} for message in prompt_messages]
    messages.append({"role": "assistant", "content": example.completion, "train": True})
    record: dict[str, Any] = {
        "prompt": example.prompt,
        "completion": completion,
        "messages": messages,
        "kind": example.kind,
        "weight": weight,
        "task_id": example.task_id,
        "node_id": example.node_id,
        "turn": example.turn,
    }
    if segments is not None:
        record["segments"] = segments
    return record
