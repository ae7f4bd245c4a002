"""Config loading: every field validated, errors name the field, overrides, shipped configs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from leafe.config import ConfigError, ExperimentConfig, apply_overrides, config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_comment_every_field(path):
    load_config(path)
    text = path.read_text()
    assert text.splitlines()[0].startswith("# Launch: leafe ")
    for line in text.splitlines():
        if re.match(r"^\s*[A-Za-z_]+:", line):
            assert "#" in line, f"{path.name}: field without a comment: {line.strip()}"


@pytest.mark.parametrize(
    "override, field",
    [
        ("policy.temprature=0.5", "policy.temprature"),
        ("policy.temperature=9", "policy.temperature"),
        ("eval.samples_per_task=0", "eval.samples_per_task"),
        ("env.dim=[3, 6]", "env.dim"),
        ("rollout.prompt_format=xml", "rollout.prompt_format"),
        ("eval.ks=[1, 64]", "eval.ks"),
        ("nmae=oops", "nmae"),
        ("name=..", "name"),
        ("policy.device=gpu", "policy.device"),
        ("explore.reflector_model=foo", "explore.reflector_model"),
    ],
)
def test_bad_field_is_named(override, field):
    with pytest.raises(ConfigError) as error:
        config_from_dict(apply_overrides({}, [override]))
    assert field in str(error.value)


def test_misspelling_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        config_from_dict({"policy": {"temprature": 0.5}})


def test_overrides_parse_yaml_values_and_nest():
    cfg = config_from_dict(apply_overrides({"policy": {"temperature": 0.1}}, ["policy.temperature=1.5", "eval.ks=[4,1,4]", "eval.samples_per_task=4"]))
    assert cfg.policy.temperature == 1.5
    assert cfg.eval.ks == (1, 4)


def test_malformed_override():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["policy.temperature"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_config_is_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]


def test_cli_rejects_bad_field_before_importing_torch(tmp_path):
    """A config error is reported before any heavy import (torch, transformers), so it takes well
    under a second; checked by what the process imported, not by a wall clock."""
    config = tmp_path / "exp.yaml"
    config.write_text("policy:\n  temprature: 0.5\n")
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['leafe', 'eval', {str(config)!r}]\n"
        "try:\n    runpy.run_module('leafe.cli', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.__stdout__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "policy.temprature" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.split() == ["exit", "2", "False", "False"], result.stdout + result.stderr


def test_explore_section_is_validated():
    with pytest.raises(ConfigError, match="explore.max_env_steps: Input should be greater than or equal to 1"):
        config_from_dict({"explore": {"max_env_steps": 0}})
    with pytest.raises(ConfigError, match="explore.reflector_model"):
        config_from_dict({"explore": {"reflector": "model"}})


def test_env_section_is_chosen_by_name_and_defaults_to_sokoban():
    from leafe.config import CodingConfig, SokobanConfig

    assert isinstance(ExperimentConfig().env, SokobanConfig)
    assert isinstance(config_from_dict({"env": {"dim": [7, 7]}}).env, SokobanConfig)  # no name: Sokoban
    coding = config_from_dict({"env": {"name": "coding", "source": "humaneval", "timeout_s": 2}}).env
    assert isinstance(coding, CodingConfig) and coding.timeout_s == 2.0
    with pytest.raises(ConfigError, match=r"env.num_boxes: unknown field"):
        config_from_dict({"env": {"name": "coding", "num_boxes": 2}})  # Sokoban's field on the coding env


def test_union_tag_is_not_in_error_locations():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"env": {"name": "coding", "timeout_s": "slow", "memory_mb": 1}})
    message = str(error.value)
    assert "env.timeout_s:" in message and "env.memory_mb:" in message and "env.coding" not in message
    with pytest.raises(ConfigError, match=r"env: must be a section with a name"):
        config_from_dict({"env": "coding"})


def test_a_repeated_key_is_refused_but_yaml_merge_keys_still_work(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("eval:\n  num_tasks: 2\n  num_tasks: 3\n")
    with pytest.raises(ConfigError, match="the key 'num_tasks' appears twice"):
        load_config(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text("x-sampling: &sampling\n  temperature: 0.3\n  top_p: 0.9\n"
                      "policy:\n  <<: *sampling\n  top_p: 0.5\n")
    with pytest.raises(ConfigError, match="x-sampling: unknown field"):  # the anchor's holder is still a field
        load_config(merged)
    merged.write_text("policy: &p\n  temperature: 0.3\n  top_p: 0.9\n"
                      "explore:\n  reflector: model\n  reflector_model: m\n"
                      "eval:\n  <<: {num_tasks: 3}\n  samples_per_task: 8\n")
    cfg = load_config(merged)
    assert cfg.eval.num_tasks == 3 and cfg.policy.top_p == 0.9
