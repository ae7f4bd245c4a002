"""The stage-2 loss against hand-computed values."""

import math

import torch

from leafe.algos.sft_loss import COUNTERFACTUAL, IGNORE, REHEARSAL, sft_loss, target_positions


def test_target_positions_shift_labels_by_one():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8], [IGNORE, 5, IGNORE, IGNORE]])
    rows, positions, targets = target_positions(labels)
    assert rows.tolist() == [0, 0, 1] and positions.tolist() == [1, 2, 0] and targets.tolist() == [7, 8, 5]


def test_loss_is_mean_cf_nll_plus_beta_mean_reh_nll():
    # Two-token vocabulary; logits chosen so each NLL is easy to write down.
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]])
    targets = torch.tensor([0, 0, 0])
    kinds = torch.tensor([COUNTERFACTUAL, COUNTERFACTUAL, REHEARSAL])
    nll_half, nll_3_4, nll_1_4 = -math.log(0.5), -math.log(0.75), -math.log(0.25)
    loss, stats = sft_loss(logits, targets, kinds, beta=0.5)
    assert math.isclose(loss.item(), (nll_half + nll_3_4) / 2 + 0.5 * nll_1_4, rel_tol=1e-6)
    assert stats["cf_tokens"] == 2 and stats["reh_tokens"] == 1
    only_reh, _ = sft_loss(logits, targets, kinds, beta=2.0, cf_weight=0.0)
    assert math.isclose(only_reh.item(), 2 * nll_1_4, rel_tol=1e-6)


def test_a_missing_kind_contributes_nothing():
    logits = torch.tensor([[1.0, 0.0]])
    loss, stats = sft_loss(logits, torch.tensor([1]), torch.tensor([REHEARSAL]), beta=1.0)
    assert math.isclose(loss.item(), -math.log(math.exp(0) / (math.exp(1) + 1)), rel_tol=1e-6)
    assert stats["cf_tokens"] == 0 and "cf_nll" not in stats
