"""Early Experience (Zhang et al., arXiv 2510.08558): learn from the outcomes of the policy's own
actions at expert states, without any reward.

1. **Expert states.** Walk the environment's expert demonstration of each task. State ``t`` is
   what the policy would see at turn ``t`` of that demonstration: the expert turns before it (as
   history), the observation, the expert action and the observation it led to.
2. **Alternatives.** At every state the policy, prompted exactly as at test time, samples
   ``alternatives`` replies; each distinct parseable action other than the expert's is executed
   from that state (snapshot/restore when the environment has it, reset + replay otherwise) and
   the observation it led to is recorded.
3. **Training data** (:func:`build_examples`), trained with the stage-2 SFT trainer:

   * ``iwm`` (implicit world modelling): predict the next observation after an alternative
     action (``world_model`` examples: the transcript up to the action, target = the
     observation), then imitate the expert actions (``imitation`` examples) in a second phase
     that starts from the world-model checkpoint;
   * ``sr`` (self-reflection): the policy is shown the outcomes of the expert action and of the
     alternatives and writes a short rationale for the expert action; the target is that
     rationale as the thought, then the expert action (``reflection`` examples). States without
     an alternative (or an empty rationale) give a plain ``imitation`` example.

Everything is seeded per (run seed, task, turn, sample), so a rerun produces the same data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from leafe.envs.base import TextEnv, expert_actions, replay, supports_snapshot
from leafe.method.distill import reply_target
from leafe.policy.base import GenerationRequest, Policy, Prompt, SamplingParams
from leafe.prompting import Prompter, Turn, expert_reply, format_reply
from leafe.rollout import derive_seed
from leafe.types import SFTExample, Task

VARIANTS = ("iwm", "sr")


@dataclass(frozen=True)
class Outcome:
    """An action taken at an expert state and what the environment answered."""

    action: str
    observation: str
    reward: float
    terminated: bool
    invalid: bool


@dataclass(frozen=True)
class ExpertState:
    """Turn ``turn`` of an expert demonstration, with the alternatives tried there.

    ``history`` holds the expert turns before this one as the prompt shows them; ``completions``
    are the policy's raw replies whose actions became ``alternatives`` (same order).
    """

    task: Task
    turn: int
    instruction: str
    history: tuple[Turn, ...]
    observation: str
    expert: Outcome
    alternatives: tuple[Outcome, ...] = ()
    completions: tuple[str, ...] = ()
    rationale: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["task"] = self.task.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertState:
        return cls(
            task=Task.from_dict(data["task"]),
            turn=int(data["turn"]),
            instruction=data["instruction"],
            history=tuple(Turn(**turn) for turn in data["history"]),
            observation=data["observation"],
            expert=Outcome(**data["expert"]),
            alternatives=tuple(Outcome(**outcome) for outcome in data["alternatives"]),
            completions=tuple(data["completions"]),
            rationale=data.get("rationale", ""),
        )


@dataclass
class Cost:
    """What collecting the data spent: environment steps (expert walks, alternatives and replays
    included) and model tokens (proposals and rationales); and how many rationales the
    ``rationale_max_new_tokens`` cap cut mid-thought (the cap ended the text the target keeps)."""

    env_steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    rationales_cut: int = 0

    def add_generations(self, generations: Sequence[Any]) -> None:
        self.requests += len(generations)
        self.prompt_tokens += sum(g.prompt_tokens for g in generations)
        self.completion_tokens += sum(g.completion_tokens for g in generations)


@dataclass
class _Walk:
    """An expert walk in progress: its states and how to return to each of them."""

    states: list[ExpertState] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)
    env: TextEnv | None = None


def walk_expert(make_env: Callable[[], TextEnv], task: Task, prompter: Prompter, max_states: int, cost: Cost) -> _Walk:
    """The first ``max_states`` states of ``task``'s expert demonstration (no alternatives yet).

    Raises:
        ValueError: the environment has no demonstration for ``task``.
    """
    env = make_env()
    actions = expert_actions(env, task)
    if not actions:
        raise ValueError(f"{task.task_id}: the environment has no expert demonstration (Early Experience needs one)")
    observation, info = env.reset(task)
    instruction = str(info.get("instruction", ""))
    walk = _Walk(env=env)
    history: list[Turn] = []
    for turn, action in enumerate(actions[:max_states]):
        if supports_snapshot(env):
            walk.snapshots.append(env.snapshot())
        next_observation, reward, terminated, _truncated, step_info = env.step(action)
        cost.env_steps += 1
        expert = Outcome(action, next_observation, float(reward), bool(terminated), bool(step_info.get("invalid_action", False)))
        walk.states.append(ExpertState(task, turn, instruction, tuple(history), observation, expert))
        history.append(Turn(observation=observation, reply=expert_reply(action, prompter.action_format)))
        observation = next_observation
        if terminated:
            break
    return walk


def state_prompt(prompter: Prompter, state: ExpertState) -> Prompt:
    """The prompt the policy sees at ``state`` (the test-time prompt: no lessons)."""
    return prompter.build(state.instruction, state.history, state.observation)


def distinct_alternatives(state: ExpertState, completions: Sequence[str], prompter: Prompter, limit: int) -> list[tuple[str, str]]:
    """(completion, action) of the first ``limit`` distinct parseable actions that differ from
    the expert's (compared without case and surrounding space)."""
    seen = {state.expert.action.strip().lower()}
    chosen = []
    for completion in completions:
        action = prompter.parse_action(completion)
        if action is None or action.strip().lower() in seen:
            continue
        seen.add(action.strip().lower())
        chosen.append((completion, action))
    return chosen[:limit]


