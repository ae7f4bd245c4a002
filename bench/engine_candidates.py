"""Candidate CPU engines on one batch of real agent prompts, side by side in one run.

    .venv/bin/pip install ctranslate2          # optional candidate (not a leafe dependency)
    .venv/bin/python bench/engine_candidates.py --prompts 64 --new-tokens 40

The batch: the first-turn prompts of ``--prompts`` distinct Sokoban test rooms (the quickstart's
completion prompt: instructions + worked example + room, ~270 tokens; they share the first ~220),
greedy decoding, ``--new-tokens`` new tokens, stop at a blank line. Each engine gets one warm-up
call, then the median of ``--repeats`` timed calls (the native engine's prefix cache is cleared
before every call, so it too starts cold and only shares prefixes inside the batch).

Reports wall time, generated tokens/s, and how many completions equal transformers' greedy text
(quality: an engine that is fast because it computes something else is no candidate).
llama.cpp is not re-measured here (it needs a 5-minute compile); MEASURED.md has its figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.agent import build_agent, select_tasks  # noqa: E402
from leafe.config import config_from_dict  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.policy.base import GenerationRequest, SamplingParams  # noqa: E402
from leafe.policy.embedded import resolve_model  # noqa: E402
from leafe.policy.native import NativePolicy  # noqa: E402
from leafe.policy.transformers_backend import TransformersPolicy, load_model  # noqa: E402


def prompts_of(count: int) -> list[str]:
    cfg = config_from_dict({"rollout": {"history_window": 1}})
    make_env, tasks_source = build_env(cfg.env)
    agent = build_agent(cfg, make_env, tasks_source, policy=None)  # type: ignore[arg-type]
    prompts = []
    for task in select_tasks(tasks_source, "test", count):
        env = make_env()
        observation, info = env.reset(task)
        prompts.append(agent.prompter.build(str(info.get("instruction", "")), [], observation))
    return prompts


def timed(run, repeats: int) -> tuple[float, list[str]]:
    run()
    times, texts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        texts = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    prompts = prompts_of(args.prompts)
    requests = [GenerationRequest(p, seed=i) for i, p in enumerate(prompts)]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop=("\n\n",))
    model, tokenizer = load_model("embedded")
    reference = TransformersPolicy.from_model(model, tokenizer, max_batch_size=args.prompts)
    native = NativePolicy.from_model(model, tokenizer, max_batch_size=args.prompts)

    def run_native() -> list[str]:
        native.weights_changed()  # cold prefix cache every call
        return [g.text for g in native.generate(requests, params)]

    rows = {
        "transformers": timed(lambda: [g.text for g in reference.generate(requests, params)], args.repeats),
        "native": timed(run_native, args.repeats),
    }
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
    if ctranslate2 is not None:
        ids = [tokenizer.convert_ids_to_tokens(tokenizer(p)["input_ids"]) for p in prompts]
        for compute_type in ("float32", "int8"):
            with tempfile.TemporaryDirectory() as folder:
                ctranslate2.converters.TransformersConverter(resolve_model("embedded")).convert(folder, force=True)
                generator = ctranslate2.Generator(folder, device="cpu", compute_type=compute_type, intra_threads=2)

                def run_ct2(generator=generator) -> list[str]:
                    # Stop each row at the blank line like the other engines (byte-level BPE: "Ċ" is "\n").
                    pieces: dict[int, str] = {}

                    def at_blank_line(step) -> bool:
                        pieces[step.batch_id] = pieces.get(step.batch_id, "") + step.token
                        return "ĊĊ" in pieces[step.batch_id]

                    results = generator.generate_batch(
                        ids, max_length=args.new_tokens, sampling_topk=1, include_prompt_in_result=False,
                        max_batch_size=args.prompts, callback=at_blank_line, return_end_token=True,
                    )
                    texts = [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
                    return [t[: t.find("\n\n")] if "\n\n" in t else t for t in texts]

                rows[f"ctranslate2 {compute_type}"] = timed(run_ct2, args.repeats)
    expected = rows["transformers"][1]
    print(f"{args.prompts} prompts (~{len(tokenizer(prompts[0])['input_ids'])} tokens), greedy, {args.new_tokens} new tokens")
    print(f"{'engine':<22}{'median s':>10}{'gen tok/s':>11}{'same text as transformers':>28}")
    for name, (seconds, texts) in rows.items():
        generated = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        same = sum(a == b for a, b in zip(texts, expected))
        print(f"{name:<22}{seconds:>10.2f}{generated / seconds:>11.1f}{same:>20}/{len(texts)}")


if __name__ == "__main__":
    main()
