"""THE multi-turn agent loop. Evaluation, exploration and RL all collect episodes through it.

Many episodes run at once. Each active episode submits its next prompt to the policy's stream
(:func:`leafe.policy.base.open_stream`) and takes its environment step as soon as that reply is
back: with a continuous-batching backend (native) an episode never waits for slower ones; a
batch-only backend completes all submitted prompts per call, i.e. in rounds. Finished episodes
leave and queued ones take their place, so the batch stays full.

Per turn: prompt = task + recent history + current observation; the reply is parsed into an
action; a reply without an action costs a turn and comes back as feedback (never a crash); an
invalid action is reported by the environment itself. Each episode has a fixed interaction
budget of ``max_steps`` turns; hitting it marks the last step ``truncated``.

Every sample is reproducible: the seed of turn t of an episode is derived from the episode's
seed and t, and backends seed each request separately, so an episode's text does not depend on
which other episodes shared its batch (this is what makes interrupted runs resumable).

Exploration (LEAFE stage 1) uses three optional parts of a job:

* ``start``: the episode begins at a rollback point, not at ``reset``: recorded prior steps and
  an environment already rebuilt to the state after them (see :mod:`leafe.method.rollback`);
* ``experience``: experience summaries the prompter shows in every prompt of the episode;
* ``budget``: a :class:`Budget` shared by several episodes (all attempts at one task). Its
  episodes are served in order: one takes a turn only while the budget still covers the turns
  the earlier ones may yet take, so earlier attempts finish and later ones wait. The turn limit
  is never exceeded; episodes still waiting when it is spent are cut (their last new step, if
  any, is marked ``truncated``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from leafe.envs.base import TextEnv
from leafe.policy.base import Generation, GenerationRequest, Policy, SamplingParams, open_stream
from leafe.prompting import Prompter, Turn
from leafe.types import Step, Task, Trajectory


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (same parts -> same seed, any process)."""
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class Budget:
    """A spending limit shared by the episodes that hold it; counts are exact.

    Attributes:
        max_env_steps: turns allowed in all (``None``: unlimited). One agent turn is one unit,
            including a turn whose reply had no parseable action (it still cost a model call and
            returned feedback), the same unit as the per-episode ``max_steps``.
        max_model_tokens: prompt + completion tokens allowed (``None``: unlimited). A model call
            starts only if the tokens spent, the estimates of the calls in flight and its own
            estimate fit under the cap, or if no call of this budget is in flight; so the total
            passes the cap by about one call at most (estimate: the largest call so far, or the
            episode's last call plus ``max_new_tokens``, whichever is larger).
        env_steps: turns spent so far.
        model_tokens: tokens spent so far (rollout turns, plus whatever callers charge, e.g.
            reflections).
    """

    max_env_steps: int | None = None
    max_model_tokens: int | None = None
    env_steps: int = 0
    model_tokens: int = 0
    largest_call: int = 0  # prompt + completion tokens of the largest turn charged so far

    def turns_left(self) -> int | float:
        """How many more turns may start now (0 once either limit is reached)."""
        if self.max_model_tokens is not None and self.model_tokens >= self.max_model_tokens:
            return 0
        return float("inf") if self.max_env_steps is None else max(0, self.max_env_steps - self.env_steps)

    def exhausted(self) -> bool:
        return self.turns_left() == 0

    def charge(self, env_steps: int = 0, model_tokens: int = 0) -> None:
        self.env_steps += env_steps
        self.model_tokens += model_tokens


@dataclass(frozen=True)
class EpisodeStart:
    """A rollback point to start an episode from, instead of ``reset``.

    Attributes:
        env: an environment already in the state reached after ``steps`` (the caller rebuilt it).
        instruction: the task statement.
        initial_observation: the observation ``reset`` returned.
        steps: the recorded turns before the branch point; they form the prompt history and the
            first steps of the resulting trajectory.
    """

    env: TextEnv
    instruction: str
    initial_observation: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to play: a task, which of its n samples this is, and the episode seed.

    ``experience``, ``start`` and ``budget`` are for exploration (see the module docstring).
    """

    task: Task
    sample_index: int
    seed: int
    experience: tuple[str, ...] = ()
    start: EpisodeStart | None = field(default=None, compare=False)
    budget: Budget | None = field(default=None, compare=False)


@dataclass
class _Episode:
    """An episode in flight. ``observation`` is what the agent sees next (possibly format
    feedback); ``env_observation`` is the environment's latest observation."""

    job: EpisodeJob
    env: TextEnv
    instruction: str
    initial_observation: str
    observation: str
    env_observation: str
    turns: list[Turn] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    success: bool = False
    prefix_length: int = 0

    def finish(self) -> Trajectory:
        return Trajectory(
            task=self.job.task,
            sample_index=self.job.sample_index,
            seed=self.job.seed,
            instruction=self.instruction,
            initial_observation=self.initial_observation,
            steps=tuple(self.steps),
            success=self.success,
        )