def try_actions(
    make_env: Callable[[], TextEnv], walk: _Walk, state: ExpertState, actions: Sequence[str], cost: Cost
) -> list[Outcome]:
    """Execute each of ``actions`` from ``state`` and record what it led to."""
    outcomes = []
    expert_prefix = [s.expert.action for s in walk.states[: state.turn]]
    for action in actions:
        if walk.snapshots:
            env = walk.env
            env.restore(walk.snapshots[state.turn])
        else:
            env = make_env()
            replay(env, state.task, expert_prefix)
            cost.env_steps += len(expert_prefix)
        observation, reward, terminated, _truncated, info = env.step(action)
        cost.env_steps += 1
        outcomes.append(Outcome(action, observation, float(reward), bool(terminated), bool(info.get("invalid_action", False))))
    return outcomes


def _clip(text: str, chars: int) -> str:
    text = text.strip()
    return text if len(text) <= chars else text[:chars].rstrip() + " ..."


def rationale_prompt(prompt_format: str, state: ExpertState, chars: int, seed: int) -> Prompt:
    """Ask for a rationale of the expert action given every outcome (shuffled with ``seed``, so
    the expert action is not always listed first)."""
    outcomes = [state.expert, *state.alternatives]
    random.Random(seed).shuffle(outcomes)
    listed = "\n".join(f"- Action: {o.action}\n  Result: {_clip(o.observation, chars)}" for o in outcomes)
    request = (
        f"{state.instruction.strip()}\n\nCurrent observation:\n{_clip(state.observation, chars)}\n\n"
        f"These actions were tried from here, with what happened after each:\n{listed}\n\n"
        f"The best action is '{state.expert.action}'. In one or two sentences, explain why it is "
        "better than the others, using what happened after each."
    )
    if prompt_format == "chat":
        return [{"role": "user", "content": request}]
    return f"{request}\nExplanation:"


def clean_rationale(text: str) -> str:
    """The rationale as one line of thought: its first paragraph, cut before any ``Action:`` the
    model wrote itself, newlines folded (the target must parse to the expert action and must not
    contain the blank line that ends a reply)."""
    text = text.strip().split("\n\n")[0]
    text = re.split(r"(?im)^\s*action\s*:", text)[0]
    return " ".join(text.split())


def collect(
    make_env: Callable[[], TextEnv],
    policy: Policy,
    prompter: Prompter,
    sampling: SamplingParams,
    tasks: Sequence[Task],
    *,
    variant: str,
    alternatives: int,
    max_states_per_task: int,
    observation_chars: int,
    rationale_max_new_tokens: int,
    seed: int,
    cost: Cost,
) -> list[list[ExpertState]]:
    """The expert states of ``tasks`` with their alternatives (and rationales for ``sr``), one
    list per task. Generation is batched over all states of ``tasks``."""
    if variant not in VARIANTS:
        raise ValueError(f"early_experience.variant must be one of {VARIANTS}, got {variant!r}")
    walks = [walk_expert(make_env, task, prompter, max_states_per_task, cost) for task in tasks]
    states = [state for walk in walks for state in walk.states]
    requests = [
        GenerationRequest(prompt=state_prompt(prompter, state), seed=derive_seed(seed, "ee-propose", state.task.task_id, state.turn, j))
        for state in states
        for j in range(alternatives)
    ]
    params = SamplingParams(sampling.temperature, sampling.top_p, sampling.max_new_tokens, prompter.stop)
    generations = policy.generate(requests, params) if requests else []
    cost.add_generations(generations)
    finished: list[list[ExpertState]] = []
    index = 0
    for walk in walks:
        done = []
        for state in walk.states:
            completions = [g.text for g in generations[index : index + alternatives]]
            index += alternatives
            chosen = distinct_alternatives(state, completions, prompter, alternatives)
            outcomes = try_actions(make_env, walk, state, [action for _completion, action in chosen], cost)
            done.append(replace(state, alternatives=tuple(outcomes), completions=tuple(c for c, _a in chosen)))
        finished.append(done)
    if variant == "sr":
        finished = _add_rationales(finished, policy, prompter, sampling, observation_chars, rationale_max_new_tokens, seed, cost)
    return finished


