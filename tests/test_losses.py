"""Losses: BCE and the sampled softmax (logQ, accidental hits), each with its no-skill value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twotower_pipeline.training.losses import (
    bce_loss,
    bce_no_skill,
    no_skill,
    sampled_softmax_loss,
    sampler_log_q,
    softmax_no_skill,
)


def test_bce_no_skill_is_the_constant_guess():
    assert bce_no_skill(5) == pytest.approx(0.4506, abs=5e-5)
    guess = math.log(1 / 5)  # logit of p = 1/6
    assert bce_loss(torch.full((4, 6), guess)).item() == pytest.approx(bce_no_skill(5), abs=1e-6)
    assert no_skill("bce", 5, 2048) == bce_no_skill(5)
    with pytest.raises(ValueError, match="bce, softmax"):
        no_skill("hinge", 5, 2048)


def test_softmax_at_uniform_logits_is_log_of_the_candidates():
    batch, k = 4, 3
    loss = sampled_softmax_loss(
        torch.zeros(batch, batch),
        torch.zeros(batch, k),
        users=torch.arange(batch),
        positives=torch.tensor([10, 11, 12, 13]),
        negatives=torch.tensor([[0, 1, 2]] * batch),
        log_q=None,
    )
    assert loss.item() == pytest.approx(math.log(batch + k))
    assert softmax_no_skill(k, batch) == pytest.approx(math.log(batch + k))
    assert no_skill("softmax", k, batch) == softmax_no_skill(k, batch)


# Two users, one positive each (items 10, 11), one sampled negative each (12, 13), drawn uniformly
# from a catalogue of 4: three candidates a row. logits[b, j]: user b against row j's positive.
IN_BATCH = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
SAMPLED = torch.tensor([[1.0], [0.5]])
USERS, POSITIVES, NEGATIVES = (
    torch.tensor([0, 1]),
    torch.tensor([10, 11]),
    torch.tensor([[12], [13]]),
)


def _loss(
    in_batch=IN_BATCH,
    users=USERS,
    positives=POSITIVES,
    log_q=True,
    sampled=SAMPLED,
    negatives=NEGATIVES,
):
    q = (
        (
            sampler_log_q(positives, n_items=4, probabilities=None),
            sampler_log_q(negatives, n_items=4, probabilities=None),
        )
        if log_q
        else None
    )
    return sampled_softmax_loss(in_batch, sampled, users, positives, negatives, q).item()


def test_log_q_correction_by_hand():
    e = math.exp
    plain = (math.log(e(2) + e(0) + e(1)) - 2 + math.log(e(3) + e(1) + e(0.5)) - 3) / 2
    assert _loss(log_q=False) == pytest.approx(plain)
    # One sampled draw a row from 4 items (q = 1/4): an in-batch item is expected once (it is
    # one of the 2 positives) plus 1/4 (the sampler may draw it), 1.25 times; a sampled one
    # (not a positive) 0.25 times. Relative to the target the sampled logit gains log 5, the
    # in-batch negative nothing.
    corrected = (math.log(e(2) + e(0) + 5 * e(1)) - 2 + math.log(e(3) + e(1) + 5 * e(0.5)) - 3) / 2
    assert _loss() == pytest.approx(corrected)


def test_log_q_of_a_popular_in_batch_item():
    # Rows 0 and 1 share positive 10 (frequency 2/3), row 2 has 11 (1/3).
    in_batch = torch.tensor([[1.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.0, 1.0]])
    sampled = torch.zeros(3, 1)
    loss = sampled_softmax_loss(
        in_batch,
        sampled,
        torch.tensor([0, 1, 2]),
        torch.tensor([10, 10, 11]),
        torch.tensor([[12], [12], [12]]),
        (torch.full((3,), math.log(0.1)), torch.full((3, 1), math.log(0.5))),
    ).item()
    # Expected counts: item 10 is 2 of the positives (+ 0.1 from the sampler), 11 is 1 (+ 0.1),
    # the sampled 12 is no positive (0.5 from the sampler).
    e, l10, l11, l12 = math.exp, math.log(2.1), math.log(1.1), math.log(0.5)
    # Row 0: its target (10) is also row 1's positive: that copy is masked.
    row0 = math.log(e(1 - l10) + e(0 - l11) + e(0 - l12)) - (1 - l10)
    row1 = math.log(e(2 - l10) + e(0.5 - l11) + e(-l12)) - (2 - l10)
    row2 = math.log(e(0 - l10) + e(0 - l10) + e(1 - l11) + e(-l12)) - (1 - l11)
    assert loss == pytest.approx((row0 + row1 + row2) / 3)


def test_accidental_hits_are_masked():
    # Rows 0 and 1 are one user's two positives (10, 11): neither is the other's negative, and
    # row 0's sampled 11 and row 2's sampled 12 (its own target) are left out too.
    in_batch = torch.tensor([[2.0, 5.0, 0.0], [5.0, 3.0, 1.0], [0.0, 0.0, 1.0]])
    sampled = torch.tensor([[5.0], [0.0], [5.0]])
    users, positives = torch.tensor([7, 7, 8]), torch.tensor([10, 11, 12])
    negatives = torch.tensor([[11], [13], [12]])
    loss = sampled_softmax_loss(in_batch, sampled, users, positives, negatives, None)
    e = math.exp
    row0 = math.log(e(2) + e(0)) - 2
    row1 = math.log(e(3) + e(1) + e(0)) - 3
    row2 = math.log(e(0) + e(0) + e(1)) - 1
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3)
    leaf = in_batch.clone().requires_grad_()
    sampled_softmax_loss(leaf, sampled, users, positives, negatives, None).backward()
    assert torch.isfinite(leaf.grad).all()
    assert leaf.grad[0, 1] == 0 and leaf.grad[1, 0] == 0


def test_sampler_log_q():
    negatives = torch.tensor([[0, 2], [1, 1]])
    torch.testing.assert_close(
        sampler_log_q(negatives, 4, None), torch.full((2, 2), math.log(0.25))
    )
    p = np.array([0.5, 0.25, 0.125, 0.125])
    expected = torch.log(torch.tensor([[0.5, 0.125], [0.25, 0.25]]))
    torch.testing.assert_close(sampler_log_q(negatives, 4, p), expected)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must be"):
        sampled_softmax_loss(torch.zeros(2, 3), SAMPLED, USERS, POSITIVES, NEGATIVES, None)


def _loop_softmax(in_batch, sampled, users, positives, negatives, q):
    """The loss written out a row and a candidate at a time; q: the sampler's probabilities."""
    batch, k = len(positives), negatives.shape[1]
    own = {(int(u), int(i)) for u, i in zip(users, positives, strict=True)}
    count = {int(i): int((positives == i).sum()) for i in positives}

    def expected(item: int) -> float:
        return math.log(count.get(item, 0) + k * q[item])

    log_q = q
    total = 0.0
    for b in range(batch):
        user = int(users[b])
        terms = []
        for j in range(batch):
            item = int(positives[j])
            if j != b and (user, item) in own:
                continue
            correction = expected(item) if log_q is not None else 0.0
            terms.append(float(in_batch[b, j]) - correction)
        for c in range(negatives.shape[1]):
            if (user, int(negatives[b, c])) in own:
                continue
            correction = expected(int(negatives[b, c])) if log_q is not None else 0.0
            terms.append(float(sampled[b, c]) - correction)
        target = float(in_batch[b, b]) - (expected(int(positives[b])) if log_q is not None else 0.0)
        total += math.log(sum(math.exp(t) for t in terms)) - target
    return total / batch


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("correct", [True, False])
def test_softmax_matches_a_loop_over_candidates(seed, correct):
    g = torch.Generator().manual_seed(seed)
    batch, k = 12, 3
    users = torch.randint(0, 4, (batch,), generator=g)
    positives = torch.randint(0, 6, (batch,), generator=g)  # repeats across and within users
    negatives = torch.randint(0, 8, (batch, k), generator=g)
    in_batch = torch.randn(batch, batch, generator=g, dtype=torch.float64)
    sampled = torch.randn(batch, k, generator=g, dtype=torch.float64)
    q = torch.rand(8, generator=g, dtype=torch.float64) + 0.1
    q = (q / q.sum()).numpy()
    log_q = (
        (sampler_log_q(positives, 8, q).double(), sampler_log_q(negatives, 8, q).double())
        if correct
        else None
    )
    loss = sampled_softmax_loss(in_batch, sampled, users, positives, negatives, log_q)
    expected = _loop_softmax(in_batch, sampled, users, positives, negatives, q if correct else None)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # the sampler's q is float32


def test_the_softmax_tasks_no_skill_is_the_loss_of_all_zero_logits_on_its_batches():
    from twotower_pipeline.training.tasks import BatchScores, SoftmaxTask

    # 1,000 items, uniform negatives: each sampled negative stands for 1000 / 2 items, so
    # with logQ equal raw logits cost about log(3 + 2 x 500), not log(3 + 2).
    task = SoftmaxTask(neg_ratio=2, batch_size=4, n_items=1000, log_q=True, probabilities=None)
    task.start_epoch()
    users = torch.tensor([0, 1, 2, 3])
    items = torch.tensor([[10, 500, 501], [11, 502, 503], [12, 504, 505], [13, 506, 507]])
    scores = BatchScores(users, items, torch.randn(4, 3), torch.randn(4, 4))
    task.loss(scores)
    # in-batch: the target and 3 others at -log(1 + 2/1000); sampled: 2 at -log(2/1000)
    expected = math.log(4 / (1 + 0.002) + 2 / 0.002) + math.log(1 + 0.002)
    assert task.epoch_no_skill() == pytest.approx(expected, rel=1e-5)
    assert task.epoch_no_skill() > math.log(4 + 2) + 5
