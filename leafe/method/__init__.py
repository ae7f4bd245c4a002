"""LEAFE itself. Stage 1 (reflective rollback exploration): :mod:`leafe.method.explore` (the
loop, its baselines, the resumable entry point), :mod:`leafe.method.reflect` (reflectors),
:mod:`leafe.method.trigger` (when to reflect), :mod:`leafe.method.rollback` (rebuild and verify
a state), :mod:`leafe.method.task_search` (per-task state and batched waves),
:mod:`leafe.method.tree` (the experience tree and its file)."""
