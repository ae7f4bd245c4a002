"""Play episodes and explore tasks on Ray actors (``workers.num > 1``).

This process keeps everything that touches the run directory. It deals the tasks out to the
workers, receives each finished episode (or experience tree) as soon as a worker streams it
back, and hands it to the same callback a one-process run uses. Progress bars, the files and
resuming after a kill are therefore unchanged; only where the model runs changes::

    this process                                  Ray actor i (i < workers.num)
    jobs / tasks --shard_by_task--> share i  -->  EpisodeWorker(config): environments + its own policy
    on_finish(episode) / on_tree(tree)  <-- one record per finished episode / tree --

Every sample of a task goes to the same worker, so the samples share that worker's prefix
cache. Workers live for one call (one evaluation, one exploration); a command may start them
ahead of it (:func:`start_workers`), so that a model they cannot load fails before anything is
written. Without ``workers.ray_address`` a new Ray is started on this machine (and stops when
this process exits); with it, the running cluster at that address is joined. On a cluster every
node needs leafe installed and the config's paths (model directory, data) at the same place.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from leafe.config import ConfigError, ExperimentConfig, PolicyConfig, WorkersConfig, config_from_dict
from leafe.method.tree import ExperienceTree
from leafe.policy.base import Generation, GenerationRequest, GenerationStream, SamplingParams
from leafe.policy.errors import BackendError, RequestTooLarge
from leafe.policy.memory import peak_rss_mib
from leafe.rollout import EpisodeJob
from leafe.types import Task, Trajectory

logger = logging.getLogger(__name__)

T = TypeVar("T")

PEAK_RSS_TIMEOUT_S = 30.0  # how long finished workers may take to report their peak memory


def shard_by_task(items: Sequence[T], task_id: Callable[[T], str], shards: int) -> list[list[T]]:
    """``items`` split into at most ``shards`` non-empty lists.

    Tasks are dealt round-robin in the order they first appear; every item of a task lands in
    the same list, and each list keeps the items' order.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    dealt: dict[str, int] = {}
    out: list[list[T]] = [[] for _ in range(shards)]
    for item in items:
        key = task_id(item)
        if key not in dealt:
            dealt[key] = len(dealt) % shards
        out[dealt[key]].append(item)
    return [share for share in out if share]


def play_on_workers(cfg: ExperimentConfig, jobs: Sequence[EpisodeJob], on_finish: Callable[[Trajectory], None]) -> list[float]:
    """Play ``jobs`` on ``cfg.workers.num`` Ray actors; ``on_finish`` gets each trajectory here,
    as soon as its worker finishes it. Returns each worker's peak RSS in MiB (see
    :func:`_run_on_workers`)."""
    shares = shard_by_task(jobs, lambda job: job.task.task_id, cfg.workers.num)
    return _run_on_workers(cfg, "play", shares, lambda record: on_finish(Trajectory.from_dict(record)))


def explore_on_workers(cfg: ExperimentConfig, tasks: Sequence[Task], on_tree: Callable[[ExperienceTree], None]) -> None:
    """Explore ``tasks`` with ``cfg.explore`` on ``cfg.workers.num`` Ray actors; ``on_tree`` gets
    each tree here, as soon as its worker finishes it."""
    shares = shard_by_task(tasks, lambda task: task.task_id, cfg.workers.num)
    _run_on_workers(cfg, "explore", shares, lambda record: on_tree(ExperienceTree.from_dict(record)))


def check_model(policy: PolicyConfig, model: str, field: str) -> None:
    """Fail here, before any worker starts, on a model no worker could load (a local path to
    nothing, a folder without a model: :func:`check_model_reference`, as this node sees the
    paths). Converts the embedded model once, so the workers find it cached. A model served over
    HTTP (the ``openai`` backend) is the server's name, not checked."""
    from leafe.policy import check_before_loading, served_over_http
    from leafe.policy.embedded import resolve_model

    check_before_loading(policy, model, field, device=False)  # the device is each worker's
    if not served_over_http(policy):
        resolve_model(model)


