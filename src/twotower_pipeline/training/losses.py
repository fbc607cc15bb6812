"""Training losses, each with the value a model without skill gets (the health checks' floor).

- `bce`: binary cross-entropy over each positive and its neg_ratio sampled
  negatives, labels 1 then 0. No skill is the constant guess 1 / (1 + neg_ratio):
  its entropy, 0.4506 at neg_ratio 5.
- `softmax`: a sampled softmax. Each positive competes with its own neg_ratio
  sampled negatives and with the batch's other positives' items (shared
  negatives, no extra item vectors to compute). A candidate's logit has the
  log of how often it is expected among the row's candidates subtracted
  (logQ; Yi et al., RecSys 2019, for in-batch frequencies): an item that is
  count_j of the batch's positives and drawn by the sampler with q_j is
  expected count_j + neg_ratio q_j times, the positive included. Without it the loss
  pushes popular items down for being drawn often, not for being wrong. A
  candidate that is one of the row's user's own positives in the batch (an
  accidental hit, the target itself included when it shows up again) is left
  out. No skill is a model whose corrected logits are all equal: log of the
  number of candidates, log(batch_size + neg_ratio).

The losses take logits, not vectors: the model decides how a score is made
(scaled cosine here), the loss only how scores are compared.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

LOSSES = ("bce", "softmax")


def bce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Return the mean BCE-with-logits of (B, 1 + k) logits whose first column is the positive."""
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def bce_no_skill(neg_ratio: int) -> float:
    """Return BCE's loss for the constant guess 1 / (1 + neg_ratio): 0.4506 at neg_ratio 5."""
    p = 1.0 / (1 + neg_ratio)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def softmax_no_skill(neg_ratio: int, batch_size: int) -> float:
    """Return the sampled softmax's loss when every corrected logit is equal: log(#candidates).

    A full batch gives each positive batch_size - 1 in-batch negatives and
    neg_ratio sampled ones, the positive itself the last candidate.
    """
    return math.log(batch_size + neg_ratio)


def no_skill(loss: str, neg_ratio: int, batch_size: int) -> float:
    """Return the no-skill value of a `training.loss` choice."""
    if loss == "bce":
        return bce_no_skill(neg_ratio)
    if loss == "softmax":
        return softmax_no_skill(neg_ratio, batch_size)
    raise ValueError(f"training.loss must be one of {', '.join(LOSSES)}, not {loss!r}")


def sampler_log_q(
    negatives: torch.Tensor, n_items: int, probabilities: np.ndarray | torch.Tensor | None
) -> torch.Tensor:
    """Return log q of each sampled negative: -log n_items for uniform, log p[item] otherwise.

    probabilities is the sampler's distribution over items (None: uniform), as
    data.sampling.item_distribution returns it.
    """
    if probabilities is None:
        return torch.full(negatives.shape, -math.log(n_items), device=negatives.device)
    p = torch.as_tensor(probabilities, dtype=torch.float32, device=negatives.device)
    return p[negatives].clamp(min=1e-30).log()


def _accidental_hits(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (in-batch (B, B), sampled (B, k)) bool: the candidate is a positive of the row's user.

    Read from a (batch users x batch items) table of who has what. An item
    that is one row's positive only is a hit exactly for that row's user, so
    the in-batch block is "same user" but in the columns of repeated items.
    """
    user_rows = torch.unique(users, return_inverse=True)[1]
    items, item_cols, counts = torch.unique(positives, return_inverse=True, return_counts=True)
    has = torch.zeros(
        int(user_rows.max()) + 1, items.numel(), dtype=torch.bool, device=users.device
    )
    has[user_rows, item_cols] = True
    in_batch = user_rows.unsqueeze(1) == user_rows.unsqueeze(0)
    repeated = torch.nonzero(counts[item_cols] > 1).squeeze(1)
    if repeated.numel():
        in_batch[:, repeated] = has[:, item_cols[repeated]].index_select(0, user_rows)
    where = torch.searchsorted(items, negatives.contiguous()).clamp_(max=items.numel() - 1)
    sampled = (items[where] == negatives) & has[user_rows.unsqueeze(1), where]
    return in_batch, sampled


def expected_log_counts(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    positive_log_q: torch.Tensor,
    sampled_log_q: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return log of how often each candidate is expected among a row's candidates: (B,), (B, k).

    A row's candidates are the batch's B positives (drawn as the data draws them:
    item j appears count_j times) and its k sampled negatives (k draws from the
    sampler, q_j each), so item j is expected count_j + k q_j times, whichever
    group it came from. positive_log_q (B,) and sampled_log_q (B, k) are the
    sampler's log q of the positives and of the negatives.
    """
    k = negatives.shape[1]
    items, inverse, counts = torch.unique(positives, return_inverse=True, return_counts=True)
    counts = counts.to(positive_log_q.dtype)
    in_batch = counts[inverse] + k * positive_log_q.exp()
    where = torch.searchsorted(items, negatives.contiguous()).clamp_(max=items.numel() - 1)
    drawn = torch.where(items[where] == negatives, counts[where], torch.zeros_like(sampled_log_q))
    return in_batch.log(), (drawn + k * sampled_log_q.exp()).log()


def sampled_softmax_loss(
    in_batch_logits: torch.Tensor,
    sampled_logits: torch.Tensor,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    log_q: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Return the mean sampled-softmax loss of a batch of B positives.

    in_batch_logits (B, B): row b's user scored against row j's positive item,
    the diagonal each row's own positive. sampled_logits (B, k): row b's user
    against its k sampled negatives, the items `negatives` (B, k). users and
    positives (B,) say whose positives the rows are, for the accidental hits.
    log_q is (positive_log_q (B,), sampled_log_q (B, k)), the sampler's log
    probability of each positive and each negative: every candidate's logit,
    the target's too, then loses the log of its expected count among the row's
    candidates (expected_log_counts). None turns the correction off.
    """
    batch = positives.numel()
    if in_batch_logits.shape != (batch, batch) or sampled_logits.shape != negatives.shape:
        raise ValueError(
            f"in-batch logits {tuple(in_batch_logits.shape)} must be ({batch}, {batch}) and "
            f"sampled logits {tuple(sampled_logits.shape)} the shape of negatives "
            f"{tuple(negatives.shape)}"
        )
    if log_q is not None:
        positive_log_q, sampled_log_q = (q.to(in_batch_logits.dtype) for q in log_q)
        in_batch_count, sampled_count = expected_log_counts(
            positives, negatives, positive_log_q, sampled_log_q
        )
        in_batch_logits = in_batch_logits - in_batch_count.unsqueeze(0)
        sampled_logits = sampled_logits - sampled_count
    target = in_batch_logits.diagonal()
    in_batch_hit, sampled_hit = _accidental_hits(users, positives, negatives)
    in_batch_hit.fill_diagonal_(False)
    # Two log-sum-exps joined, rather than one over a concatenated copy of the (B, B) block.
    in_batch_lse = torch.logsumexp(in_batch_logits.masked_fill(in_batch_hit, -torch.inf), dim=1)
    sampled_lse = torch.logsumexp(sampled_logits.masked_fill(sampled_hit, -torch.inf), dim=1)
    return (torch.logaddexp(in_batch_lse, sampled_lse) - target).mean()
