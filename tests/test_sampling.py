"""Negative sampling: negatives are never a user's positives, and the sampler always ends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower_pipeline.data import sampling
from twotower_pipeline.data.sampling import (
    NegativeSamplingError,
    PositiveSet,
    build_training_examples,
    item_distribution,
    sample_negatives,
)


def test_positive_set_answers_membership_and_lists_a_users_items():
    positives = PositiveSet(np.array([0, 0, 2, 0]), np.array([3, 1, 1, 3]), n_items=4)
    assert positives.contains(np.array([0, 0, 1, 2, 2]), np.array([1, 2, 1, 1, 3])).tolist() == [
        True,
        False,
        False,
        True,
        False,
    ]
    assert positives.items_of(0).tolist() == [1, 3]
    assert positives.counts_per_user(3).tolist() == [2, 0, 1]


def test_negatives_never_include_the_users_positives():
    # User 0 has items 0-7 of 10, user 1 has item 0 only.
    users = np.r_[np.zeros(8, dtype=int), 1]
    items = np.r_[np.arange(8), 0]
    positives = PositiveSet(users, items, n_items=10)
    negatives = sample_negatives(users, positives, 5, np.random.default_rng(0))
    assert negatives.shape == (9, 5)
    assert set(negatives[:8].ravel()) <= {8, 9}
    assert 0 not in negatives[8]


def test_a_user_with_all_but_one_item_gets_that_item_every_time():
    users = np.zeros(49, dtype=int)
    positives = PositiveSet(users, np.arange(49), n_items=50)
    negatives = sample_negatives(users, positives, 10, np.random.default_rng(0))
    assert (negatives == 49).all()


def test_a_user_with_every_item_is_an_error_naming_the_user():
    users = np.r_[np.zeros(4, dtype=int), 7]
    positives = PositiveSet(users, np.r_[np.arange(4), 0], n_items=4)
    with pytest.raises(NegativeSamplingError, match=r"1 user\(s\) have interacted with all 4"):
        sample_negatives(users, positives, 1, np.random.default_rng(0))
    with pytest.raises(NegativeSamplingError, match=r"user indices \[0\]"):
        sample_negatives(users, positives, 1, np.random.default_rng(0))


def test_a_one_item_catalogue_is_an_error():
    positives = PositiveSet(np.array([0]), np.array([0]), n_items=1)
    with pytest.raises(NegativeSamplingError, match="at least 2 items"):
        sample_negatives(np.array([0]), positives, 1, np.random.default_rng(0))


def test_the_same_seed_draws_the_same_negatives():
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 50, 400)
    positives = PositiveSet(users, items, 50)
    first = sample_negatives(users, positives, 3, np.random.default_rng(1))
    second = sample_negatives(users, positives, 3, np.random.default_rng(1))
    assert np.array_equal(first, second)


def test_popularity_comes_from_train_counts_to_the_power_alpha():
    probabilities = item_distribution(np.array([0, 0, 0, 0, 2]), 3, "popularity", 0.5)
    assert probabilities.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert item_distribution(np.array([0]), 3, "uniform") is None
    with pytest.raises(ValueError, match="uniform or popularity"):
        item_distribution(np.array([0]), 3, "zipf")


def test_popularity_weighted_negatives_follow_the_weights():
    users = np.zeros(1, dtype=int)
    positives = PositiveSet(users, np.array([0]), n_items=4)
    probabilities = np.array([0.5, 0.3, 0.2, 0.0])
    negatives = sample_negatives(
        np.zeros(20_000, dtype=int), positives, 1, np.random.default_rng(0), probabilities
    ).ravel()
    share = np.bincount(negatives, minlength=4) / negatives.size
    assert share[0] == 0 and share[3] == 0
    assert share[1] == pytest.approx(0.6, abs=0.02) and share[2] == pytest.approx(0.4, abs=0.02)


def test_a_user_holding_every_weighted_item_gets_the_unweighted_rest():
    # Items 0-2 carry all the weight and user 0 has them all: item 3 is all that is left.
    positives = PositiveSet(np.zeros(3, dtype=int), np.arange(3), n_items=4)
    negatives = sample_negatives(
        np.zeros(3, dtype=int), positives, 4, np.random.default_rng(0), np.array([0.2, 0.3, 0.5, 0])
    )
    assert (negatives == 3).all()


def test_training_examples_are_each_positive_followed_by_its_negatives():
    train = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 2], "timestamp": [1, 2, 3]})
    examples = build_training_examples(train, 5, 2, np.random.default_rng(0))
    assert examples["user"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert examples["label"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0]
    assert examples["item"].tolist()[::3] == [0, 1, 2]
    negatives = examples.loc[examples["label"] == 0]
    assert not set(zip(negatives["user"], negatives["item"], strict=True)) & {
        (0, 0),
        (0, 1),
        (1, 2),
    }
    assert examples.dtypes.to_dict() == {"user": np.int32, "item": np.int32, "label": np.float32}


# --- properties ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 40),
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 39)), min_size=1, max_size=200),
    st.integers(1, 6),
    st.integers(1, 64),
    st.booleans(),
)
def test_negatives_are_never_positives_on_random_logs(n_items, pairs, neg_ratio, bitmap, popular):
    users = np.array([u for u, _ in pairs])
    items = np.array([i % n_items for _, i in pairs])
    positives = PositiveSet(users, items, n_items)
    probabilities = item_distribution(items, n_items, "popularity") if popular else None
    held = positives.counts_per_user(int(users.max()) + 1)
    try:
        negatives = sample_negatives(
            users,
            positives,
            neg_ratio,
            np.random.default_rng(0),
            probabilities,
            bitmap_bytes=bitmap,
        )
    except NegativeSamplingError:
        assert (held >= n_items).any()
        return
    assert negatives.shape == (users.size, neg_ratio)
    assert ((negatives >= 0) & (negatives < n_items)).all()
    assert not positives.contains(np.repeat(users, neg_ratio), negatives.ravel()).any()


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 300), st.integers(0, 1))
def test_sampler_ends_for_users_with_nearly_every_item(n_items, missing):
    held = np.delete(np.arange(n_items), missing)  # every item but one
    users = np.zeros(held.size, dtype=int)
    negatives = sample_negatives(
        users, PositiveSet(users, held, n_items), 3, np.random.default_rng(0)
    )
    assert (negatives == missing).all()


def test_key_search_over_a_user_range_answers_as_the_whole_positive_set():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 400), rng.integers(0, 1_000, 400)
    positives = PositiveSet(users, items, 1_000)
    search = sampling._KeySearch(positives, 10, 19)  # users 10..19 only
    local_users = rng.integers(0, 10, 5_000)
    probe_items = np.where(rng.random(5_000) < 0.5, rng.integers(0, 1_000, 5_000), 0)
    # Half the probes are known pairs of those users, half random.
    known = np.flatnonzero((users >= 10) & (users <= 19))
    pick = rng.choice(known, 2_500)
    local_users[:2_500], probe_items[:2_500] = users[pick] - 10, items[pick]
    expected = positives.contains(local_users + 10, probe_items)
    assert expected[:2_500].all() and not expected[2_500:].all()
    assert np.array_equal(search.contains(local_users * 1_000 + probe_items), expected)
    assert not sampling._KeySearch(positives, 60, 70).contains(np.arange(5)).any()  # no keys


def test_users_whose_bitmap_would_cost_more_than_their_draws_never_get_a_positive(monkeypatch):
    # 200 users, each holding half of 10,000 items: a bitmap of their range would cost more to
    # clear than their 400 draws, so positives are looked up by search; half the draws are hits.
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(200), 5_000)
    items = np.concatenate([rng.permutation(10_000)[:5_000] for _ in range(200)])
    positives = PositiveSet(users, items, 10_000)
    searches = []
    real_search = sampling._KeySearch

    def spied_search(*args):
        searches.append(args[1:])
        return real_search(*args)

    monkeypatch.setattr(sampling, "_KeySearch", spied_search)
    negatives = sample_negatives(np.arange(200), positives, 2, rng)
    assert searches == [(0, 199)]  # the search path ran, over the users' own range
    assert not positives.contains(np.repeat(np.arange(200), 2), negatives.ravel()).any()


def test_counts_per_user_cover_any_number_of_users_and_cannot_be_changed():
    positives = PositiveSet(np.array([0, 0, 2, 2, 2]), np.array([1, 1, 0, 1, 3]), 4)  # a repeat
    assert positives.counts_per_user(5).tolist() == [1, 0, 3, 0, 0]
    assert positives.counts_per_user(2).tolist() == [1, 0]
    with pytest.raises(ValueError):
        positives.counts_per_user(3)[0] = 9
    assert positives.counts_per_user(3).tolist() == [1, 0, 3]
