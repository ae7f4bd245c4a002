"""ScienceWorld (Wang et al., 2022) as a text environment: elementary-science tasks in a simulated
house, played through the simulator the ``scienceworld`` package ships (a JAR run on Java 17).

    source = SciWorldTasks(("find-non-living-thing", "lifespan-longest-lived"))
    env = SciWorldEnv()
    obs, info = env.reset(source.tasks("test", 4)[0])
    obs, reward, terminated, truncated, info = env.step("look around")

Tasks are (task name, variation) pairs; the splits are ScienceWorld's own train / dev / test
variation lists, so train and test never share a variation. The gold action sequence of a
variation is its expert demonstration.

Speed: one JVM per process, started on first use and shared by every environment object; each
object plays on its own simulator instance (``PythonInterface``) inside it, which goes back to a
pool when the environment is garbage-collected (the rollout creates one environment per
episode and never closes it). A step is one simulator call plus score and completion queries
(a few ms): unlike ``ScienceWorldEnv.step`` we do not list every valid action after each step.
Resetting reloads the task (0.05-0.3 s). There is no state copy; rollback is reset + replay,
which is exact (``check_env`` verifies it).

Reward: the change of ScienceWorld's score (0-100) divided by 100, so an episode's rewards sum
to its final score in [0, 1]; ``info["success"]`` is a completed task with full score. A
negative score (e.g. focusing on the wrong object) ends the episode unsolved.

Two departures make equal states read equally, which replay-based rollback needs: object
listings are sorted (:func:`canonical`; ScienceWorld's own order differs between loads of one
variation), and an ambiguous command ("Ambiguous request: ... 0: ... 1: ...") is resolved to its
alphabetically first reading (common agents take the first listed, whose order also varies);
the observation says which reading was used.
"""

from __future__ import annotations

import functools
import shutil
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from leafe.types import Task

RULES = (
    "You are an agent in a simulated house doing a science task, one command per turn. Commands: "
    "look around; look at OBJ; go to ROOM; teleport to ROOM; open/close OBJ; pick up OBJ; put down OBJ; "
    "move OBJ to OBJ; focus on OBJ; use OBJ on OBJ; activate/deactivate OBJ; read OBJ; mix OBJ; "
    "pour OBJ into OBJ; wait; wait1; inventory. 'focus on' marks the object the task is about: "
    "focusing on a wrong object fails the task."
)
_INVALID = ("No known action matches that input.",)
_AMBIGUOUS = "Ambiguous request"
JAVA_HELP = (
    "ScienceWorld needs Java 17+ and no 'java' executable is on PATH: install it, e.g. "
    "'apt-get install openjdk-17-jre-headless' (Debian/Ubuntu) or 'conda install -c conda-forge openjdk=17'"
)


def canonical(observation: str) -> str:
    """``observation`` with each run of tab-indented lines sorted.

    ScienceWorld lists the objects of a room in an order that differs between loads of the same
    variation (a hash-set's iteration order), so the same state can read differently; sorting the
    listed objects makes equal states read equally, which replay-based rollback needs.
    """
    lines, run, out = observation.splitlines(), [], []
    for line in lines + [""]:
        if line.startswith("\t"):
            run.append(line)
            continue
        out += sorted(run)
        run = []
        out.append(line)
    return "\n".join(out[:-1])


def require_java() -> None:
    """Raise a clear error when Java is missing (before the JVM launch fails obscurely)."""
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_HELP)


class _Simulator:
    """The process's JVM and its pool of idle simulator instances."""

    _lock = threading.Lock()
    _instance: _Simulator | None = None

    def __init__(self) -> None:
        require_java()
        from scienceworld import ScienceWorldEnv

        self._env = ScienceWorldEnv("", envStepLimit=1 << 30)  # starts the JVM (die_on_exit)
        self._factory = self._env._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface
        self.idle: list[Any] = []
        self.created = 0

    @classmethod
    def get(cls) -> _Simulator:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Simulator()
            return cls._instance

    def borrow(self) -> Any:
        """An idle simulator instance, or a new one."""
        if self.idle:
            return self.idle.pop()
        self.created += 1
        return self._factory()

    def give_back(self, server: Any) -> None:
        self.idle.append(server)


@functools.lru_cache(maxsize=None)
def variations(task_name: str, split: str) -> tuple[int, ...]:
    """ScienceWorld's variation indices of ``task_name`` in ``split`` (train / dev / test)."""
    simulator = _Simulator.get()
    server = simulator.borrow()
    try:
        server.load(task_name, 0, "", False)
        getter = {"train": server.getVariationsTrain, "dev": server.getVariationsDev, "test": server.getVariationsTest}[split]
        return tuple(int(v) for v in getter())
    finally:
        simulator.give_back(server)


