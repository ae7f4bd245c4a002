"""Ray workers (``workers.num > 1``): real Ray on this machine, real models, the real CLI.

Each test that starts Ray runs ``leafe`` in a subprocess, so Ray starts and stops with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from leafe.config import ConfigError, config_from_dict
from leafe.workers import OnWorkers, check_model, shard_by_task

from .test_cli import QUICKSTART, REPO, _episodes, _leafe, _tiny_args

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install -e '.[ray]')")


def test_shard_by_task_keeps_each_task_on_one_worker_and_deals_tasks_round_robin():
    items = [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("b", 1), ("d", 0), ("c", 1)]
    shares = shard_by_task(items, lambda item: item[0], 2)
    assert shares == [[("a", 0), ("a", 1), ("c", 0), ("c", 1)], [("b", 0), ("b", 1), ("d", 0)]]
    assert shard_by_task(items[:2], lambda item: item[0], 3) == [[("a", 0), ("a", 1)]]  # no empty shares
    assert shard_by_task([], lambda item: item[0], 2) == []
    with pytest.raises(ValueError, match="shards"):
        shard_by_task(items, lambda item: item[0], 0)


def test_streamed_yields_what_the_callback_loop_emits_then_reraises_its_error():
    from leafe.workers import _streamed

    def run(emit):
        for value in range(3):
            emit(value)
        raise KeyError("boom")

    stream = _streamed(run)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="boom"):
        next(stream)
    assert list(_streamed(lambda emit: emit("only"))) == ["only"]


def test_workers_section_is_validated_with_the_field_named():
    assert config_from_dict({"workers": {"num": 3, "cpus": 0.5}}).workers.num == 3
    for bad in ({"num": 0}, {"cpus": 0}, {"gpus": -1}, {"nodes": 2}):
        with pytest.raises(ConfigError, match="workers"):
            config_from_dict({"workers": bad})


def test_the_command_process_generates_nothing_when_workers_play():
    from leafe.policy import GenerationRequest, SamplingParams

    policy = OnWorkers("some-model")
    with pytest.raises(RuntimeError, match="Ray workers"):
        policy.generate([GenerationRequest(prompt="Hello", seed=1)], SamplingParams(max_new_tokens=3))
    with pytest.raises(RuntimeError, match="Ray workers"):
        policy.stream(SamplingParams(max_new_tokens=3))


def test_ray_client_addresses_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="workers.ray_address"):
        config_from_dict({"workers": {"ray_address": "ray://head:10001"}})
    assert config_from_dict({"workers": {"ray_address": "auto"}}).workers.ray_address == "auto"


def test_check_model_refuses_a_missing_path_before_any_worker_starts(tmp_path):
    policy = config_from_dict({}).policy
    (tmp_path / "config.json").write_text("{}")
    check_model(policy, str(tmp_path), "policy.model")  # a model folder: the workers get to load it
    with pytest.raises(ConfigError, match="policy.model: no such model folder"):
        check_model(policy, str(tmp_path / "missing"), "policy.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="policy.model: .*empty holds no config.json"):
        check_model(policy, str(tmp_path / "empty"), "policy.model")
    served = config_from_dict({"policy": {"base_url": "http://localhost:8000/v1"}}).policy
    check_model(served, "/models/on-the-server", "policy.model")  # the server's name for its model


@needs_ray
def test_eval_on_two_workers_plays_the_one_process_episodes_and_resumes(tiny_model_dir, tmp_path):
    local = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "local"))
    assert local.returncode == 0, local.stderr[-2000:]
    workers = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "ray"), "workers.num=2")
    assert workers.returncode == 0, workers.stderr[-3000:]
    expected, got = _episodes(tmp_path / "local"), _episodes(tmp_path / "ray")
    assert len(expected) == 24 and got.keys() == expected.keys()
    for key, record in expected.items():
        assert [s["completion"] for s in got[key]["steps"]] == [s["completion"] for s in record["steps"]], key
    assert "play on 2 Ray workers" in (tmp_path / "ray" / "leafe.log").read_text()
    local_metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    ray_metrics = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    for key in ("mean", "ci_low", "ci_high", "per_task"):
        assert ray_metrics[key] == local_metrics[key], key

    # A run killed after 10 episodes resumes on the workers (and a one-process run made it).
    episodes_file = tmp_path / "local" / "episodes.jsonl"
    episodes_file.write_text("".join(episodes_file.read_text().splitlines(keepends=True)[:10]))
    resumed = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "local"), "workers.num=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    throughput = metrics["details"]["throughput_this_invocation"]
    assert throughput["episodes"] == 14
    # The workers hold the models: their peak memory is reported next to this process's own.
    assert throughput["worker_peak_rss_mib"] > 100 and "worker_peak_rss_mib" not in local_metrics["details"]["throughput_this_invocation"]
    assert _episodes(tmp_path / "local") == expected

    # A finished run's rerun starts no workers: these would not fit in Ray and would be refused.
    again = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "local"), "workers.num=2", "workers.cpus=4096")
    assert again.returncode == 0, again.stderr[-3000:]


@needs_ray
@pytest.mark.parametrize("judge", [False, True])  # True: each worker loads the reflector's model too
def test_explore_on_two_workers_grows_the_one_process_trees(tiny_model_dir, tmp_path, judge):
    reflector = ["explore.reflector=model", f"explore.reflector_model={tiny_model_dir}"] if judge else ["explore.reflector=env"]
    args = [
        str(QUICKSTART), f"output_dir={tmp_path}", f"policy.model={tiny_model_dir}", *reflector,
        "explore.num_tasks=3", "explore.max_env_steps=8", "rollout.max_steps=4", "policy.max_new_tokens=8",
    ]
    local = _leafe("explore", *args, "name=local")
    assert local.returncode == 0, local.stderr[-3000:]
    workers = _leafe("explore", *args, "name=ray", "workers.num=2")
    assert workers.returncode == 0, workers.stderr[-3000:]

    def trees(name: str) -> dict[str, dict]:
        records = [json.loads(line) for line in (tmp_path / name / "trees.jsonl").read_text().splitlines()]
        return {record["task"]["task_id"]: record for record in records}

    assert "explore on 2 Ray workers" in (tmp_path / "ray" / "leafe.log").read_text()
    assert len(trees("local")) == 3 and trees("ray") == trees("local")
    assert {tree["reflector"] for tree in trees("ray").values()} == {"model" if judge else "env"}
    summary = lambda name: json.loads((tmp_path / name / "explore_summary.json").read_text())["summary"]  # noqa: E731
    assert summary("ray") == summary("local")
    again = _leafe("explore", *args, "name=ray", "workers.num=2", "workers.cpus=4096")  # finished: no workers start
    assert again.returncode == 0, again.stderr[-3000:]


@needs_ray
def test_worker_errors_are_clear_and_leave_no_traceback(tiny_model_dir, tmp_path):
    too_many = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "many"), "workers.num=2", "workers.cpus=4096")
    assert too_many.returncode == 2, too_many.stderr[-2000:]
    assert "workers.num" in too_many.stderr and "Traceback" not in too_many.stderr

    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # passes this node's checks; the workers fail to load it
    unloadable = _leafe("eval", *_tiny_args(empty, tmp_path, "empty"), "workers.num=2")
    assert unloadable.returncode == 2, unloadable.stderr[-2000:]
    assert "policy.model" in unloadable.stderr and "a worker cannot load" in unloadable.stderr
    assert "Traceback" not in unloadable.stderr
    assert not (tmp_path / "empty").exists()  # the workers failed before the run was recorded


@pytest.mark.parametrize("command, extra", [("grpo", []), ("eval", ["eval.method=reflexion"]), ("early-experience", [])])
def test_commands_that_play_in_one_process_refuse_workers(tiny_model_dir, tmp_path, command, extra):
    result = _leafe(command, *_tiny_args(tiny_model_dir, tmp_path, "one"), *extra, "workers.num=2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "workers.num" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "one").exists()



def _descendants_named(pid: int, prefix: str) -> list[int]:
    """Processes under ``pid`` (children, grandchildren, ...) whose command line starts with
    ``prefix``; only this test's own Ray, never another test's."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found = []
    for child in parents:
        ancestor = parents.get(child)
        while ancestor not in (None, 0, 1, pid):
            ancestor = parents.get(ancestor)
        if ancestor == pid:
            try:
                if open(f"/proc/{child}/cmdline").read().startswith(prefix):
                    found.append(child)
            except OSError:
                continue
    return found


