"""The OpenAI-compatible backend against real local servers: ``leafe serve`` in a subprocess, a
server that never answers, a server that dies in the middle of an evaluation, and a third-party
server, llama.cpp's (llama-cpp-python), on the embedded GGUF."""

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


# ---------------------------------------------------------------- a third-party server: llama.cpp's

LLAMA_PROMPT = "Observation:\nYou are at 0.\nThought:"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the embedded GGUF (Q4_1, so its tokens are
    not the float32 model's); ``make test`` installs it."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed (make test installs it)")
    from leafe.policy.embedded import find_gguf

    port = _free_port()
    log = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1",
             "--port", str(port), "--n_threads", "1", "--n_ctx", "2048", "--verbose", "False"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"llama.cpp's server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_llama_cpp_server_completes_text_and_chat_prompts(llama_cpp_server):
    remote = OpenAIPolicy(llama_cpp_server, "smollm2", max_concurrent=2)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, stop=("\n\n",))
    requests = [GenerationRequest(LLAMA_PROMPT, seed=0), GenerationRequest([{"role": "user", "content": "Say hi."}], seed=0)]
    first, again = remote.generate(requests, greedy), remote.generate(requests, greedy)
    assert [g.text for g in first] == [g.text for g in again]  # greedy: the same text every time
    for generation in first:
        assert generation.text.strip() and "\n\n" not in generation.text
        assert 0 < generation.completion_tokens <= 12 and generation.prompt_tokens > 0
        assert generation.finish_reason in ("stop", "length")
    assert first[1].prompt_text == "<|user|>\nSay hi."  # a record of the chat prompt; the server templated it


@pytest.mark.slow
def test_llama_cpp_server_samples_by_the_requests_seed(llama_cpp_server):
    """The seed reaches the server: the same seed gives the same sample, another seed another.
    (llama.cpp reproduces a seed only from the same cache state: a prompt evaluated afresh and
    one served from its prompt cache can differ at near-tied tokens, so the prompt is warmed
    first, and requests go one at a time.)"""
    remote = OpenAIPolicy(llama_cpp_server, "smollm2", max_concurrent=1)
    params = SamplingParams(temperature=0.9, max_new_tokens=16)
    remote.generate([GenerationRequest(LLAMA_PROMPT, seed=0)], params)
    texts = [remote.generate([GenerationRequest(LLAMA_PROMPT, seed=seed)], params)[0].text for seed in (1, 1, 2, 2)]
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert texts[0] != texts[2]


@pytest.mark.slow
def test_eval_through_llama_cpp_s_server(llama_cpp_server, tmp_path):
    command = [
        sys.executable, "-m", "leafe.cli", "eval", str(ROOT / "configs" / "sokoban_quickstart.yaml"),
        f"output_dir={tmp_path}", "name=llama-cpp", "policy.backend=openai", f"policy.base_url={llama_cpp_server}",
        "policy.model=smollm2", "eval.num_tasks=2", "eval.samples_per_task=2", "eval.ks=[1,2]",
        "rollout.max_steps=2", "policy.max_new_tokens=16",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    episodes = [json.loads(line) for line in (tmp_path / "llama-cpp" / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and all(episode["steps"] for episode in episodes)
    throughput = json.loads((tmp_path / "llama-cpp" / "metrics.json").read_text())["details"]["throughput_this_invocation"]
    assert throughput["completion_tokens"] > 0 and throughput["prompt_tokens"] > 0
