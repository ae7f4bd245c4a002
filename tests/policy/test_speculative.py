"""Prompt-lookup drafts and their exact verification, alone and inside the native engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.policy.native import NativePolicy
from leafe.policy.native_forward import LlamaFamilyForward
from leafe.policy.sampling import sample_next, seeded_generator
from leafe.policy.speculative import DRAFT_TOKENS, propose_draft, verify_drafts


def test_draft_follows_the_latest_longest_recurrence():
    context = np.array([5, 1, 2, 9, 9, 3, 1, 2, 7, 8, 0, 4, 3, 1, 2])
    # "3 1 2" recurs (at 5..7, followed by 7 8 0); "1 2" alone also recurs earlier (followed by 9).
    assert propose_draft(context, 3, min_ngram=2, max_ngram=3) == [7, 8, 0]
    assert propose_draft(context, 3, min_ngram=2, max_ngram=2) == [7, 8, 0]  # the latest "1 2"
    assert propose_draft(context, 10, min_ngram=3, max_ngram=3) == [7, 8, 0, 4, 3, 1, 2]  # up to the end
    assert propose_draft(context, 0) == []
    assert propose_draft(np.array([1, 2, 3, 4]), 5) == []  # nothing recurs
    assert propose_draft(np.array([6, 6]), 5, min_ngram=1) == [6]  # never the tail itself
    assert propose_draft(np.array([6]), 5, min_ngram=1) == []


def _one_at_a_time(logits, seed, temperature, top_p, stop_after):
    """Tokens sampled row by row from a fresh generator, as without drafts."""
    generator = seeded_generator(seed)
    return [int(sample_next(logits[j : j + 1], [generator], temperature, top_p)) for j in range(stop_after)], generator


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_verification_keeps_exactly_the_tokens_sampled_one_at_a_time(temperature, top_p):
    gen = torch.Generator().manual_seed(1)
    vocab, rows = 12, 6
    logits = torch.randn(3 * rows, vocab, generator=gen) * 2
    sequences = [logits[i * rows : (i + 1) * rows] for i in range(3)]
    reference = [_one_at_a_time(seq_logits, 10 + i, temperature, top_p, rows)[0] for i, seq_logits in enumerate(sequences)]
    # Draft 0 is right throughout (then the model adds a token), draft 1 is wrong at its third
    # token, draft 2 is wrong at once; each sequence owns len(draft) + 1 rows.
    drafts = [reference[0][:5], reference[1][:2] + [(reference[1][2] + 1) % vocab] + reference[1][3:5], [(reference[2][0] + 1) % vocab]]
    stacked = torch.cat([seq_logits[: len(d) + 1] for seq_logits, d in zip(sequences, drafts)])
    generators = [seeded_generator(10 + i) for i in range(3)]
    kept = verify_drafts(stacked, drafts, generators, temperature, top_p)
    assert kept == [reference[0][:6], reference[1][:3], reference[2][:1]]
    # Exactly one uniform per kept token: the generators continue as if decoding one at a time.
    for i, tokens in enumerate(kept):
        _, expected = _one_at_a_time(sequences[i], 10 + i, temperature, top_p, len(tokens))
        assert torch.equal(generators[i].get_state(), expected.get_state())


def _slots(net, slots, capacity):
    shape = (slots, net.kv_heads, capacity, net.head_dim)
    net.rope_table(capacity)
    return [torch.zeros(shape) for _ in net.layers], [torch.zeros(shape) for _ in net.layers]


@pytest.mark.parametrize("prefix", [10, 80])  # 80: a shared prefix long enough for the cascade path
def test_several_decode_tokens_per_slot_match_the_prompt_path(tiny_policy, prefix):
    net = LlamaFamilyForward(tiny_policy.model)
    gen = torch.Generator().manual_seed(0)
    common = torch.randint(0, 1000, (prefix,), generator=gen).tolist()
    histories = [common + torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (5, 17, 9)]
    continuations = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (4, 1, 6)]
    empty = torch.empty(0, dtype=torch.long)
    with torch.inference_mode():
        keys, values = _slots(net, 3, 128)
        net.forward(keys, values, empty, empty, [(slot, 0, h) for slot, h in enumerate(histories)])
        tokens = torch.tensor([t for more in continuations for t in more])
        positions = torch.tensor([len(h) + j for h, more in zip(histories, continuations) for j in range(len(more))])
        slots = torch.tensor([slot for slot, more in enumerate(continuations) for _ in more])
        hidden = net.forward(keys, values, tokens, positions, shared=prefix, decode_slots=slots)
        assert hidden.shape == (len(tokens), tiny_policy.model.config.hidden_size)
        # Every decode token's hidden state equals that of the whole sequence run as a prompt.
        row = 0
        for history, more in zip(histories, continuations):
            for j in range(len(more)):
                fresh_keys, fresh_values = _slots(net, 1, 128)
                reference = net.forward(fresh_keys, fresh_values, empty, empty, [(0, 0, history + more[: j + 1])])
                torch.testing.assert_close(hidden[row], reference[0], rtol=1e-4, atol=1e-4)
                row += 1
        for slot, (history, more) in enumerate(zip(histories, continuations)):  # keys/values written in place
            fresh_keys, fresh_values = _slots(net, 1, 128)
            net.forward(fresh_keys, fresh_values, empty, empty, [(0, 0, history + more)])
            end = len(history) + len(more)
            torch.testing.assert_close(keys[0][slot, :, :end], fresh_keys[0][0, :, :end], rtol=1e-4, atol=1e-4)


REPEATING = [
    "Observation: box at 3. Action: push right\n" * 6 + "Observation: box at 3. Action:",
    "Say a b c d e f a b c d e f a b c d e f a b c",
    "x",
]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("header", ["", "Push every box onto a goal. Walls are #, floor is _, you are P. " * 6])
def test_engine_with_drafts_generates_the_same_tokens(tiny_policy, temperature, header, monkeypatch):
    from leafe.policy import native

    # The tiny random model rarely repeats its context when sampling: always draft something (the
    # context's tail when nothing recurs; most such drafts are wrong, which must cost nothing).
    def always(context, room):
        return propose_draft(context, room, min_ngram=1) or context[-room:].tolist()

    monkeypatch.setattr(native, "propose_draft", always)
    params = SamplingParams(temperature=temperature, max_new_tokens=24, stop=("\n\n",))
    requests = [GenerationRequest(header + prompt, seed=i) for i, prompt in enumerate(REPEATING * 2)]
    results = []
    for drafts in (0, 8):
        engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4, speculative_tokens=drafts)
        results.append(engine.generate_tokens(requests, params))
        if drafts:
            assert engine.stats.draft_tokens > 0  # drafts were really proposed and verified
            steps_with_drafts = engine.stats.decode_steps
        else:
            steps_without = engine.stats.decode_steps
    assert [r.completion_token_ids for r in results[0]] == [r.completion_token_ids for r in results[1]]
    assert [r.generation for r in results[0]] == [r.generation for r in results[1]]
    assert steps_with_drafts <= steps_without


def test_a_model_that_repeats_its_context_needs_fewer_steps(embedded_model_dir):
    from leafe.config import PolicyConfig
    from leafe.policy import load_policy

    engine = load_policy(PolicyConfig(backend="native", speculative_tokens=8))
    prompt = "Copy the list exactly.\nList: apple, pear, plum, fig, kiwi, lime, date, yam\nCopy: apple, pear, plum, fig, kiwi, lime, date, yam\nList: red, blue, green, pink, gold\nCopy:"
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("\n",))
    text = engine.generate([GenerationRequest(prompt, seed=0)], params)[0].text
    assert text.startswith(" red, blue, green")
    stats = engine.stats
    assert stats.accepted_draft_tokens >= 4
    assert stats.decode_steps < stats.generated_tokens - 1  # several tokens per step


def test_the_config_default_is_the_engine_default():
    from leafe.config import PolicyConfig

    assert PolicyConfig().speculative_tokens == DRAFT_TOKENS == 4  # the measured best (docs/BENCHMARKS.md, session 19)
