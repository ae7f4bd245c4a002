"""The multi-turn loop, driven by a scripted policy on a tiny deterministic line world."""

from leafe.policy.base import Generation, SamplingParams
from leafe.prompting import Prompter
from leafe.rollout import EpisodeJob, derive_seed, make_jobs, run_episodes
from leafe.types import Task, Trajectory
from tests.line_world import LineWorld


class ScriptedPolicy:
    """Answers each request with the next reply of a fixed script (per episode seed)."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.batches = []

    def generate(self, requests, params):
        self.batches.append([r.seed for r in requests])
        out = []
        for request in requests:
            turn = request.prompt.count("Observation:") - 1
            text = self.script[min(turn, len(self.script) - 1)]
            out.append(Generation(text=text, prompt_text=request.prompt, prompt_tokens=len(request.prompt), completion_tokens=len(text), finish_reason="stop"))
        return out


def _play(script, goal=2, max_steps=5, n=1, max_concurrent=64, history_window=10):
    tasks = [Task("line/0", "test", {"goal": goal})]
    finished: list[Trajectory] = []
    policy = ScriptedPolicy(script)
    result = run_episodes(
        make_jobs(tasks, n, run_seed=0), LineWorld, policy, Prompter(history_window=history_window),
        SamplingParams(), max_steps=max_steps, max_concurrent=max_concurrent, on_finish=finished.append,
    )
    return result, finished, policy


def test_success_terminates_and_records_everything():
    result, finished, _ = _play([" go\nAction: right"])
    (trajectory,) = result
    assert finished == result
    assert trajectory.success and len(trajectory.steps) == 2
    assert trajectory.steps[-1].terminated and not trajectory.steps[-1].truncated
    assert trajectory.actions == ["right", "right"]
    assert trajectory.steps[0].prompt.endswith("Observation:\nYou are at 0.\nThought:")
    assert trajectory.prompt_tokens == sum(len(s.prompt) for s in trajectory.steps)
    assert trajectory.total_reward == 1.0


def test_unparseable_reply_costs_a_turn_and_becomes_feedback():
    result, _, _ = _play(["I don't know", " ok\nAction: right"], goal=1)
    (trajectory,) = result
    first, second = trajectory.steps
    assert first.action is None and "no 'Action:' line" in first.observation
    assert first.info == {"parse_error": True}
    assert second.action == "right" and trajectory.success
    assert "no 'Action:' line" in second.prompt


def test_repeated_parse_failures_do_not_stack_feedback():
    result, _, _ = _play(["no idea"], max_steps=3)
    last = result[0].steps[-1].observation
    assert last.count("no 'Action:' line") == 1 and last.endswith("You are at 0.")


def test_budget_truncates_failed_episode():
    result, _, _ = _play([" hmm\nAction: left"], max_steps=3)
    (trajectory,) = result
    assert len(trajectory.steps) == 3 and not trajectory.success
    assert trajectory.steps[-1].truncated and not any(s.truncated for s in trajectory.steps[:-1])


def test_invalid_action_is_environment_feedback_not_a_crash():
    result, _, _ = _play([" x\nAction: jump", " y\nAction: right"], goal=1)
    assert result[0].steps[0].observation.startswith("Invalid action: 'jump'")
    assert result[0].success


def test_concurrency_cap_and_per_turn_seeds():
    result, _, policy = _play([" go\nAction: right"], n=5, max_concurrent=2)
    assert len(result) == 5 and all(t.success for t in result)
    assert max(len(batch) for batch in policy.batches) == 2
    seeds = [seed for batch in policy.batches for seed in batch]
    assert len(set(seeds)) == len(seeds) == 10
    assert derive_seed(result[0].seed, 0) in seeds


def test_jobs_have_stable_distinct_seeds():
    tasks = [Task(f"t/{i}", "test") for i in range(3)]
    jobs = make_jobs(tasks, 4, run_seed=7)
    assert len({job.seed for job in jobs}) == 12
    assert jobs == make_jobs(tasks, 4, run_seed=7)
    assert jobs != make_jobs(tasks, 4, run_seed=8)
    assert isinstance(jobs[0], EpisodeJob) and jobs[0].seed == derive_seed(7, "t/0", 0)


def test_streaming_engine_plays_the_same_episodes_as_batched_rounds(tiny_policy):
    """Continuous batching with the prefix cache plays the episodes that rounds of whole batches
    play. In float64: in float32 the two backends' logits differ by rounding, which flips a draw
    now and then (one token in ~400 when BLAS runs on 1 thread instead of 2)."""
    import copy

    from leafe.policy.native import NativePolicy
    from leafe.policy.transformers_backend import TransformersPolicy

    tasks = [Task(f"line/{i}", "test", {"goal": 3}) for i in range(3)]
    model = copy.deepcopy(tiny_policy.model).double()
    batched = TransformersPolicy.from_model(model, tiny_policy.tokenizer, max_batch_size=16)
    native = NativePolicy.from_model(model, tiny_policy.tokenizer, max_batch_size=4)
    played = {}
    for name, policy in (("batched", batched), ("streamed", native)):
        trajectories = run_episodes(
            make_jobs(tasks, 3, run_seed=1), LineWorld, policy, Prompter(history_window=2),
            SamplingParams(temperature=1.0, max_new_tokens=12), max_steps=4, max_concurrent=5,
        )
        played[name] = sorted((t.task.task_id, t.sample_index, [s.completion for s in t.steps]) for t in trajectories)
    assert played["streamed"] == played["batched"]
    assert len(played["batched"]) == 9
    assert native.stats.decode_steps > 0 and native.stats.cached_prompt_tokens > 0