class OnWorkers:
    """The policy of a command whose episodes play on Ray workers: this process loads no model,
    and generating here is a bug (each worker loads its own copy)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.name = f"ray-workers({model})"

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        raise RuntimeError(f"workers.num > 1: {self.model!r} generates on the Ray workers, not in this process")

    def stream(self, params: SamplingParams) -> GenerationStream:
        raise RuntimeError(f"workers.num > 1: {self.model!r} generates on the Ray workers, not in this process")


class EpisodeWorker:
    """One worker: its own environments and policy, built from the experiment config.

    Run as a Ray actor (:func:`_spawn` wraps it with ``ray.remote``). :meth:`play` and
    :meth:`explore` are generators: Ray streams each yielded record to the caller as soon as it
    is yielded.
    """

    def __init__(self, config: dict[str, Any], threads: int, cwd: str, explores: bool) -> None:
        if os.path.isdir(cwd):  # relative paths in the config mean what they mean to the caller
            os.chdir(cwd)
        import torch

        from leafe.agent import build_agent
        from leafe.envs import build_env
        from leafe.policy import load_policy_for

        torch.set_num_threads(threads)
        self.cfg = config_from_dict(config, source="workers")
        # An exception raised here would reach the caller only as "the actor died"; kept, it is
        # raised by the first call, which Ray hands to the caller as the exception itself.
        self.error: Exception | None = None
        self.judge: Any = None
        try:
            make_env, task_source = build_env(self.cfg.env)
            policy = load_policy_for("policy.model", self.cfg.policy, self.cfg.policy.model, who="a worker ")
            self.agent = build_agent(self.cfg, make_env, task_source, policy)
            settings = self.cfg.explore
            if explores and settings.method != "independent" and settings.reflector == "model" and settings.reflector_model:
                self.judge = load_policy_for("explore.reflector_model", self.cfg.policy, settings.reflector_model, who="a worker ")
        except Exception as error:  # noqa: BLE001 - handed to the caller by the first call
            self.error = error

    def ready(self) -> None:
        """Return once built; raise what building failed with."""
        if self.error is not None:
            raise self.error

    def peak_rss_mib(self) -> float:
        """This worker process's peak resident memory so far, in MiB (Linux: ``ru_maxrss`` in KiB)."""
        return peak_rss_mib()

    def play(self, jobs: list[EpisodeJob]) -> Iterator[dict[str, Any]]:
        """Each finished episode of ``jobs`` as a :meth:`Trajectory.to_dict` record."""
        from leafe.rollout import run_episodes

        if self.error is not None:
            raise self.error
        agent = self.agent

        def run(emit: Callable[[Any], None]) -> None:
            run_episodes(
                jobs, agent.make_env, agent.policy, agent.prompter, agent.sampling, max_steps=agent.max_steps,
                max_concurrent=self.cfg.rollout.max_concurrent_episodes, on_finish=lambda t: emit(t.to_dict()),
            )

        yield from _streamed(run)

    def explore(self, tasks: list[Task]) -> Iterator[dict[str, Any]]:
        """Each finished experience tree of ``tasks`` as a :meth:`ExperienceTree.to_dict` record."""
        from leafe.method.explore import explore_tasks, make_reflector

        if self.error is not None:
            raise self.error
        settings = self.cfg.explore
        reflector = None if settings.method == "independent" else make_reflector(settings, self.agent, self.judge)

        def run(emit: Callable[[Any], None]) -> None:
            explore_tasks(settings.method, tasks, self.agent, settings, self.cfg.seed, reflector, lambda tree: emit(tree.to_dict()))

        yield from _streamed(run)


