"""Multi-turn GRPO, the pure parts: group-relative advantages and the clipped token-level loss.

A group is G episodes of the same task and seed family. Each episode's advantage is its reward
minus the group mean, optionally divided by the group standard deviation (Shao et al., 2024,
"DeepSeekMath"); every model-written token of the episode gets that advantage. Environment
tokens (observations, feedback, the prompt) have ``response_mask == 0`` and never enter the loss.

    loss = masked_mean( -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) )
           + kl_coef * masked_mean(k3(logp, ref_logp))

with ``ratio = exp(logp - old_logp)`` per token and the k3 estimator of KL(pi || pi_ref)
(Schulman, 2020): ``exp(ref - logp) - (ref - logp) - 1``, non-negative and unbiased.
``masked_mean`` averages over all model tokens of the batch (token-level, as in DAPO), so long
episodes are not down-weighted per token.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages.

    Args:
        rewards: ``(n_episodes,)`` episode rewards.
        group_ids: ``(n_episodes,)`` integer id of each episode's group.
        scale_by_std: divide by the group's (population) standard deviation.
        eps: added to the standard deviation (a group with equal rewards gets advantage 0).

    Returns:
        ``(n_episodes,)`` advantages: reward minus its group's mean (over std + eps if scaled).
    """
    rewards = rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1 if inverse.numel() else 0
    counts = torch.zeros(groups).index_add_(0, inverse, torch.ones_like(rewards))
    means = torch.zeros(groups).index_add_(0, inverse, rewards) / counts
    centred = rewards - means[inverse]
    if not scale_by_std:
        return centred
    variances = torch.zeros(groups).index_add_(0, inverse, centred**2) / counts
    return centred / (variances.sqrt()[inverse] + eps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1, over the whole batch (0 when the mask is empty).

    Shapes: ``values`` and ``mask`` ``(batch, seq)``; returns a scalar.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate over model tokens, plus the optional KL penalty.

    Args:
        logprobs: ``(batch, seq)`` log-probabilities of the taken tokens under the current policy.
        old_logprobs: ``(batch, seq)`` the same under the policy that sampled them (detached).
        advantages: ``(batch,)`` one advantage per sequence (broadcast over its tokens).
        response_mask: ``(batch, seq)`` 1 on tokens the model wrote, 0 on prompt/environment tokens.
        clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``.
        ref_logprobs: ``(batch, seq)`` under the reference model (needed when ``kl_coef > 0``).
        kl_coef: weight of the k3 KL estimate.

    Returns:
        (loss, stats) with the scalar loss and ``clip_fraction``, ``kl``, ``ratio_mean`` floats.
    """
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    ratio = torch.exp(logprobs - old_logprobs)
    advantage = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantage
    loss = masked_mean(-torch.minimum(unclipped, clipped), response_mask)
    stats = {
        "clip_fraction": float(masked_mean((clipped < unclipped).float(), response_mask)),
        "ratio_mean": float(masked_mean(ratio.detach(), response_mask)),
        "kl": 0.0,
    }
    if ref_logprobs is not None:
        log_ratio = ref_logprobs - logprobs
        kl = masked_mean(torch.exp(log_ratio) - log_ratio - 1.0, response_mask)
        stats["kl"] = float(kl.detach())
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    return loss, stats
