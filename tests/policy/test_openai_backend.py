"""The OpenAI-compatible backend against real local servers: ``leafe serve`` in a subprocess, a
server that never answers, and a server that dies in the middle of an evaluation."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from leafe.policy.base import GenerationRequest, SamplingParams, open_stream
from leafe.policy.errors import BackendError
from leafe.policy.native import NativePolicy
from leafe.policy.openai_backend import OpenAIPolicy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_policy, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_policy.model.save_pretrained(folder)
    tiny_policy.tokenizer.save_pretrained(folder)
    return folder


def _start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "leafe.cli", "serve", f"policy.model={model_dir}", "policy.backend=native", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    line = process.stdout.readline()
    if not line.startswith("serving"):
        process.kill()
        raise AssertionError(f"server did not start: {line}{process.stderr.read()}")
    return process, line.split(" at ")[1].strip()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    process, url = _start_server(tiny_model_dir)
    yield url
    process.kill()
    process.wait()


PROMPTS = ["Observation:\nYou are at 0.\nThought:", [{"role": "user", "content": "Go right."}], "x y z"]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_served_completions_equal_in_process_ones(server, tiny_model_dir, temperature):
    requests = [GenerationRequest(p, seed=7 + i) for i, p in enumerate(PROMPTS)]
    params = SamplingParams(temperature=temperature, max_new_tokens=10, stop=("\n\n",))
    remote = OpenAIPolicy(server, str(tiny_model_dir), max_concurrent=3)
    local = NativePolicy(str(tiny_model_dir), device="cpu")
    over_http, in_process = remote.generate(requests, params), local.generate(requests, params)
    assert [g.text for g in over_http] == [g.text for g in in_process]
    assert [g.completion_tokens for g in over_http] == [g.completion_tokens for g in in_process]
    assert over_http[0].prompt_tokens == in_process[0].prompt_tokens > 0
    stream = open_stream(remote, params)
    for i, request in enumerate(requests):
        stream.submit(i, request)
    streamed = {}
    while stream.pending:
        streamed.update(stream.next_finished())
    assert [streamed[i].generation.text for i in range(len(requests))] == [g.text for g in in_process]


def test_bad_requests_fail_fast_with_the_servers_message(server):
    remote = OpenAIPolicy(server, "tiny", max_retries=3)
    started = time.perf_counter()
    with pytest.raises(BackendError, match="HTTP 400.*top_p"):
        remote.complete(GenerationRequest("hi", seed=0), SamplingParams(top_p=1.0, temperature=-1.0))
    assert time.perf_counter() - started < 2  # not retried
    for body, message in (({"prompt": "hi", "stop": 5}, "bad sampling field"), ({"prompt": "hi", "max_tokens": 10**6}, "max_new_tokens")):
        answer = httpx.post(server + "/completions", json=body, timeout=30)
        assert answer.status_code == 400 and message in answer.json()["error"]["message"]
    assert httpx.get(server.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    assert httpx.get(server + "/models").json()["data"][0]["object"] == "model"


def test_a_server_that_never_answers_times_out_and_is_retried():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept() -> None:  # accept connections, read nothing, answer nothing
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    remote = OpenAIPolicy(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "m", timeout_s=0.5, max_retries=2)
    started = time.perf_counter()
    try:
        with pytest.raises(BackendError, match="no answer after 3 attempts.*timed out"):
            remote.complete(GenerationRequest("hi", seed=0), SamplingParams(max_new_tokens=2))
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert 1.5 + 1.5 <= time.perf_counter() - started < 10  # 3 timeouts + 0.5 s + 1 s backoff
    assert len(accepted) >= 3


def test_a_server_that_dies_mid_eval_loses_no_finished_episode(tiny_model_dir, tmp_path):
    process, url = _start_server(tiny_model_dir)
    run_dir = tmp_path / "runs" / "http-eval"
    command = [
        sys.executable, "-m", "leafe.cli", "eval", str(ROOT / "configs" / "sokoban_quickstart.yaml"),
        f"output_dir={tmp_path / 'runs'}", "name=http-eval", "policy.backend=openai", f"policy.base_url={url}",
        f"policy.model={tiny_model_dir}", "policy.max_retries=1", "policy.request_timeout_s=5",
        "eval.num_tasks=3", "eval.samples_per_task=2", "eval.ks=[1,2]", "rollout.max_steps=3",
        "rollout.max_concurrent_episodes=1", "policy.max_new_tokens=8",
    ]
    evaluation = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    episodes = run_dir / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not episodes.exists() or len(episodes.read_text().splitlines()) < 2):
        time.sleep(0.05)
    process.kill()
    process.wait()
    _, stderr = evaluation.communicate(timeout=120)
    assert evaluation.returncode == 1, stderr
    assert "inference server failed" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    kept = episodes.read_text().splitlines()
    assert 2 <= len(kept) < 6
    process, url = _start_server(tiny_model_dir)
    try:
        command[command.index(next(a for a in command if a.startswith("policy.base_url=")))] = f"policy.base_url={url}"
        finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        process.kill()
        process.wait()
    assert finished.returncode == 0, finished.stderr
    lines = episodes.read_text().splitlines()
    assert len(lines) == 6 and lines[: len(kept)] == kept
    assert len({(json.loads(l)["task"]["task_id"], json.loads(l)["sample_index"]) for l in lines}) == 6