class WorkerError(RuntimeError):
    """A Ray worker died or Ray lost it (killed, out of memory, node gone). The episodes and
    trees finished before are saved; rerunning the command resumes."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()


def _streamed(run: Callable[[Callable[[Any], None]], None]) -> Iterator[Any]:
    """Yield what ``run(emit)`` emits, as it emits it; re-raise what it raises.

    ``run`` works in a thread, because the rollout loop reports through callbacks while a Ray
    streaming method must yield.
    """
    out: queue.Queue[Any] = queue.Queue()

    def target() -> None:
        try:
            run(out.put)
        except BaseException as error:  # handed to the consumer, which re-raises it
            out.put(_Failed(error))
        else:
            out.put(_DONE)

    thread = threading.Thread(target=target, name="leafe-worker", daemon=True)
    thread.start()
    while (item := out.get()) is not _DONE:
        if isinstance(item, _Failed):
            raise item.error
        yield item
    thread.join()


@dataclass
class _Started:
    """Workers started ahead of their first call by :func:`start_workers`."""

    key: tuple[Any, ...]  # (config, explores): what the workers were built for
    workers: list[Any]


_started: _Started | None = None


def start_workers(cfg: ExperimentConfig, count: int, explores: bool) -> None:
    """Start ``min(count, workers.num)`` workers now and wait until each has built its
    environments and policy (and, when ``explores``, the explore reflector's model), so that a
    model no worker can load fails before the command records anything. The next
    :func:`play_on_workers` (``explores=False``) or :func:`explore_on_workers` (``explores=True``)
    of the same config plays on them; :func:`stop_workers` stops them if none does.

    Raises:
        ConfigError: Ray is missing or too small, or a worker could not build (the field named).
    """
    global _started
    stop_workers()
    count = min(count, cfg.workers.num)
    if count < 1:
        return
    ray = _connect(cfg.workers, count)
    workers = _spawn(ray, cfg, count, explores)
    try:
        for index, worker in enumerate(workers):
            _fetch(ray, worker.ready.remote(), index)
    except BaseException:
        _kill(ray, workers)
        raise
    _started = _Started((cfg.model_dump(mode="json"), explores), workers)


def stop_workers() -> None:
    """Stop the workers :func:`start_workers` left unused (a no-op if there are none)."""
    global _started
    taken, _started = _started, None
    if taken is not None:
        import ray

        _kill(ray, taken.workers)


def _kill(ray: Any, workers: Sequence[Any]) -> None:
    for worker in workers:
        ray.kill(worker)


def _spawn(ray: Any, cfg: ExperimentConfig, count: int, explores: bool) -> list[Any]:
    """``count`` new :class:`EpisodeWorker` actors built from ``cfg``."""
    threads = max(1, math.floor(cfg.workers.cpus))
    env_vars = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        # Ray forwards the workers' output here: their loading/merging progress bars would
        # interleave with this process's bars. Warnings and errors still come through.
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
    }
    if cfg.workers.gpus == 0:  # Ray no longer hides the GPUs from an actor that asked for none
        env_vars["CUDA_VISIBLE_DEVICES"] = ""
    env_vars.update({key: value for key, value in os.environ.items() if key.startswith("LEAFE_")})
    if cfg.policy.api_key_env in os.environ:  # an openai backend's key, as this process has it
        env_vars[cfg.policy.api_key_env] = os.environ[cfg.policy.api_key_env]
    actor = ray.remote(EpisodeWorker).options(
        num_cpus=cfg.workers.cpus, num_gpus=cfg.workers.gpus, runtime_env={"env_vars": env_vars}
    )
    return [actor.remote(cfg.model_dump(mode="json"), threads, os.getcwd(), explores) for _ in range(count)]


def _run_on_workers(cfg: ExperimentConfig, method: str, shares: list[list[Any]], handle: Callable[[Any], None]) -> list[float]:
    """Call ``method`` on one actor per share, and ``handle`` every streamed record in the order
    they arrive. The actors (those :func:`start_workers` left for this call, or new ones) are
    stopped on return or error. Returns the actors' peak RSS in MiB, asked once all have
    finished (``[]`` when there was nothing to do or they could not answer within
    ``PEAK_RSS_TIMEOUT_S``): the memory the model took, which this process's own peak does not show.

    A worker that dies does not stop the others: what they finish is still handled, then a
    :class:`WorkerError` is raised. Any other error stops them all at once.
    """
    global _started
    if not shares:
        return []
    ray = _connect(cfg.workers, len(shares))
    explores = method == "explore"
    taken, _started = _started, None
    if taken is not None and taken.key == (cfg.model_dump(mode="json"), explores) and len(taken.workers) >= len(shares):
        workers = taken.workers
    else:
        if taken is not None:
            _kill(ray, taken.workers)
        workers = _spawn(ray, cfg, len(shares), explores)
    logger.info("%s on %d Ray workers (%s CPUs, %s GPUs each)", method, len(shares), cfg.workers.cpus, cfg.workers.gpus)
    died: WorkerError | None = None
    try:
        streams = {getattr(worker, method).remote(share): index for index, (worker, share) in enumerate(zip(workers, shares))}
        while streams:
            ready, _ = ray.wait(list(streams), num_returns=1)
            for stream in ready:
                try:
                    ref = next(stream)
                except StopIteration:
                    del streams[stream]
                    continue
                try:
                    record = _fetch(ray, ref, streams[stream])
                except WorkerError as error:
                    died = died or error
                    del streams[stream]
                    continue
                handle(record)
        peaks = [] if died is not None else _peak_rss(ray, workers[: len(shares)])
    finally:
        _kill(ray, workers)
    if died is not None:
        raise died
    return peaks


def _peak_rss(ray: Any, workers: Sequence[Any]) -> list[float]:
    """Each of ``workers``' peak RSS in MiB, or ``[]`` if any of them cannot say in time (the
    figure is a report, never a reason to fail a finished call)."""
    try:
        return [float(peak) for peak in ray.get([w.peak_rss_mib.remote() for w in workers], timeout=PEAK_RSS_TIMEOUT_S)]
    except Exception as error:  # noqa: BLE001 - see the docstring
        logger.warning("could not read the Ray workers' peak memory: %s: %s", type(error).__name__, error)
        return []


def _fetch(ray: Any, ref: Any, index: int) -> Any:
    """The record behind ``ref``. What a worker raised is raised here: a :class:`ConfigError`
    or a backend's error (:class:`~leafe.policy.errors.BackendError`) as one, anything else as
    a RuntimeError chained to Ray's error, which holds the worker's traceback. A worker that
    died becomes a :class:`WorkerError`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        cause = _cause(error)
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if isinstance(cause, RequestTooLarge):
            raise RequestTooLarge(f"Ray worker {index}: {cause}") from None
        if isinstance(cause, BackendError):
            raise BackendError(f"Ray worker {index}: {cause}") from None
        if cause is not None:
            raise RuntimeError(f"Ray worker {index} failed: {type(cause).__name__}: {cause}") from error
        raise WorkerError(f"Ray worker {index} failed: {str(error).strip().splitlines()[-1]}") from None