@needs_ray
def test_a_worker_that_dies_stops_the_command_cleanly_and_a_rerun_finishes(tiny_model_dir, tmp_path):
    args = [*_tiny_args(tiny_model_dir, tmp_path, "dies"), "eval.samples_per_task=8", "eval.ks=[1,8]",
            "rollout.max_steps=8", "policy.max_new_tokens=24", "workers.num=2"]
    log = (tmp_path / "stderr.txt").open("w")  # a file, not a pipe: nobody reads it until the end
    process = subprocess.Popen([sys.executable, "-m", "leafe.cli", "eval", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    episodes_file = tmp_path / "dies" / "episodes.jsonl"
    deadline, victims = time.time() + 300, []
    while time.time() < deadline and process.poll() is None:
        victims = _descendants_named(process.pid, "ray::EpisodeWorker.play")
        if victims and episodes_file.exists() and episodes_file.read_text():
            break
        time.sleep(0.1)
    assert victims, "no worker was playing"
    try:
        os.kill(victims[0], signal.SIGKILL)
    except ProcessLookupError:
        pytest.fail("the worker exited before it could be killed")
    process.wait(timeout=300)
    log.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 1, err[-3000:]
    assert "Ray worker" in err and "rerun the same command to resume" in err and "Traceback" not in err
    done_before = len(_episodes(tmp_path / "dies"))
    assert 24 <= done_before < 48  # the other worker still finished its 3 rooms x 8 samples

    rerun = _leafe("eval", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(_episodes(tmp_path / "dies")) == 48
