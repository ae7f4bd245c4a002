"""Building the agent from a config, and the task lists commands play."""

import pytest

from leafe.agent import EXAMPLE_TASK, build_agent, select_tasks
from leafe.config import ConfigError, config_from_dict
from leafe.envs import build_env
from tests.test_rollout import ScriptedPolicy


def test_example_room_is_never_played():
    cfg = config_from_dict({})
    make_env, source = build_env(cfg.env)
    agent = build_agent(cfg, make_env, source, ScriptedPolicy(["x"]))
    example_room = source.tasks(EXAMPLE_TASK[0], EXAMPLE_TASK[1] + 1)[EXAMPLE_TASK[1]]
    assert agent.prompter.example is not None
    assert agent.prompter.example.observation == make_env().reset(example_room)[0]
    train = select_tasks(source, "train", 5)
    assert len(train) == 5 and example_room.task_id not in {t.task_id for t in train}
    assert select_tasks(source, "test", 5) == source.tasks("test", 5)


def test_agent_follows_the_config():
    cfg = config_from_dict({"rollout": {"few_shot": False, "max_steps": 3, "prompt_format": "chat"}, "policy": {"temperature": 0.2}})
    make_env, source = build_env(cfg.env)
    agent = build_agent(cfg, make_env, source, ScriptedPolicy(["x"]))
    assert agent.prompter.example is None and agent.prompter.prompt_format == "chat"
    assert agent.max_steps == 3 and agent.sampling.temperature == 0.2


def test_impossible_env_settings_name_the_env_section():
    cfg = config_from_dict({"env": {"min_solution_length": 19, "max_solution_length": 20, "dim": [5, 5]}})
    _make_env, source = build_env(cfg.env)
    with pytest.raises(ConfigError, match="env: cannot make"):
        select_tasks(source, "test", 1)