def _start(job: EpisodeJob, make_env: Callable[[], TextEnv], prompter: Prompter) -> _Episode:
    if job.start is None:
        env = make_env()
        observation, info = env.reset(job.task)
        return _Episode(
            job=job,
            env=env,
            instruction=str(info.get("instruction", "")),
            initial_observation=observation,
            observation=observation,
            env_observation=observation,
        )
    start = job.start
    seen = [start.initial_observation] + [step.observation for step in start.steps]
    acted = [start.initial_observation] + [step.observation for step in start.steps if step.action is not None]
    return _Episode(
        job=job,
        env=start.env,
        instruction=start.instruction,
        initial_observation=start.initial_observation,
        observation=seen[-1],
        env_observation=acted[-1],
        turns=[Turn(observation=seen[i], reply=prompter.reply(step.completion)) for i, step in enumerate(start.steps)],
        steps=list(start.steps),
        prefix_length=len(start.steps),
    )


def run_episodes(
    jobs: Iterable[EpisodeJob],
    make_env: Callable[[], TextEnv],
    policy: Policy,
    prompter: Prompter,
    sampling: SamplingParams,
    max_steps: int,
    max_concurrent: int = 64,
    on_finish: Callable[[Trajectory], None] | None = None,
    on_step: Callable[[EpisodeJob, TextEnv], None] | None = None,
) -> list[Trajectory]:
    """Play every job to the end and return the trajectories in the order they finished.

    Args:
        jobs: episodes to play.
        make_env: builds a fresh environment (one per concurrent episode).
        policy: the inference backend.
        prompter: prompt format and history window.
        sampling: temperature/top-p/max tokens; the prompter's stop strings are added.
        max_steps: interaction budget per episode (model turns, parse failures included).
        max_concurrent: episodes in flight at once (the batch the policy sees per round).
        on_finish: called with each trajectory as soon as it ends (e.g. append to JSONL).
        on_step: called after every turn with the job and its environment (e.g. to snapshot it).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    params = SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        stop=tuple(dict.fromkeys(sampling.stop + prompter.stop)),
    )
    pending = deque(jobs)
    active: list[_Episode] = []  # in start order (a shared budget serves its episodes in this order)
    in_flight: dict[int, _Episode] = {}  # id(episode) -> episode whose turn the policy is generating
    finished: list[Trajectory] = []
    stream = open_stream(policy, params)

    def finish(episode: _Episode) -> None:
        active.remove(episode)
        trajectory = episode.finish()
        finished.append(trajectory)
        if on_finish is not None:
            on_finish(trajectory)

    try:
        while pending or active:
            while pending and len(active) < max_concurrent:
                active.append(_start(pending.popleft(), make_env, prompter))
            playing, _waiting, cut = _grant_turns(active, max_steps, in_flight, params.max_new_tokens)
            for episode in cut:
                _mark_cut(episode)
                finish(episode)
            for episode in playing:
                if id(episode) not in in_flight:
                    in_flight[id(episode)] = episode
                    prompt = prompter.build(episode.instruction, episode.turns, episode.observation, episode.job.experience)
                    stream.submit(id(episode), GenerationRequest(prompt, seed=derive_seed(episode.job.seed, len(episode.steps))))
            for key, result in stream.next_finished():
                episode, generation = in_flight.pop(key), result.generation
                if episode.job.budget is not None:
                    call = generation.prompt_tokens + generation.completion_tokens
                    episode.job.budget.charge(env_steps=1, model_tokens=call)
                    episode.job.budget.largest_call = max(episode.job.budget.largest_call, call)
                _advance(episode, generation, prompter, max_steps)
                if on_step is not None:
                    on_step(episode.job, episode.env)
                if episode.steps[-1].terminated or episode.steps[-1].truncated:
                    finish(episode)
    finally:
        stream.close()  # after an error, nothing of this call stays queued in the backend
    return finished


def _grant_turns(
    active: list[_Episode], max_steps: int, in_flight: dict[int, _Episode], max_new_tokens: int = 0
) -> tuple[list[_Episode], list[_Episode], list[_Episode]]:
    """Split the active episodes into (playing, waiting, cut by their budget). An episode whose
    turn is being generated keeps playing (its turn was granted when it was submitted).

    A shared budget serves its episodes in order: an episode takes a turn only if the budget
    still covers every turn the earlier episodes may yet take (up to ``max_steps`` each) plus
    this one. So when the budget runs low, earlier attempts are played to their end instead of
    every attempt being cut short; later ones wait, and are cut once the budget is spent.
    Under a token cap, a call also needs its estimated tokens to fit next to the calls in
    flight (see :class:`Budget`); the first call of a budget runs alone, to measure one.
    """
    tokens_held: dict[int, int] = {}  # id(budget) -> estimated tokens of its calls in flight
    for episode in active:
        budget = episode.job.budget
        if budget is not None and id(episode) in in_flight:
            tokens_held[id(budget)] = tokens_held.get(id(budget), 0) + _call_estimate(episode, max_new_tokens)
    reserved: dict[int, int] = {}
    playing, waiting, cut = [], [], []
    for episode in active:
        budget = episode.job.budget
        if budget is None:
            playing.append(episode)
            continue
        left = budget.turns_left()
        before = reserved.get(id(budget), 0)
        if id(episode) in in_flight:
            playing.append(episode)
        elif left == 0:
            cut.append(episode)
        elif before + 1 <= left and _tokens_fit(budget, tokens_held, _call_estimate(episode, max_new_tokens)):
            playing.append(episode)
            tokens_held[id(budget)] = tokens_held.get(id(budget), 0) + _call_estimate(episode, max_new_tokens)
        else:
            waiting.append(episode)
        reserved[id(budget)] = before + max(1, max_steps - len(episode.steps))
    return playing, waiting, cut


def _call_estimate(episode: _Episode, max_new_tokens: int) -> int:
    """Tokens the episode's next call may cost: the budget's largest call so far, or its own
    last call plus a full reply, whichever is larger (0 before any call was measured)."""
    budget = episode.job.budget
    own = episode.steps[-1].prompt_tokens + episode.steps[-1].completion_tokens + max_new_tokens if episode.steps else 0
    return max(budget.largest_call if budget is not None else 0, own)


def _tokens_fit(budget: Budget, tokens_held: dict[int, int], estimate: int) -> bool:
    """Whether a new call fits the token cap next to the calls in flight (always, when none is)."""
    held = tokens_held.get(id(budget), 0)
    if budget.max_model_tokens is None or held == 0 and budget.largest_call > 0:
        return True
    if budget.largest_call == 0:  # nothing measured yet: the first call of the budget runs alone
        return id(budget) not in tokens_held
    return budget.model_tokens + held + estimate <= budget.max_model_tokens


def _mark_cut(episode: _Episode) -> None:
    """Mark the episode's last own step as cut by the budget (recorded prior steps stay as they are)."""
    if len(episode.steps) > episode.prefix_length:
        last = episode.steps[-1]
        episode.steps[-1] = replace(last, truncated=True, info={**last.info, "budget_exhausted": True})


