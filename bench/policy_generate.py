"""Benchmark TransformersPolicy.generate on the embedded model.

Measures: the one-time GGUF -> safetensors conversion (into a throwaway cache), reloading the
converted model, and generation throughput of a batch of long prompts, comparing the policy's
seeded sampling with plain ``model.generate(do_sample=True)`` on the same batch.

    python bench/policy_generate.py                     # 16 x ~300-token prompts, 32 new tokens
    python bench/policy_generate.py --batch-size 4 --prompt-len 100 --skip-conversion
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from leafe.policy import GenerationRequest, SamplingParams, resolve_model  # noqa: E402
from leafe.policy.transformers_backend import SeededSampler, TransformersPolicy  # noqa: E402

FILLER = (
    "You are in a small warehouse. The walls are made of grey bricks and the floor is covered with dust. "
    "There is a wooden box next to the north wall and a target square marked with chalk near the door. "
    "Your task is to push every box onto a target. You can move up, down, left or right; a box moves when "
    "you walk into it and the square behind it is free. Think step by step about which box to push first. "
)


def make_prompts(tokenizer, batch_size: int, prompt_len: int) -> list[str]:
    """``batch_size`` different completion-style prompts of exactly ``prompt_len`` tokens each."""
    prompts = []
    for i in range(batch_size):
        text = f"Episode {i}, room {i * 7 % 13}.\n" + FILLER * (prompt_len // 60 + 2)
        ids = tokenizer(text)["input_ids"][: prompt_len - 3]
        prompts.append(tokenizer.decode(ids) + "\nThought:")
    return prompts


def measure_conversion() -> float:
    """Convert the GGUF into a fresh temporary cache; returns seconds."""
    from leafe.policy import embedded

    old = os.environ.get("LEAFE_CACHE")
    tmp = tempfile.mkdtemp(prefix="leafe-bench-cache-")
    os.environ["LEAFE_CACHE"] = tmp
    try:
        start = time.perf_counter()
        embedded.ensure_embedded_model()
        return time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("LEAFE_CACHE", None)
        else:
            os.environ["LEAFE_CACHE"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def cold_reload(model: str) -> float:
    """Seconds to build the policy in a new interpreter (torch/transformers already imported,
    but not the model classes and tokenizer machinery transformers imports lazily)."""
    code = (
        "import time, sys; from leafe.policy.transformers_backend import TransformersPolicy; "
        "t = time.perf_counter(); TransformersPolicy(sys.argv[1]); print(time.perf_counter() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant; the median is reported")
    parser.add_argument("--skip-conversion", action="store_true", help="do not time a fresh GGUF conversion")
    args = parser.parse_args()

    rows: list[tuple[str, str]] = [("torch threads", str(torch.get_num_threads()))]
    if not args.skip_conversion and args.model.lower() in ("embedded", "smollm2-135m-instruct"):
        rows.append(("conversion GGUF -> safetensors (fresh cache)", f"{measure_conversion():.1f} s"))

    resolve_model(args.model)  # make sure the cached folder exists before timing the reload
    rows.append(("reload in a fresh process (TransformersPolicy(...))", f"{cold_reload(args.model):.2f} s"))
    start = time.perf_counter()
    policy = TransformersPolicy(args.model, max_batch_size=args.batch_size)
    rows.append(("reload in this process", f"{time.perf_counter() - start:.2f} s"))

    tokenizer, model = policy.tokenizer, policy.model
    prompts = make_prompts(tokenizer, args.batch_size, args.prompt_len)
    requests = [GenerationRequest(p, seed=i) for i, p in enumerate(prompts)]
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts)

    # The same left-padded batch for the plain model.generate baselines.
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), policy.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1

    def plain(do_sample: bool):
        torch.manual_seed(0)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                do_sample=do_sample, temperature=args.temperature if do_sample else None, top_k=0 if do_sample else None,
                top_p=1.0, pad_token_id=policy.pad_token_id,
            )  # fmt: skip
        steps = out.shape[1] - width
        return [steps] * len(encoded)

    def ours(p: SamplingParams):
        return [g.completion_tokens for g in policy.generate(requests, p)]

    policy.generate(requests[:2], SamplingParams(max_new_tokens=2))  # warm-up
    variants = [
        (f"policy.generate, seeded sampler T={args.temperature}", lambda: ours(params)),
        ("policy.generate, greedy T=0", lambda: ours(greedy)),
        (f"model.generate(do_sample=True, T={args.temperature}, top_k=0)", lambda: plain(True)),
        ("model.generate(do_sample=False)", lambda: plain(False)),
    ]
    # Interleaved rounds (every variant once per round), so drift in machine speed hits all alike.
    times: dict[str, list[float]] = {label: [] for label, _ in variants}
    generated: dict[str, int] = {}
    for _ in range(args.repeats):
        for label, fn in variants:
            seconds, counts = timed(fn, 1)
            times[label].append(seconds)
            generated[label] = sum(counts)
    table = []
    for label, _ in variants:
        seconds = statistics.median(times[label])
        n = generated[label]
        table.append((label, seconds, n, n / seconds, (n + prompt_tokens) / seconds))

    vocab = model.config.vocab_size
    sampler = SeededSampler(range(args.batch_size), args.temperature)
    scores = torch.randn(args.batch_size, vocab)
    noise_s, _ = timed(lambda: [sampler(None, scores) for _ in range(20)], 3)

    print(f"\nmodel {args.model}: {args.batch_size} prompts x {prompt_tokens // args.batch_size} tokens, "
          f"max_new_tokens {args.max_new_tokens} (median of {args.repeats} runs)\n")  # fmt: skip
    for label, value in rows:
        print(f"  {label:<58} {value}")
    print(f"\n  {'variant':<58} {'time':>7} {'gen tok':>8} {'gen tok/s':>10} {'all tok/s':>10}")
    for label, seconds, generated, gen_rate, all_rate in table:
        print(f"  {label:<58} {seconds:6.2f}s {generated:8d} {gen_rate:10.1f} {all_rate:10.1f}")
    print(f"\n  Seeded sampler alone: {noise_s / 20 * 1000:.1f} ms per decode step for {args.batch_size} rows "
          f"(vocab {vocab})")  # fmt: skip
    print("  'gen tok' counts tokens up to each row's end (eos) for the policy, batch steps x rows for "
          "model.generate.")


if __name__ == "__main__":
    main()