@functools.lru_cache(maxsize=4096)
def gold_actions(task_name: str, variation: int, simplification: str) -> tuple[str, ...]:
    """The gold action sequence of one variation (ScienceWorld generates it on load)."""
    simulator = _Simulator.get()
    server = simulator._factory()  # a load with the gold path is kept apart from the playing pool
    server.load(task_name, variation, simplification, True)
    return tuple(str(action) for action in server.getGoldActionSequence())


class SciWorldTasks:
    """ScienceWorld variations of ``task_names`` as tasks; ``test_split`` is ``"test"`` or ``"dev"``.

    ``tasks(split, count)`` interleaves the task names (variation 1 of each name, then 2, ...), so
    the first few tasks of a split cover every name. ``split`` is ``"train"`` or ``"test"``.
    """

    def __init__(self, task_names: Sequence[str], simplification: str = "easy", test_split: str = "test") -> None:
        if test_split not in ("test", "dev"):
            raise ValueError(f"test_split must be 'test' or 'dev', got {test_split!r}")
        self.task_names = tuple(task_names)
        self.simplification = simplification
        self.test_split = test_split

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` tasks (all when ``None``) of ``split``, in a fixed order."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        source = "train" if split == "train" else self.test_split
        lists = [variations(name, source) for name in self.task_names]
        order = [(name, lst[i]) for i in range(max(map(len, lists))) for name, lst in zip(self.task_names, lists) if i < len(lst)]
        if count is not None and not 0 <= count <= len(order):
            raise ValueError(f"the {split} split has {len(order)} ScienceWorld variations of {list(self.task_names)}, {count} were asked for")
        chosen = order if count is None else order[:count]
        return [
            Task(f"scienceworld/{split}/{name}/{variation}", split,
                 {"task_name": name, "variation": variation, "simplification": self.simplification})
            for name, variation in chosen
        ]


class SciWorldEnv:
    """One ScienceWorld episode at a time on a pooled simulator instance (see the module docstring)."""

    def __init__(self) -> None:
        self._simulator = _Simulator.get()
        self._server: Any = None
        self._score = 0
        self._done = False

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Load ``task``'s variation; returns the starting room and the goal."""
        key = (task.params["task_name"], int(task.params["variation"]), str(task.params.get("simplification", "easy")))
        if self._server is None:
            self._server = self._simulator.borrow()
            # Back to the pool when this object is collected (never reference self here).
            weakref.finalize(self, self._simulator.give_back, self._server)
        self._server.load(*key, False)  # a fresh load each reset: episodes start identically
        self._score, self._done = 0, False
        observation = canonical(str(self._server.step("look around")))
        goal = str(self._server.getTaskDescription())
        return observation, {"instruction": f"{RULES}\n{goal}", "success": False, "invalid_action": False, "score": 0}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply one command. Returns (observation, reward, terminated, truncated, info)."""
        if self._server is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            return "The task is over.", 0.0, True, False, self._info(invalid_action=True)
        command = " ".join(action.strip().split())
        observation = str(self._server.step(command))
        if observation.startswith(_AMBIGUOUS):
            # "N:\treading" lines; the simulator's numbering order varies, so take the first reading
            # in alphabetical order (deterministic) by its number.
            options = sorted(
                (text.strip(), number.strip())
                for number, _, text in (line.partition(":") for line in observation.splitlines()[1:])
                if number.strip().isdigit()
            )
            if options:
                reading, number = options[0]
                observation = f"(ambiguous command: used '{reading}')\n{self._server.step(number)}"
        observation = canonical(observation)
        invalid = observation.strip() in _INVALID
        score = int(round(100 * float(self._server.getScore())))
        completed = bool(self._server.getCompleted())
        reward = (score - self._score) / 100.0
        self._score = score
        self._done = completed or score < 0
        return observation.strip(), reward, self._done, False, self._info(invalid_action=invalid)

    def expert_actions(self, task: Task) -> list[str]:
        """The gold action sequence of ``task``'s variation."""
        return list(gold_actions(task.params["task_name"], int(task.params["variation"]), str(task.params.get("simplification", "easy"))))

    def _info(self, *, invalid_action: bool) -> dict[str, Any]:
        return {"success": self._done and self._score >= 100, "invalid_action": invalid_action, "score": self._score}