def _advance(episode: _Episode, generation: Generation, prompter: Prompter, max_steps: int) -> None:
    """Apply one model reply to one episode: parse, step the environment, record the step."""
    completion = generation.text
    action = prompter.parse_action(completion)
    reward, terminated, env_truncated, info = 0.0, False, False, {}
    if action is None:
        observation = prompter.missing_action_feedback(episode.env_observation)
        info = {"parse_error": True}
    else:
        observation, reward, terminated, env_truncated, info = episode.env.step(action)
        episode.env_observation = observation
        episode.success = bool(info.get("success", False))
    truncated = not terminated and (env_truncated or len(episode.steps) + 1 >= max_steps)
    episode.turns.append(Turn(observation=episode.observation, reply=prompter.reply(completion)))
    episode.steps.append(
        Step(
            prompt=generation.prompt_text,
            completion=completion,
            action=action,
            observation=observation,
            reward=float(reward),
            terminated=bool(terminated),
            truncated=truncated,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            info=dict(info),
        )
    )
    episode.observation = observation


def make_jobs(tasks: Sequence[Task], samples_per_task: int, run_seed: int) -> list[EpisodeJob]:
    """n jobs per task with stable, distinct seeds (task-major order)."""
    return [
        EpisodeJob(task=task, sample_index=index, seed=derive_seed(run_seed, task.task_id, index))
        for task in tasks
        for index in range(samples_per_task)
    ]
