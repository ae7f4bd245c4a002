"""``leafe eval``: n independent episodes per test task, Pass@k with bootstrap CIs, a report.

Episodes are appended to ``episodes.jsonl`` as they finish; a rerun of the same run directory
loads them and plays only the missing ones. Because every episode's sampling seed is derived
from (run seed, task, sample index) and backends seed each request separately, the resumed run
gives the same episodes, and so the same numbers, as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from leafe.agent import Agent
from leafe.config import ConfigError, ExperimentConfig
from leafe.eval.passk import PassAtK, compute_pass_at_k
from leafe.eval.report import print_table, write_report
from leafe.policy.memory import peak_rss_mib
from leafe.rollout import EpisodeJob, make_jobs, run_episodes
from leafe.runs import RunDir, append_jsonl, read_jsonl
from leafe.types import Task, Trajectory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    """Work done by this invocation (episodes loaded from disk are not counted).

    ``peak_rss_mib`` is this process's peak memory; with Ray workers, which hold the models,
    ``worker_peak_rss_mib`` is the largest of theirs (None without workers, or when they could
    not report it)."""

    episodes: int
    env_steps: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    peak_rss_mib: float
    worker_peak_rss_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        rate = (lambda amount: round(amount / self.seconds, 2) if self.seconds > 0 else None)
        return {
            "episodes": self.episodes,
            "env_steps": self.env_steps,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 1),
            "generated_tokens_per_s": rate(self.completion_tokens),
            "prompt_tokens_per_s": rate(self.prompt_tokens),
            "env_steps_per_s": rate(self.env_steps),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            **({} if self.worker_peak_rss_mib is None else {"worker_peak_rss_mib": round(self.worker_peak_rss_mib, 1)}),
        }


EPISODES_FILE = "episodes.jsonl"
Finished = dict[tuple[str, int], dict[str, Any]]  # episode records by (task id, sample index)


def pending_jobs(cfg: ExperimentConfig, run_path: Path, tasks: Sequence[Task]) -> tuple[list[EpisodeJob], Finished, list[EpisodeJob]]:
    """(every job of the evaluation on ``tasks``, the episodes already in ``run_path``, the jobs
    still to play)."""
    jobs = make_jobs(tasks, cfg.eval.samples_per_task, cfg.seed)
    try:
        finished = {(record["task"]["task_id"], record["sample_index"]): record for record in read_jsonl(run_path / EPISODES_FILE)}
    except (KeyError, TypeError) as error:
        raise ConfigError(f"{run_path / EPISODES_FILE}: a record without its task or sample index ({error}); was the file "
                          "edited? pass --fresh to start the evaluation over") from None
    return jobs, finished, [job for job in jobs if (job.task.task_id, job.sample_index) not in finished]


def evaluate(cfg: ExperimentConfig, run: RunDir, agent: Agent, tasks: Sequence[Task]) -> PassAtK:
    """Play the missing episodes of the evaluation on ``tasks``, then compute and write Pass@k.

    With ``workers.num > 1`` the episodes play on Ray workers (:mod:`leafe.workers`) and
    ``agent`` is not used to play them."""
    jobs, finished, todo = pending_jobs(cfg, run.path, tasks)
    episodes_file = run.path / EPISODES_FILE
    logger.info("eval: %d episodes wanted, %d already finished, %d to play", len(jobs), len(jobs) - len(todo), len(todo))

    played: list[Trajectory] = []
    worker_peaks: list[float] = []
    started = time.perf_counter()
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="eval episodes", unit="ep") as bar:

        def record(trajectory: Trajectory) -> None:
            record_dict = trajectory.to_dict()
            append_jsonl(episodes_file, record_dict)
            finished[(trajectory.task.task_id, trajectory.sample_index)] = record_dict
            played.append(trajectory)
            bar.update(1)
            bar.set_postfix(solved=sum(t.success for t in played))

        if todo and cfg.workers.num > 1:
            from leafe.workers import play_on_workers

            worker_peaks = play_on_workers(cfg, todo, on_finish=record)
        elif todo:
            run_episodes(
                todo,
                agent.make_env,
                agent.policy,
                agent.prompter,
                agent.sampling,
                max_steps=agent.max_steps,
                max_concurrent=cfg.rollout.max_concurrent_episodes,
                on_finish=record,
            )
    throughput = Throughput(
        episodes=len(played),
        env_steps=sum(1 for t in played for step in t.steps if step.action is not None),
        prompt_tokens=sum(t.prompt_tokens for t in played),
        completion_tokens=sum(t.completion_tokens for t in played),
        seconds=time.perf_counter() - started,
        peak_rss_mib=peak_rss_mib(),
        worker_peak_rss_mib=max(worker_peaks) if worker_peaks else None,
    )

    trajectories = [Trajectory.from_dict(finished[(job.task.task_id, job.sample_index)]) for job in jobs]
    counts: dict[str, tuple[int, int]] = {}
    for trajectory in trajectories:
        n, c = counts.get(trajectory.task.task_id, (0, 0))
        counts[trajectory.task.task_id] = (n + 1, c + int(trajectory.success))
    result = compute_pass_at_k(
        counts, cfg.eval.ks, num_bootstrap=cfg.eval.num_bootstrap, confidence=cfg.eval.confidence, seed=cfg.seed
    )
    details = _details(cfg, trajectories, throughput)
    title = f"{cfg.name}: {cfg.policy.model} on {cfg.env.name} ({cfg.eval.split})"
    write_report(result, run.path, title=title, details=details, name=cfg.policy.model)
    print_table({cfg.policy.model: result})
    logger.info("eval done: %s", details)
    return result


def _details(cfg: ExperimentConfig, trajectories: list[Trajectory], throughput: Throughput) -> dict[str, Any]:
    steps = [len(t.steps) for t in trajectories]
    all_steps = [step for t in trajectories for step in t.steps]
    return {
        "model": cfg.policy.model,
        "backend": cfg.policy.backend,
        "env": cfg.env.name,
        "split": cfg.eval.split,
        "tasks": len({t.task.task_id for t in trajectories}),
        "samples_per_task": cfg.eval.samples_per_task,
        "max_steps": cfg.rollout.max_steps,
        "temperature": cfg.policy.temperature,
        "seed": cfg.seed,
        "episodes": len(trajectories),
        "success_rate": round(sum(t.success for t in trajectories) / len(trajectories), 4),
        "mean_steps": round(sum(steps) / len(steps), 2),
        "mean_model_tokens": round(sum(t.prompt_tokens + t.completion_tokens for t in trajectories) / len(trajectories), 1),
        "parse_failure_rate": round(sum(s.action is None for s in all_steps) / max(1, len(all_steps)), 4),
        "invalid_action_rate": round(sum(bool(s.info.get("invalid_action")) for s in all_steps) / max(1, len(all_steps)), 4),
        "throughput_this_invocation": throughput.to_dict(),
    }
