"""A tiny deterministic text environment for testing the loop and the checker."""


class LineWorld:
    """Walk from 0 to ``goal`` with 'right'; 'left' moves back; anything else is invalid."""

    def reset(self, task):
        self.position, self.goal = 0, task.params["goal"]
        return self._observation(), {"instruction": f"Reach {self.goal}."}

    def _observation(self):
        return f"You are at {self.position}."

    def step(self, action):
        if action not in ("left", "right"):
            return f"Invalid action: '{action}'. {self._observation()}", 0.0, False, False, {"success": False, "invalid_action": True}
        self.position += 1 if action == "right" else -1
        success = self.position == self.goal
        return self._observation(), float(success), success, False, {"success": success, "invalid_action": False}


class SnapshotLineWorld(LineWorld):
    """LineWorld with the optional parts of the contract: snapshots, action words, an expert."""

    action_words = ("left", "right")

    def snapshot(self):
        return (self.position, self.goal)

    def restore(self, snapshot):
        self.position, self.goal = snapshot

    def expert_actions(self, task):
        return ["right"] * task.params["goal"]


class TrapLineWorld(SnapshotLineWorld):
    """SnapshotLineWorld with a trap at -1: stepping onto it ends the episode unsolved (a
    deadlock), and ``diagnose`` names the step that did it (the ``env`` reflector's capability)."""

    def step(self, action):
        if action == "left" and self.position == 0:
            self.position = -1
            return "You fell into the trap at -1; the game is over.", 0.0, True, False, {"success": False, "invalid_action": False, "deadlock": True}
        return super().step(action)

    def diagnose(self, task, actions):
        from leafe.envs.base import Diagnosis

        position = 0
        for number, action in enumerate(actions, start=1):
            if action == "left" and position == 0:
                return Diagnosis(number, f"At step {number} you stepped left from 0 into the trap. Instead, move right.")
            position += {"left": -1, "right": 1}.get(action, 0)
        return None


class FlakyLineWorld(LineWorld):
    """A non-deterministic LineWorld: each observation after a step carries a global tick, so
    replaying the same actions never reproduces the recorded observations."""

    ticks = 0

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        FlakyLineWorld.ticks += 1
        return f"{observation} (tick {FlakyLineWorld.ticks})", reward, terminated, truncated, info
