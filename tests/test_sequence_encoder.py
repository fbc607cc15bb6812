"""The sequence encoder and its one-pass windows: causal, ties as sets, finite when empty."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from twotower_pipeline.model.sequence_encoder import (
    CausalMeanPooling,
    CausalSelfAttention,
    sequence_encoder,
)
from twotower_pipeline.training.sequence_task import epoch_batches, sequence_windows

DIM, LENGTH = 8, 6


def _encoder(seed: int = 0, dropout: float = 0.0, n_blocks: int = 2) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(DIM, LENGTH, n_blocks=n_blocks, n_heads=2, dropout=dropout).eval()


def _table(n_items: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(n_items, DIM, generator=torch.Generator().manual_seed(seed))


def test_output_at_a_position_ignores_later_items():
    encoder, table = _encoder(), _table()
    items = torch.tensor([[0, 3, 5, 7, 9, 11]])
    mask = torch.tensor([[False, True, True, True, True, True]])
    before = encoder(table[items], mask)
    for t in range(1, LENGTH - 1):
        changed = items.clone()
        changed[0, t + 1 :] = torch.tensor([13, 14, 15, 16, 17])[: LENGTH - t - 1]
        after = encoder(table[changed], mask)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


def test_output_reads_earlier_items():
    encoder, table = _encoder(), _table()
    mask = torch.ones(1, LENGTH, dtype=torch.bool)
    a = encoder(table[torch.tensor([[1, 2, 3, 4, 5, 6]])], mask)
    b = encoder(table[torch.tensor([[7, 2, 3, 4, 5, 6]])], mask)
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("encoder", [_encoder(), CausalMeanPooling()])
def test_a_window_with_no_item_gives_zeros_and_finite_gradients(encoder):
    table = _table().requires_grad_()
    items = torch.zeros(2, LENGTH, dtype=torch.long)
    mask = torch.zeros(2, LENGTH, dtype=torch.bool)
    mask[1, -2:] = True  # one window empty, one with two items
    items[1, -2:] = torch.tensor([4, 5])
    encoded = encoder.train()(table[items], mask)
    assert torch.isfinite(encoded).all()
    assert torch.equal(encoded[0], torch.zeros(LENGTH, DIM))
    assert torch.equal(encoded[1, :-2], torch.zeros(LENGTH - 2, DIM))
    encoded.sum().backward()
    assert torch.isfinite(table.grad).all()
    params = list(encoder.parameters())
    assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)


def test_a_cut_window_reads_as_the_full_one():
    encoder, table = _encoder(), _table()
    items = torch.tensor([[0, 0, 0, 2, 4, 6]])
    mask = items > 0
    full = encoder(table[items], mask)
    cut = encoder(table[items[:, 3:]], mask[:, 3:])
    torch.testing.assert_close(cut, full[:, 3:])


def test_the_same_seed_gives_the_same_encoder_and_dropout():
    table = _table()
    items = torch.tensor([[0, 1, 2, 3, 4, 5]])
    mask = items > 0
    outputs = []
    for _ in range(2):
        encoder = _encoder(seed=3, dropout=0.3).train()
        torch.manual_seed(7)
        outputs.append(encoder(table[items], mask))
    assert torch.equal(outputs[0], outputs[1])


def test_mean_pooling_is_the_running_mean():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    items = torch.tensor([[0, 1, 2, 3]])
    mask = items > 0
    encoded = CausalMeanPooling()(table[items], mask)
    expected = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.5, 1.0], [4 / 3, 5 / 3]]])
    torch.testing.assert_close(encoded, expected)
    torch.testing.assert_close(CausalMeanPooling.last(encoded), expected[:, -1])


def test_sequence_encoder_names_its_choices():
    assert isinstance(sequence_encoder("mean", DIM, LENGTH, 1, 1, 0.0), CausalMeanPooling)
    assert isinstance(sequence_encoder("attention", DIM, LENGTH, 1, 1, 0.0), CausalSelfAttention)
    with pytest.raises(ValueError, match="attention or mean"):
        sequence_encoder("gru", DIM, LENGTH, 1, 1, 0.0)


# --- one-pass training windows ----------------------------------------------------------------

# User 0 watches items 1..7; items 2 and 3 share second 2. User 1's two items share one second.
LOG = pd.DataFrame(
    {
        "user": [0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2],
        "item": [1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5],
        "timestamp": [1, 2, 2, 3, 4, 5, 6, 5, 5, 1, 2, 3],
    }
)


def test_windows_cut_by_hand():
    windows = sequence_windows(LOG.sample(frac=1.0, random_state=0), length=3)
    # User 0's prefixes end at sequence positions 0 (items 2, 3), 2 (item 4), 3, 4, 5: windows
    # end at 5 (items 4 5 6) and at 2 (items 1 2 3). User 1 has no history; user 2 one window.
    assert windows.users.tolist() == [0, 0, 1, 2]
    assert windows.items.tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0], [0, 3, 4]]
    assert windows.mask.tolist() == [[True] * 3, [True] * 3, [False] * 3, [False, True, True]]
    assert windows.target_ptr.tolist() == [0, 4, 7, 9, 12]
    assert windows.target_items.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5]
    assert windows.target_positions.tolist() == [-1, 0, 0, 2, 0, 1, 2, -1, -1, -1, 1, 2]


def test_every_training_row_is_a_target_exactly_once():
    shuffled = LOG.sample(frac=1.0, random_state=1).reset_index(drop=True)
    windows = sequence_windows(shuffled, length=2)
    assert sorted(windows.target_rows.tolist()) == list(range(len(LOG)))
    torch.testing.assert_close(
        windows.target_items, torch.from_numpy(shuffled["item"].to_numpy()[windows.target_rows])
    )
    seen = []
    for batch in epoch_batches(windows, targets_per_batch=3, generator=torch.Generator()):
        seen += batch.target_rows.tolist()
        assert torch.equal(
            batch.target_users, torch.from_numpy(shuffled["user"].to_numpy()[batch.target_rows])
        )
    assert sorted(seen) == list(range(len(LOG)))


def _tie_states(tie_items: list[int]) -> torch.Tensor:
    log = pd.DataFrame({"user": [0] * 5, "item": [1, *tie_items, 6], "timestamp": [1, 2, 2, 2, 3]})
    windows = sequence_windows(log, length=LENGTH)
    encoder, table = _encoder(), _table()
    (batch,) = epoch_batches(windows, 100, torch.Generator().manual_seed(0))
    states = batch.user_states(encoder(table[batch.items], batch.mask))
    return dict(zip(batch.target_items.tolist(), states, strict=True)), encoder, table


def test_a_tie_group_never_sees_itself():
    states, encoder, table = _tie_states([2, 3, 4])
    # The window is [_, _, 1, 2, 3, 4] (positions 0..5): item 1 alone at position 2.
    only_first = torch.tensor([[0, 0, 1, 0, 0, 0]])
    alone = encoder(table[only_first], only_first > 0)[0, 2]
    for item in (2, 3, 4):  # each sees item 1 only, not the others of its second
        torch.testing.assert_close(states[item], alone)
    other, _, _ = _tie_states([12, 13, 14])
    for item, changed in zip((2, 3, 4), (12, 13, 14), strict=True):
        torch.testing.assert_close(other[changed], states[item])
    assert not torch.allclose(other[6], states[6])  # the next target reads the whole group
    assert torch.equal(states[1], torch.zeros(DIM))  # the first item has no history


def test_a_stride_of_one_gives_every_target_a_full_window():
    windows = sequence_windows(LOG, length=3, stride=1)
    positions = windows.target_positions
    assert set(positions[positions >= 0].tolist()) == {2}
    assert sorted(windows.target_rows.tolist()) == list(range(len(LOG)))
    # User 0's item 6 (prefix end 4) reads items 3, 4, 5 of its sequence: items 3, 4, 5.
    (where,) = torch.nonzero(windows.target_items == 6, as_tuple=True)
    window = int(torch.searchsorted(windows.target_ptr, where, right=True)) - 1
    assert windows.items[window].tolist() == [3, 4, 5]


def test_pooled_batches_still_hold_every_target_once():
    windows = sequence_windows(LOG, length=3)
    for pool in (1, 4):
        rows = []
        for batch in epoch_batches(windows, 2, torch.Generator().manual_seed(pool), pool=pool):
            rows += batch.target_rows.tolist()
        assert sorted(rows) == list(range(len(LOG)))
