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
