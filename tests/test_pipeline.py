"""`leafe run` end to end with the embedded model: every stage of two rounds runs, a kill during
SFT resumes without redoing finished stages, and the report compares base and trained models."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "sokoban_quickstart.yaml"


def _args(out: Path) -> list[str]:
    # Rooms solvable in at most 3 moves, so the 135M model solves some within the budget and
    # there is data to train on (2-3 of the 8 rooms and 4-6 examples a round when measured). One epoch at batch 2
    # still gives SFT several steps, so the kill lands between checkpoints.
    return [
        str(QUICKSTART), "name=pipe", f"output_dir={out}", "env.max_solution_length=3",
        "explore.num_tasks=8", "explore.max_env_steps=12", "explore.max_tasks_in_flight=8",
        "eval.num_tasks=1", "eval.samples_per_task=2", "eval.ks=[1,2]", "rollout.max_steps=4",
        "sft.save_steps=1", "sft.epochs=1", "sft.batch_size=2", "sft.lora_r=4", "run.rounds=2",
    ]


@pytest.mark.slow
@pytest.mark.minutes(9)
def test_leafe_run_survives_a_kill_during_sft_and_reports(tmp_path):
    run_dir = tmp_path / "pipe"
    command = [sys.executable, "-m", "leafe.cli", "run", *_args(tmp_path)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = run_dir / "round-1" / "sft" / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    deadline = time.time() + 900
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    _out, err = first.communicate()
    assert checkpoint.exists(), f"never reached SFT: {err[-3000:]}"
    assert not (run_dir / "round-1" / "sft" / "stage.json").exists(), "SFT finished before the kill"

    finished = {
        stage: (run_dir / stage / "stage.json").stat().st_mtime_ns
        for stage in ("eval-base", "round-1/explore", "round-1/data")
    }
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    # Finished stages were not redone; SFT picked up its checkpoint.
    assert {stage: (run_dir / stage / "stage.json").stat().st_mtime_ns for stage in finished} == finished
    assert "sft: resuming from" in (run_dir / "leafe.log").read_text()

    report = json.loads((run_dir / "report.json").read_text())
    round_1, round_2 = report["rounds"]
    assert round_1["explore"]["solved_tasks"] > 0
    assert round_1["data"]["counterfactual"] + round_1["data"]["rehearsal"] > 0
    assert round_1["sft"]["steps"] >= 2 and Path(round_1["model"]).is_dir()
    assert set(report["pass_at_k"]) == {"base", "LEAFE round 1", "LEAFE round 2"}
    # Round 2 explored with round 1's model and trained it further (or kept it, with no data).
    explore_2 = json.loads((run_dir / "round-2" / "explore" / "stage.json").read_text())
    assert round_1["model"] == str(run_dir / "round-1" / "sft" / "model")
    assert explore_2["key"]["model"] == "round-1/sft/model"  # recorded relative to the run: it may move
    if "skipped" in round_2["sft"]:
        assert round_2["model"] == round_1["model"]
    else:
        assert round_2["sft"]["base_model"] != round_1["sft"]["base_model"] and Path(round_2["model"]).is_dir()
        assert len((run_dir / "round-2" / "eval" / "episodes.jsonl").read_text().splitlines()) == 2
    markdown = (run_dir / "report.md").read_text()
    assert "base Pass@k" in markdown and "LEAFE round 1 Pass@k" in markdown
    assert (run_dir / "passk.png").stat().st_size > 0
    assert 'href="round-1/explore/view.html"' in (run_dir / "view.html").read_text()
    from leafe.eval.compare import find_evaluations, write_comparison

    evaluations = find_evaluations(str(run_dir))  # `leafe compare` reads every evaluation of the run
    assert [e.label for e in evaluations] == ["pipe: base", "pipe: LEAFE round 1", "pipe: LEAFE round 2"]
    assert evaluations[0].details["samples_per_task"] == 2 and evaluations[1].details["samples_per_task"] == 2
    assert "Difference from pipe: base" in write_comparison(evaluations, tmp_path / "cmp", "t")["markdown"].read_text()
    records = [json.loads(line) for line in (run_dir / "round-1" / "data" / "sft.jsonl").read_text().splitlines()]
    assert records and all("Lessons from your earlier attempts" not in r["prompt"] for r in records)
    # The trained checkpoint was evaluated: its episodes exist.
    assert len((run_dir / "round-1" / "eval" / "episodes.jsonl").read_text().splitlines()) == 2

    # Moved and renamed with its last evaluation missing: the rerun under the new name evaluates
    # the model in the moved directory (the records name the old path) and redoes nothing else.
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    last_eval = "round-1/eval" if "skipped" in round_2["sft"] else "round-2/eval"
    shutil.rmtree(moved / last_eval)
    kept = ["eval-base", *(f"round-{r}/{s}" for r in (1, 2) for s in ("explore", "data", "sft"))]
    finished = {stage: (moved / stage / "stage.json").stat().st_mtime_ns for stage in kept}
    third = subprocess.run([a if a != "name=pipe" else "name=moved" for a in command], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    assert {stage: (moved / stage / "stage.json").stat().st_mtime_ns for stage in kept} == finished
    assert len((moved / last_eval / "episodes.jsonl").read_text().splitlines()) == 2
    assert json.loads((moved / "report.json").read_text())["rounds"][1]["model"].startswith(str(moved))


def test_a_round_without_training_data_keeps_its_model(tmp_path):
    """No example of the kinds the objective trains on: SFT is skipped, the model carries over."""
    from leafe.config import config_from_dict
    from leafe.method.distill import export_record
    from leafe.pipeline import _Policies, _train
    from leafe.types import SFTExample

    cfg = config_from_dict({"sft": {"objective": "cf_only"}})
    rehearsal = SFTExample("rehearsal", "Room. Thought:", " go\nAction: up\n\n", "t0", 0, 0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text(json.dumps(export_record(rehearsal, 1.0)) + "\n")
    result = _train(cfg, "some/model", "some/model", "policy.model", tmp_path, _Policies(cfg))
    assert result["model_dir"] == "some/model" and result["steps"] == 0
    assert "counterfactual" in result["skipped"]
    assert json.loads((tmp_path / "sft" / "stage.json").read_text())["result"] == result


def test_a_later_rounds_model_that_cannot_load_names_the_round_not_policy_model(tmp_path):
    """The model of round 2 is round 1's SFT output: when that folder is gone (a run directory
    copied without it), training and loading it name the round that wrote it."""
    from leafe.config import ConfigError, config_from_dict
    from leafe.method.distill import export_record
    from leafe.pipeline import _Policies, _train
    from leafe.types import SFTExample

    cfg = config_from_dict({"policy": {"device": "cpu"}})
    gone, field = str(tmp_path / "round-1" / "sft" / "model"), "the model round 1 trained (round-1/sft)"
    example = SFTExample("counterfactual", "Room. Thought:", " go\nAction: up\n\n", "t0", 0, 0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text(json.dumps(export_record(example, 1.0)) + "\n")
    with pytest.raises(ConfigError, match=r"^the model round 1 trained \(round-1/sft\): no such model folder"):
        _train(cfg, gone, gone, field, tmp_path, _Policies(cfg))
    with pytest.raises(ConfigError, match=r"^the model round 1 trained \(round-1/sft\): no such model folder"):
        _Policies(cfg).get(gone, field)


def test_stage_records_name_a_model_inside_the_run_by_its_place_in_it(tmp_path):
    """A moved run matches its records: a model inside the run is keyed relative to it (even
    deleted since, or a symlink to elsewhere); anything else as given; keys written by an
    earlier leafe (absolute paths) still match as ``legacy``."""
    from leafe.pipeline import _finish, _finished, _model_key

    run = tmp_path / "run"
    trained = run / "round-1" / "sft" / "model"
    trained.mkdir(parents=True)
    assert _model_key(str(trained), run) == "round-1/sft/model"
    assert _model_key(str(run / "round-2" / "sft" / "model"), run) == "round-2/sft/model"  # not there (any more)
    elsewhere = tmp_path / "big-disk" / "model"
    elsewhere.mkdir(parents=True)
    (run / "round-2").mkdir()
    (run / "round-2" / "model").symlink_to(elsewhere)
    assert _model_key(str(run / "round-2" / "model"), run) == "round-2/model"
    for outside in (str(elsewhere), "smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B-Instruct"):
        assert _model_key(outside, run) == outside

    stage = run / "round-2" / "eval"
    _finish(stage, {"eval": 1, "model": str(trained)}, {"pass": 1})  # as an earlier leafe recorded it
    assert _finished(stage, {"eval": 1, "model": "round-1/sft/model"}) is None
    assert _finished(stage, {"eval": 1, "model": "round-1/sft/model"}, legacy={"eval": 1, "model": str(trained)}) == {"pass": 1}
    assert _finished(stage, {"eval": 2, "model": "round-1/sft/model"}, legacy={"eval": 2, "model": str(trained)}) is None


def test_reflexion_evaluation_is_refused_before_anything_is_written(tmp_path):
    """`leafe run` evaluates by sampling; eval.method=reflexion would be ignored silently."""
    from leafe.config import ConfigError, config_from_dict
    from leafe.pipeline import run_pipeline

    cfg = config_from_dict({"name": "r", "output_dir": str(tmp_path), "eval": {"method": "reflexion"}})
    with pytest.raises(ConfigError, match="eval.method='reflexion': `leafe run` evaluates its models by sampling"):
        run_pipeline(cfg)
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_does_not_need_its_start_model_any_more(tmp_path):
    """A finished run copied elsewhere (its base model folder gone, no GPU) still rebuilds its
    report; a new run with that model fails before anything is written."""
    from leafe.config import ConfigError, config_from_dict
    from leafe.pipeline import _start_model, run_pipeline

    moved = str(tmp_path / "moved-model")
    cfg = config_from_dict({"name": "r", "output_dir": str(tmp_path), "policy": {"model": moved, "device": "cpu"}})
    assert _start_model(cfg, check=False) == (moved, "policy.model")
    with pytest.raises(ConfigError, match="policy.model: no such model folder"):
        run_pipeline(cfg)
    assert not (tmp_path / "r").exists()


def test_an_edited_stage_record_or_data_file_is_handled_on_resume(tmp_path):
    """A stage.json that cannot be read makes the stage run again; an sft.jsonl leafe did not
    write is an error naming it, not a traceback."""
    from leafe.config import ConfigError, config_from_dict
    from leafe.pipeline import _finished, _Policies, _train

    (tmp_path / "stage.json").write_text("{torn")
    assert _finished(tmp_path, {"k": 1}) is None
    cfg = config_from_dict({})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text('{"kind": "bogus"}\n')
    with pytest.raises(ConfigError, match="data/sft.jsonl: missing field .*; was it edited\\? delete .*data to build"):
        _train(cfg, "some/model", "some/model", "policy.model", tmp_path, _Policies(cfg))