def _cause(error: BaseException) -> BaseException | None:
    """The exception a worker's method raised, if Ray kept it (None when the worker died)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray."):
            return cause
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def _connect(workers: WorkersConfig, count: int) -> Any:
    """Ray, started here or joined at ``workers.ray_address``, checked to have room for
    ``count`` workers of ``workers.cpus`` CPUs and ``workers.gpus`` GPUs."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"workers.num: {workers.num} workers run on Ray, which is not installed: pip install 'leafe[ray]' (or ray)"
        ) from None
    # The first worker error is raised here; the others' unread errors need not be printed too.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if not ray.is_initialized():
        try:
            # "local": a new Ray on this machine, even if RAY_ADDRESS or an earlier `ray start` names another
            address = workers.ray_address or "local"
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = workers.ray_address or "this machine"
            raise ConfigError(f"workers.ray_address: cannot start or join Ray at {where}: {error}") from None
    total = ray.cluster_resources()
    for name, each, field in (("CPU", workers.cpus, "workers.cpus"), ("GPU", workers.gpus, "workers.gpus")):
        need, have = count * each, total.get(name, 0.0)
        if need > have + 1e-9:
            message = (f"workers.num: {count} workers x {field}={each:g} need {need:g} {name}s; "
                       f"the Ray cluster has {have:g} (lower workers.num or {field})")
            if workers.ray_address is None:
                raise ConfigError(message)
            logger.warning("%s; the workers wait until the cluster grows", message)
    return ray
