"""GRPO's pure functions against hand-computed values; environment tokens never count."""

import math

import pytest
import torch

from leafe.algos.grpo_loss import group_advantages, grpo_loss, masked_mean


def test_group_advantages_center_and_scale_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0])
    groups = torch.tensor([7, 7, 7, 7, 3, 3])
    centred = group_advantages(rewards, groups, scale_by_std=False)
    assert torch.allclose(centred, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0]))
    scaled = group_advantages(rewards, groups, eps=0.0 + 1e-12)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)  # population std of [1, 0, 0, 0]
    assert torch.allclose(scaled[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-5)
    assert torch.equal(scaled[4:], torch.zeros(2))  # equal rewards: no signal


def test_loss_without_clipping_is_minus_advantage_times_ratio_over_model_tokens():
    logprobs = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.2, 0.4, 0.4]]))
    old = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.2, 0.5, 0.4]]))
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, stats = grpo_loss(logprobs, old, advantages, mask, clip_low=0.5, clip_high=0.5)
    # tokens: (row0: ratio 1, 1; A=1) and (row1: ratio 1, 0.8; A=-2) -> -(1 + 1 - 2 - 1.6) / 4
    assert math.isclose(loss.item(), -(1 + 1 - 2 - 1.6) / 4, rel_tol=1e-6)
    assert stats["clip_fraction"] == 0.0


def test_clipping_stops_the_gain_beyond_the_trust_region():
    logprobs = torch.log(torch.tensor([[0.6]]))
    old = torch.log(torch.tensor([[0.4]]))  # ratio 1.5
    mask = torch.ones(1, 1)
    loss, stats = grpo_loss(logprobs, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.2)
    assert math.isclose(loss.item(), -1.2, rel_tol=1e-6) and stats["clip_fraction"] == 1.0
    logprobs.requires_grad_(True)
    loss, _ = grpo_loss(logprobs, old, torch.tensor([1.0]), mask)
    loss.backward()
    assert logprobs.grad.abs().sum() == 0  # clipped: no gradient pushes the ratio further
    # With a negative advantage the pessimistic (unclipped) term is kept.
    loss, _ = grpo_loss(torch.log(torch.tensor([[0.6]])), old, torch.tensor([-1.0]), mask)
    assert math.isclose(loss.item(), 1.5, rel_tol=1e-6)


def test_environment_tokens_have_no_gradient():
    logprobs = torch.log(torch.tensor([[0.3, 0.6, 0.2]])).requires_grad_(True)
    old = logprobs.detach() - 0.1
    mask = torch.tensor([[1, 0, 1]])
    loss, _ = grpo_loss(logprobs, old, torch.tensor([2.0]), mask, clip_low=1.0, clip_high=1.0)
    loss.backward()
    assert logprobs.grad[0, 1] == 0 and logprobs.grad[0, 0] != 0 and logprobs.grad[0, 2] != 0


def test_k3_kl_penalty():
    logprobs = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    mask = torch.tensor([[1, 1]])
    loss, stats = grpo_loss(logprobs, logprobs.detach(), torch.tensor([0.0]), mask, ref_logprobs=ref, kl_coef=0.5)
    k3 = (0.5 - math.log(0.5) - 1 + 0.0) / 2  # token 1: exp(log .5) - log .5 - 1; token 2: 0
    assert math.isclose(stats["kl"], k3, rel_tol=1e-6) and math.isclose(loss.item(), 0.5 * k3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logprobs, logprobs, torch.tensor([0.0]), mask, kl_coef=0.1)


def test_masked_mean_of_an_empty_mask_is_zero():
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0
