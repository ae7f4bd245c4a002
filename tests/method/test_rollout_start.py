"""The rollout loop's exploration parts: starting from a rollback point, experience in the
prompt, a budget shared by episodes, and the per-turn hook."""

from leafe.policy.base import SamplingParams
from leafe.prompting import EXPERIENCE_HEADER, Prompter, Turn
from leafe.rollout import Budget, EpisodeJob, EpisodeStart, derive_seed, run_episodes
from leafe.types import Task
from tests.line_world import SnapshotLineWorld
from tests.method.scripted import FunctionPolicy

TASK = Task("line/3", "train", {"goal": 3})


def _right(prompt):
    return " go\nAction: right"


def _recorded(actions):
    (trajectory,) = run_episodes(
        [EpisodeJob(TASK, 0, 11)], SnapshotLineWorld, FunctionPolicy(lambda p: f" x\nAction: {actions.pop(0)}"),
        Prompter(history_window=10), SamplingParams(), max_steps=len(actions),
    )
    return trajectory


def test_episode_continues_from_a_rollback_point():
    recorded = _recorded(["left", "right", "right"])
    env = SnapshotLineWorld()
    env.reset(TASK)
    env.step("left")
    start = EpisodeStart(env, recorded.instruction, recorded.initial_observation, recorded.steps[:1])
    seeds = []
    policy = FunctionPolicy(_right)
    original = policy.generate
    policy.generate = lambda requests, params: (seeds.extend(r.seed for r in requests), original(requests, params))[1]
    job = EpisodeJob(TASK, 1, 99, experience=("Never go left.",), start=start)
    (trajectory,) = run_episodes([job], SnapshotLineWorld, policy, Prompter(history_window=10), SamplingParams(), max_steps=4)
    assert trajectory.steps[0] == recorded.steps[0]
    assert [s.action for s in trajectory.steps] == ["left", "right", "right", "right"]
    assert trajectory.steps[-1].truncated and not trajectory.success  # max_steps counts the prior turn
    first_prompt = policy.batches[0][0]
    assert "Observation:\nYou are at 0.\nThought: x\nAction: left" in first_prompt
    assert first_prompt.endswith("Observation:\nYou are at -1.\nThought:")
    assert f"{EXPERIENCE_HEADER}\n- Never go left." in first_prompt
    assert seeds == [derive_seed(99, turn) for turn in (1, 2, 3)]


def test_shared_budget_plays_earlier_episodes_to_the_end_and_cuts_the_rest():
    budget = Budget(max_env_steps=5)
    jobs = [EpisodeJob(TASK, i, i, budget=budget) for i in range(3)]
    steps_seen = []
    policy = FunctionPolicy(lambda p: " x\nAction: left")
    trajectories = run_episodes(
        jobs, SnapshotLineWorld, policy, Prompter(), SamplingParams(), max_steps=10,
        on_step=lambda job, env: steps_seen.append((job.sample_index, env.position)),
    )
    lengths = {t.sample_index: len(t.steps) for t in trajectories}
    # The budget cannot cover episode 0's possible 10 turns, so 1 and 2 wait, then are cut.
    assert lengths == {0: 5, 1: 0, 2: 0} and budget.env_steps == 5
    assert budget.model_tokens == policy.tokens
    assert [len(batch) for batch in policy.batches] == [1, 1, 1, 1, 1]
    (played,) = [t for t in trajectories if t.steps]
    assert played.steps[-1].truncated and played.steps[-1].info["budget_exhausted"]
    assert not any(s.truncated for s in played.steps[:-1])
    assert steps_seen == [(0, -1), (0, -2), (0, -3), (0, -4), (0, -5)]


def test_exhausted_budget_plays_nothing_and_token_budget_stops_new_calls():
    empty = Budget(max_env_steps=3, env_steps=3)
    policy = FunctionPolicy(_right)
    (trajectory,) = run_episodes([EpisodeJob(TASK, 0, 0, budget=empty)], SnapshotLineWorld, policy, Prompter(), SamplingParams(), 5)
    assert trajectory.steps == () and policy.batches == []
    tokens = Budget(max_env_steps=100, max_model_tokens=1)
    (trajectory,) = run_episodes([EpisodeJob(TASK, 0, 0, budget=tokens)], SnapshotLineWorld, policy, Prompter(), SamplingParams(), 5)
    assert len(trajectory.steps) == 1 and tokens.model_tokens > 1 and tokens.exhausted()


def test_prompter_shows_experience_in_both_formats():
    lessons = ("Go right.", "Avoid -1.")
    completion = Prompter(example=Turn("EX", "Thought: e\nAction: up")).build("Goal.", [], "NOW", lessons)
    assert completion.index("EX") < completion.index(EXPERIENCE_HEADER) < completion.index("NOW")
    assert "- Go right.\n- Avoid -1." in completion
    assert EXPERIENCE_HEADER not in Prompter().build("Goal.", [], "NOW")
    chat = Prompter(prompt_format="chat").build("Goal.", [], "NOW", lessons)
    assert chat[0]["content"].endswith(f"{EXPERIENCE_HEADER}\n- Go right.\n- Avoid -1.") and len(chat) == 2


def test_token_budget_keeps_concurrent_episodes_within_about_one_call_of_the_cap():
    calls = []
    policy = FunctionPolicy(lambda p: " x\nAction: left")
    original = policy.generate

    def counted(requests, params):
        generations = original(requests, params)
        calls.extend(g.prompt_tokens + g.completion_tokens for g in generations)
        return generations

    policy.generate = counted
    budget = Budget(max_env_steps=1000, max_model_tokens=400)
    jobs = [EpisodeJob(TASK, i, i, budget=budget) for i in range(6)]
    run_episodes(jobs, SnapshotLineWorld, policy, Prompter(history_window=10), SamplingParams(max_new_tokens=4), max_steps=8)
    assert budget.model_tokens == sum(calls) and budget.exhausted()
    # Six episodes could each start a call while tokens are left; reserving tokens for the calls
    # in flight keeps the total within one call of the cap.
    assert budget.model_tokens - 400 < max(calls)
    assert max(len(batch) for batch in policy.batches) > 1  # calls still run concurrently
