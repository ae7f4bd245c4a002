"""The stage-2 objective of LEAFE: L = L_cf + beta * L_reh over target tokens only.

Each term is the mean negative log-likelihood of the target (reply) tokens of its examples in
the batch; prompt tokens (task, history, observations, feedback) carry label ``IGNORE`` and never
enter the loss. A term with no target tokens in the batch contributes 0. ``beta`` weights
rehearsal against the counterfactual corrections; ``cf_weight`` = 0 gives the L_reh-only
ablation and ``beta`` = 0 the L_cf-only one.
"""

from __future__ import annotations

import torch

IGNORE = -100
COUNTERFACTUAL, REHEARSAL = 0, 1


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the loss is computed, with the usual next-token shift.

    Args:
        labels: ``(batch, seq)`` token ids of the targets, ``IGNORE`` elsewhere.

    Returns:
        (rows, positions, targets), each ``(n_targets,)``: the logits at ``[rows, positions]``
        predict ``targets`` (= ``labels[rows, positions + 1]``).
    """
    shifted = labels[:, 1:]
    rows, positions = torch.nonzero(shifted != IGNORE, as_tuple=True)
    return rows, positions, shifted[rows, positions]


def sft_loss(
    logits: torch.Tensor, targets: torch.Tensor, kinds: torch.Tensor, beta: float = 1.0, cf_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``cf_weight * mean NLL(counterfactual targets) + beta * mean NLL(rehearsal targets)``.

    Args:
        logits: ``(n_targets, vocab)`` logits at the target positions only.
        targets: ``(n_targets,)`` the target token ids.
        kinds: ``(n_targets,)`` ``COUNTERFACTUAL`` or ``REHEARSAL``: the kind of the example each
            target token belongs to.
        beta: weight of the rehearsal term.
        cf_weight: weight of the counterfactual term (1 in the paper).

    Returns:
        (loss, stats): the scalar loss and the two mean NLLs and token counts as floats.
    """
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    loss = logits.new_zeros((), dtype=torch.float32)
    stats: dict[str, float] = {}
    for name, kind, weight in (("cf", COUNTERFACTUAL, cf_weight), ("reh", REHEARSAL, beta)):
        selected = nll[kinds == kind]
        stats[f"{name}_tokens"] = float(selected.numel())
        if selected.numel():
            term = selected.mean()
            stats[f"{name}_nll"] = float(term.detach())
            if weight:
                loss = loss + weight * term
    return loss, stats
