"""THE multi-turn agent loop. Evaluation, exploration and RL all collect episodes through it.

Many episodes run at once: every round, each active episode contributes one prompt, the policy
completes them all in one batched call, and each environment takes its step. Finished episodes
leave and queued ones take their place, so the batch stays full.

Per turn: prompt = task + recent history + current observation; the reply is parsed into an
action; a reply without an action costs a turn and comes back as feedback (never a crash); an
invalid action is reported by the environment itself. Each episode has a fixed interaction
budget of ``max_steps`` turns; hitting it marks the last step ``truncated``.

Every sample is reproducible: the seed of turn t of an episode is derived from the episode's
seed and t, and backends seed each request separately, so an episode's text does not depend on
which other episodes shared its batch (this is what makes interrupted runs resumable).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from leafe.envs.base import TextEnv
from leafe.policy.base import Generation, GenerationRequest, Policy, SamplingParams
from leafe.prompting import Prompter, Turn, missing_action_feedback, parse_action
from leafe.types import Step, Task, Trajectory


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (same parts -> same seed, any process)."""
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to play: a task, which of its n samples this is, and the episode seed."""

    task: Task
    sample_index: int
    seed: int


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


def _start(job: EpisodeJob, make_env: Callable[[], TextEnv]) -> _Episode:
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


def run_episodes(
    jobs: Iterable[EpisodeJob],
    make_env: Callable[[], TextEnv],
    policy: Policy,
    prompter: Prompter,
    sampling: SamplingParams,
    max_steps: int,
    max_concurrent: int = 64,
    on_finish: Callable[[Trajectory], None] | None = None,
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
    active: list[_Episode] = []
    finished: list[Trajectory] = []
    while pending or active:
        while pending and len(active) < max_concurrent:
            active.append(_start(pending.popleft(), make_env))
        requests = [
            GenerationRequest(
                prompt=prompter.build(ep.instruction, ep.turns, ep.observation),
                seed=derive_seed(ep.job.seed, len(ep.steps)),
            )
            for ep in active
        ]
        generations = policy.generate(requests, params)
        still_active = []
        for episode, generation in zip(active, generations):
            _advance(episode, generation, prompter, max_steps)
            if episode.steps[-1].terminated or episode.steps[-1].truncated:
                trajectory = episode.finish()
                finished.append(trajectory)
                if on_finish is not None:
                    on_finish(trajectory)
            else:
                still_active.append(episode)
        active = still_active
    return finished


def _advance(episode: _Episode, generation: Generation, prompter: Prompter, max_steps: int) -> None:
    """Apply one model reply to one episode: parse, step the environment, record the step."""
    completion = generation.text
    action = parse_action(completion)
    reward, terminated, env_truncated, info = 0.0, False, False, {}
    if action is None:
        observation = missing_action_feedback(episode.env_observation)
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
