"""The seeded inverse-CDF sampler shared by the in-process backends."""

from __future__ import annotations

import pytest
import torch

from leafe.policy.sampling import CDF_BLOCK, filter_top_p, inverse_cdf, sample_next, seeded_generator


def _one_level(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The definition, one float64 running sum over the whole vocabulary."""
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    targets = uniforms.to(torch.float64) * cdf[:, -1]
    return torch.searchsorted(cdf, targets[:, None], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


@pytest.mark.parametrize("vocab", [7, CDF_BLOCK, 3 * CDF_BLOCK + 5, 49152])
def test_two_level_search_picks_the_token_of_one_running_sum(vocab):
    gen = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(64, vocab, generator=gen) * 3, dim=-1)
    probs[:8, : vocab // 2] = 0  # whole blocks of zero probability ahead of the mass
    uniforms = torch.rand(64, dtype=torch.float64, generator=gen)
    uniforms[-1] = 1.0 - 2.0**-53  # the last interval's far end
    assert torch.equal(inverse_cdf(probs, uniforms), _one_level(probs, uniforms))


def test_two_level_search_never_returns_a_zero_probability_token():
    vocab = 2 * CDF_BLOCK
    probs = torch.zeros(4, vocab)
    probs[:, 3] = 0.25  # the first block ends in zeros: a running sum short by rounding must not land there
    probs[:, CDF_BLOCK + 1] = 0.75
    uniforms = torch.tensor([0.0, 0.25 - 1e-12, 0.25, 1.0 - 2.0**-53], dtype=torch.float64)
    assert inverse_cdf(probs, uniforms).tolist() == [3, 3, CDF_BLOCK + 1, CDF_BLOCK + 1]


def test_a_block_sum_rounded_up_still_gives_a_token_of_that_block():
    # A block whose float32 sum exceeds its float64 running sum: a target between the two is
    # past the block's last running sum, and must fall on its last token of non-zero probability.
    for seed in range(200):
        block = torch.rand(CDF_BLOCK, generator=torch.Generator().manual_seed(seed))
        block[-10:] = 0
        if block.sum().double().item() > block.double().sum().item():
            break
    else:
        pytest.fail("no float32 block sum rounded up in 200 tries")
    probs = torch.cat([block, torch.zeros(CDF_BLOCK)])[None]
    uniforms = torch.tensor([1.0 - 2.0**-53], dtype=torch.float64)
    assert inverse_cdf(probs, uniforms).tolist() == [CDF_BLOCK - 11]


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sample_next_draws_the_filtered_tempered_softmax(top_p):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2 * CDF_BLOCK + 3, generator=gen)
    logits[0, :4] += 4  # a few likely tokens, so that the counts below are large
    generator = seeded_generator(5)
    n = 4000
    draws = torch.cat([sample_next(logits, [generator], 0.7, top_p) for _ in range(n)])
    probs = torch.softmax(filter_top_p(logits / 0.7, top_p), dim=-1)[0]
    assert probs[draws].min() > 0  # nothing outside the top-p set
    for token in range(4):
        expected = probs[token].item() * n
        assert abs((draws == token).sum().item() - expected) < 4 * (expected * (1 - probs[token].item())) ** 0.5 + 1


def test_sample_next_leaves_the_logits_alone():
    logits = torch.randn(3, 100)
    before = logits.clone()
    sample_next(logits, [seeded_generator(i) for i in range(3)], 0.7, 1.0)
    assert torch.equal(logits, before)
