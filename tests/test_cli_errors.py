"""Bad input to the `leafe` command: a clear error naming the field or file, exit status 2, no
traceback, and nothing loaded or recorded first (in-process, so each case takes well under a
second: none of them may load a model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leafe.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "sokoban_quickstart.yaml")
GRPO = str(REPO / "configs" / "sokoban_grpo.yaml")
CODING = str(REPO / "configs" / "coding_quickstart.yaml")


def _error(capsys, *argv: str) -> str:
    """stderr of a `leafe` call that must fail with status 2 and no traceback."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_overrides_after_an_option_are_overrides(capsys, tmp_path):
    err = _error(capsys, "eval", QUICKSTART, "--fresh", f"output_dir={tmp_path}", "eval.num_tasks=0")
    assert "eval.num_tasks" in err
    with pytest.raises(SystemExit):
        main(["eval", QUICKSTART, "--fresh", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "run", "grpo", "explore"])
def test_a_missing_model_fails_before_the_run_directory_is_made(capsys, tmp_path, command):
    config = GRPO if command == "grpo" else QUICKSTART
    err = _error(capsys, command, config, f"output_dir={tmp_path}", "name=x", f"policy.model={tmp_path / 'nope'}")
    assert f"policy.model: no such model folder: {tmp_path / 'nope'}" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["eval", "run", "grpo"])
def test_a_device_torch_cannot_use_names_policy_device(capsys, tmp_path, command):
    config = GRPO if command == "grpo" else QUICKSTART
    err = _error(capsys, command, config, f"output_dir={tmp_path}", "name=x", "policy.device=cuda")
    assert "policy.device: 'cuda' requested" in err
    assert not (tmp_path / "x").exists()


def test_an_unusable_output_dir_is_refused_before_anything_loads(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "output_dir: " in _error(capsys, "eval", QUICKSTART, f"output_dir={tmp_path / 'afile'}")
    assert "name: the run directory" in _error(capsys, "eval", QUICKSTART, f"output_dir={tmp_path}", "name=afile")


def test_a_config_with_a_repeated_section_is_refused(capsys, tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("policy:\n  temperature: 0.2\npolicy:\n  top_p: 0.9\n")
    assert "the key 'policy' appears twice" in _error(capsys, "eval", str(config))
    assert "must be a number, not true/false" in _error(capsys, "eval", QUICKSTART, "eval.num_tasks=true")
    assert "policy.base_url: required" in _error(capsys, "eval", QUICKSTART, "policy.backend=openai")


def test_run_refuses_to_train_on_the_test_tasks_it_evaluates(capsys, tmp_path):
    err = _error(capsys, "run", QUICKSTART, f"output_dir={tmp_path}", "explore.split=test")
    assert "explore.split: `leafe run` would train on the test tasks" in err and not any(tmp_path.iterdir())


def test_more_tasks_than_the_environment_has_names_the_count_field(capsys, tmp_path):
    err = _error(capsys, "eval", CODING, f"output_dir={tmp_path}", "eval.num_tasks=100000")
    assert "eval.num_tasks: cannot make 100000 test tasks" in err


def _sft_record(**changes) -> str:
    record = {"kind": "rehearsal", "prompt": "p", "completion": "c", "task_id": "t", "node_id": 0, "turn": 0}
    return json.dumps({**record, **changes}) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no SFT example"),
        ("garbage\n[1]\n", "holds no SFT example"),
        (_sft_record(kind="bogus"), "record 1: .*kind 'bogus'"),
        (_sft_record() + _sft_record(prompt=5), "record 2: .*prompt: expected text or a list of chat messages"),
        (_sft_record(prompt=[{"role": "user"}]), "record 1: .*prompt"),
        (_sft_record(completion=None), "record 1: .*completion: expected text"),
        (json.dumps({"kind": "rehearsal"}) + "\n", "record 1: .*missing field prompt, completion"),
    ],
)
def test_sft_data_that_leafe_did_not_write_is_named(capsys, tmp_path, content, message):
    import re

    data = tmp_path / "sft.jsonl"
    data.write_text(content)
    err = _error(capsys, "sft", QUICKSTART, "--data", str(data), "--out", str(tmp_path / "out"))
    assert re.search(f"--data: .*{message}", err), err


def test_sft_paths_are_checked_before_training(capsys, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(_sft_record())
    (tmp_path / "afile").write_text("x")
    assert "--data: " + str(tmp_path) + " is a directory" in _error(capsys, "sft", QUICKSTART, "--data", str(tmp_path), "--out", "o")
    assert "--out: " in _error(capsys, "sft", QUICKSTART, "--data", str(data), "--out", str(tmp_path / "afile"))
    err = _error(capsys, "sft", QUICKSTART, "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope"))
    assert "--model: no such model folder" in err
    err = _error(capsys, "sft", QUICKSTART, "--data", str(data), "--out", str(tmp_path / "o"), f"policy.model={tmp_path / 'nope'}")
    assert "policy.model: no such model folder" in err  # an override after the options


def test_view_and_compare_name_what_is_wrong(capsys, tmp_path):
    assert "does not exist" in _error(capsys, "view", str(tmp_path / "nope"))
    (tmp_path / "view.html").mkdir()
    (tmp_path / "episodes.jsonl").write_text("")
    assert "view.html is a directory" in _error(capsys, "view", str(tmp_path))
    (tmp_path / "view.html").rmdir()
    (tmp_path / "episodes.jsonl").write_text('{"task": 42}\n')
    assert f"{tmp_path / 'episodes.jsonl'}: a record is not one leafe wrote" in _error(capsys, "view", str(tmp_path))
    from leafe.eval.passk import compute_pass_at_k

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({**compute_pass_at_k({"a": (2, 1)}, [1, 2]).to_dict(), "details": [1]}))
    assert "'details' is not an object" in _error(capsys, "compare", str(metrics))
    metrics.write_text(json.dumps({**compute_pass_at_k({"a": (2, 1)}, [1, 2]).to_dict(), "per_task": [1, 2]}))
    assert "holds no Pass@k result written by leafe" in _error(capsys, "compare", str(metrics))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(compute_pass_at_k({"a": (2, 1)}, [1, 2]).to_dict()))
    (tmp_path / "afile").write_text("x")
    assert f"--out: {tmp_path / 'afile'} is a file" in _error(capsys, "compare", str(good), "--out", str(tmp_path / "afile"))


def test_prepare_model_and_serve_refuse_bad_arguments(capsys, tmp_path):
    assert "MODEL: no such model folder" in _error(capsys, "prepare-model", str(tmp_path / "nope"))
    assert "leafe serve reads only the policy section" in _error(capsys, "serve", "name=x")
    with pytest.raises(SystemExit):
        main(["serve", "--port", "99999"])
    assert "must be between 0 and 65535" in capsys.readouterr().err