def _add_rationales(
    per_task: list[list[ExpertState]],
    policy: Policy,
    prompter: Prompter,
    sampling: SamplingParams,
    chars: int,
    max_new_tokens: int,
    seed: int,
    cost: Cost,
) -> list[list[ExpertState]]:
    wanted = [state for states in per_task for state in states if state.alternatives]
    requests = [
        GenerationRequest(
            prompt=rationale_prompt(prompter.prompt_format, state, chars, derive_seed(seed, "ee-order", state.task.task_id, state.turn)),
            seed=derive_seed(seed, "ee-rationale", state.task.task_id, state.turn),
        )
        for state in wanted
    ]
    stop = ("\n\n",) if prompter.prompt_format == "completion" else ()
    generations = policy.generate(requests, SamplingParams(sampling.temperature, sampling.top_p, max_new_tokens, stop)) if requests else []
    cost.add_generations(generations)
    cost.rationales_cut += sum(g.finish_reason == "length" and clean_rationale(g.text) == " ".join(g.text.split()) for g in generations)
    rationale = {(s.task.task_id, s.turn): clean_rationale(g.text) for s, g in zip(wanted, generations)}
    return [
        [replace(state, rationale=rationale.get((state.task.task_id, state.turn), "")) for state in states]
        for states in per_task
    ]


def world_model_example(prompter: Prompter, state: ExpertState, outcome: Outcome, completion: str) -> SFTExample:
    """Predict ``outcome.observation`` after the policy's own reply ``completion`` at ``state``.

    Completion format: the transcript continues as it would at test time (prompt, the reply,
    then ``Observation:``) and the target is the observation and the blank line after it. Chat
    format: the reply as an assistant message, then a user message asking for the next
    observation; the target is the observation.
    """
    reply = prompter.reply(completion)
    prompt = state_prompt(prompter, state)
    if isinstance(prompt, str):
        body = reply.removeprefix("Thought:").strip()
        full_prompt: Prompt = f"{prompt} {body}\n\nObservation:\n"
        target = f"{outcome.observation.strip()}\n\n"
    else:
        full_prompt = [*prompt, {"role": "assistant", "content": reply}, {"role": "user", "content": "What is the observation after this action?"}]
        target = outcome.observation.strip()
    return SFTExample(kind="world_model", prompt=full_prompt, completion=target, task_id=state.task.task_id, node_id=0, turn=state.turn)


def _target_example(kind: str, prompter: Prompter, state: ExpertState, thought: str | None) -> SFTExample:
    reply = expert_reply(state.expert.action, prompter.action_format) if thought is None else format_reply(
        thought, state.expert.action, prompter.action_format
    )
    prompt = state_prompt(prompter, state)
    return SFTExample(
        kind=kind,
        prompt=prompt if isinstance(prompt, str) else [dict(message) for message in prompt],
        completion=reply_target(prompter, reply),
        task_id=state.task.task_id,
        node_id=0,
        turn=state.turn,
    )


def build_examples(states: Sequence[ExpertState], prompter: Prompter, variant: str) -> dict[str, list[SFTExample]]:
    """Training examples by phase: ``{"world_model": [...], "policy": [...]}`` for ``iwm`` (the
    first phase predicts observations, the second imitates the expert), ``{"policy": [...]}`` for
    ``sr`` (rationale + expert action where a rationale exists, imitation elsewhere)."""
    if variant == "iwm":
        world = [
            world_model_example(prompter, state, outcome, completion)
            for state in states
            for outcome, completion in zip(state.alternatives, state.completions)
        ]
        return {"world_model": world, "policy": [_target_example("imitation", prompter, s, None) for s in states]}
    if variant == "sr":
        return {
            "policy": [
                _target_example("reflection", prompter, s, s.rationale) if s.rationale else _target_example("imitation", prompter, s, None)
                for s in states
            ]
        }
    raise ValueError(f"early_experience.variant must be one of {VARIANTS}, got {variant!r}")
