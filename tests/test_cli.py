"""The `leafe` command end to end: real environment, real models, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "sokoban_quickstart.yaml"


def _leafe(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leafe.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _episodes(run_dir: Path) -> dict[tuple[str, int], dict]:
    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    keyed = {(r["task"]["task_id"], r["sample_index"]): r for r in records}
    assert len(keyed) == len(records), "an episode was recorded twice"
    return keyed


def _tiny_args(model_dir: Path, out: Path, name: str) -> list[str]:
    return [
        str(QUICKSTART), f"name={name}", f"output_dir={out}", f"policy.model={model_dir}",
        "eval.num_tasks=6", "eval.samples_per_task=4", "eval.ks=[1,2,4]", "rollout.max_steps=4",
        "rollout.max_concurrent_episodes=2", "policy.max_new_tokens=12", "policy.temperature=1.0",
    ]


def _wait_for_episodes(process: subprocess.Popen, episodes_file: Path, count: int) -> None:
    """Return once ``episodes_file`` holds ``count`` episodes, ``process`` ended or 300 s passed."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if episodes_file.exists() and len(episodes_file.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    reference = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = _episodes(tmp_path / "reference")
    assert len(expected) == 24

    args = [sys.executable, "-m", "leafe.cli", "eval", *_tiny_args(tiny_model_dir, tmp_path, "killed")]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_episodes(process, tmp_path / "killed" / "episodes.jsonl", 6)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(_episodes(tmp_path / "killed"))
    assert 6 <= done_before < 24

    resumed = _leafe("eval", *_tiny_args(tiny_model_dir, tmp_path, "killed"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["details"]["throughput_this_invocation"]["episodes"] == 24 - done_before

    got = _episodes(tmp_path / "killed")
    assert got.keys() == expected.keys()
    for key, record in expected.items():
        assert [s["completion"] for s in got[key]["steps"]] == [s["completion"] for s in record["steps"]], key
    reference_metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    for key in ("mean", "ci_low", "ci_high", "per_task"):
        assert metrics[key] == reference_metrics[key], key


def test_ctrl_c_stops_with_a_short_message_and_keeps_finished_episodes(tiny_model_dir, tmp_path):
    args = [sys.executable, "-m", "leafe.cli", "eval", *_tiny_args(tiny_model_dir, tmp_path, "interrupted")]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_episodes(process, tmp_path / "interrupted" / "episodes.jsonl", 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted; finished work is saved: rerun the same command to resume" in err
    assert "Traceback" not in err
    assert 2 <= len(_episodes(tmp_path / "interrupted")) < 24


def test_changed_config_refuses_the_old_run_dir(tiny_model_dir, tmp_path):
    args = _tiny_args(tiny_model_dir, tmp_path, "r") + ["eval.num_tasks=1", "eval.samples_per_task=1", "eval.ks=[1]", "rollout.max_steps=1"]
    assert _leafe("eval", *args).returncode == 0
    changed = _leafe("eval", *args, "policy.temperature=0.3")
    assert changed.returncode == 2 and "policy.temperature" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.slow
def test_eval_with_the_embedded_model_writes_every_artifact(tmp_path):
    result = _leafe(
        "eval", str(QUICKSTART), "name=e2e", f"output_dir={tmp_path}", "eval.num_tasks=2", "eval.samples_per_task=2",
        "eval.ks=[1,2]", "rollout.max_steps=2", "policy.max_new_tokens=24",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "e2e"
    for name in ("config.yaml", "meta.json", "leafe.log", "episodes.jsonl", "metrics.json", "passk.png", "summary.md"):
        assert (run / name).exists(), name
    assert "Pass@k" in result.stdout
    episodes = _episodes(run)
    assert len(episodes) == 4
    for record in episodes.values():
        assert 1 <= len(record["steps"]) <= 2
        for step in record["steps"]:
            assert step["prompt"].endswith("Thought:") and step["prompt_tokens"] > 50
            assert 0 < step["completion_tokens"] <= 24
            assert step["observation"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ks"] == [1, 2] and len(metrics["mean"]) == 2
    assert metrics["details"]["throughput_this_invocation"]["generated_tokens_per_s"] > 0


def test_check_env_command():
    result = _leafe("check-env", str(QUICKSTART), "--tasks", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("OK") == 2


def test_unloadable_model_is_a_clear_error_and_leaves_no_run_dir(tmp_path):
    result = _leafe("eval", str(QUICKSTART), "name=bad", f"output_dir={tmp_path}", f"policy.model={tmp_path / 'no-such-model'}")
    assert result.returncode == 2
    assert "policy.model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()


def test_explore_writes_trees_summary_and_viewer_then_resumes(tiny_model_dir, tmp_path):
    args = [
        str(QUICKSTART), "name=explore", f"output_dir={tmp_path}", f"policy.model={tiny_model_dir}",
        "explore.reflector=env", "explore.num_tasks=2", "explore.max_env_steps=8", "rollout.max_steps=4",
        "policy.max_new_tokens=8",
    ]
    result = _leafe("explore", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "explore"
    trees = [json.loads(line) for line in (run / "trees.jsonl").read_text().splitlines()]
    assert sorted(t["task"]["task_id"] for t in trees) == ["sokoban/train/0001", "sokoban/train/0002"]  # 0000 is the example
    assert all(t["method"] == "leafe" and t["reflector"] == "env" for t in trees)
    summary = json.loads((run / "explore_summary.json").read_text())["summary"]
    assert summary["tasks"] == 2 and summary["env_steps"] == sum(
        len(node["steps"]) for t in trees for node in t["nodes"]
    ) <= 16
    assert (run / "view.html").exists() and (run / "explore_summary.md").exists()

    again = _leafe("explore", *args, "explore.num_tasks=3")  # resumes: explores only the new task
    assert again.returncode == 0, again.stderr[-3000:]
    lines = (run / "trees.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines[:2] == [json.dumps(t) for t in trees]


def test_check_env_rejects_a_non_positive_task_count():
    result = _leafe("check-env", str(QUICKSTART), "--tasks", "0")
    assert result.returncode == 2 and "must be >= 1" in result.stderr and "Traceback" not in result.stderr


def test_check_env_command_on_the_coding_quickstart():
    result = _leafe("check-env", str(QUICKSTART.with_name("coding_quickstart.yaml")), "--tasks", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("coding") == 2 and result.stdout.count("OK") == 2
    bad = _leafe("check-env", str(QUICKSTART.with_name("coding_quickstart.yaml")), "env.source=mbpp", "env.data_path=/no/such.jsonl")
    assert bad.returncode == 2 and "env.data_path: /no/such.jsonl does not exist" in bad.stderr and "Traceback" not in bad.stderr
