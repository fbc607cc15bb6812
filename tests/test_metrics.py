"""Ranking and pointwise metrics: hand-checked cases, a brute-force reference, and ties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower_pipeline.ranking.metrics import (
    RankingTask,
    rank_positives,
    ranking_metrics,
    top_k_unseen,
)
from twotower_pipeline.ranking.pointwise import binary_log_loss, pair_scores, roc_auc


def pairs(rows: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item"], dtype="int64")


ONE_CHUNK = {"chunk_size": 1024, "seed": 0}
SEED_5 = {"chunk_size": 8, "seed": 5}


def table_scorer(scores: np.ndarray):
    table = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    return lambda users: table[torch.from_numpy(np.asarray(users))].clone()


# --- hand-checked ------------------------------------------------------------


def test_rank_counts_only_unmasked_items_scored_higher():
    # Items 0..4 scored 5,4,3,2,1. Item 0 is a training item, so the positive
    # item 2 has one unmasked item above it (item 1): rank 1.
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    rankings = rank_positives(
        table_scorer(scores), RankingTask(pairs([(0, 0)]), pairs([(0, 2)]), 1, 5, [2], **ONE_CHUNK)
    )
    assert rankings.ranks["rank"].tolist() == [1]


def test_metrics_of_one_user_match_the_hand_computation():
    # Unmasked order: 1, 2, 3, 4 (item 0 is training). Positives 2 (rank 1) and 4 (rank 3).
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    result = ranking_metrics(
        table_scorer(scores), pairs([(0, 0)]), pairs([(0, 2), (0, 4)]), 1, 5, [2, 4], **ONE_CHUNK
    )
    assert result["users"] == 1
    assert result["recall@2"] == 0.5
    assert result["hit_rate@2"] == 1.0
    assert result["mrr"] == 0.5
    assert result["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert result["recall@4"] == 1.0
    ideal = 1 + 1 / math.log2(3)
    assert result["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    # Top-2 is {1, 2} out of 5 items; top-4 is {1, 2, 3, 4}.
    assert result["coverage@2"] == pytest.approx(2 / 5)
    assert result["coverage@4"] == pytest.approx(4 / 5)


def test_metrics_average_over_users_not_over_positives():
    scores = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]
    # User 0: positives 0 and 1 both in top-2 (recall 1). User 1: positive 2 at rank 2 (recall 0).
    result = ranking_metrics(
        table_scorer(scores), pairs([]), pairs([(0, 0), (0, 1), (1, 2)]), 2, 3, [2], **ONE_CHUNK
    )
    assert result["recall@2"] == 0.5
    assert result["hit_rate@2"] == 0.5


def test_users_without_validation_positives_are_not_scored():
    scored = []

    def scorer(users):
        scored.extend(users.tolist())
        return torch.zeros(len(users), 4)

    ranking_metrics(scorer, pairs([(0, 1)]), pairs([(2, 3)]), 3, 4, [1], **ONE_CHUNK)
    assert scored == [2]


def test_nan_scores_raise_instead_of_ranking_first():
    scores = [[float("nan"), 1.0, 0.0]]
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(table_scorer(scores), pairs([]), pairs([(0, 2)]), 1, 3, [1], **ONE_CHUNK)


def test_a_scorer_of_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(
            lambda users: torch.zeros(len(users), 2),
            pairs([]),
            pairs([(0, 1)]),
            1,
            3,
            [1],
            **ONE_CHUNK,
        )


def test_with_candidates_only_those_items_compete_and_coverage_is_of_them():
    # Items 3 and 4 are the candidates (say, the cold items): item 4 is ranked behind
    # item 3 only, however high the other items score.
    scores = [[9.0, 8.0, 7.0, 2.0, 1.0]]
    candidates = np.array([False, False, False, True, True])
    result = ranking_metrics(
        table_scorer(scores),
        pairs([]),
        pairs([(0, 4)]),
        1,
        5,
        [1, 2],
        **ONE_CHUNK,
        candidates=candidates,
    )
    assert result["hit_rate@1"] == 0.0 and result["hit_rate@2"] == 1.0
    assert result["mrr"] == 0.5
    assert result["coverage@1"] == 0.5 and result["coverage@2"] == 1.0


def test_a_held_out_item_outside_the_candidates_is_an_error():
    with pytest.raises(ValueError, match="not among the candidates"):
        ranking_metrics(
            table_scorer([[1.0, 2.0]]),
            pairs([]),
            pairs([(0, 0)]),
            1,
            2,
            [1],
            **ONE_CHUNK,
            candidates=np.array([False, True]),
        )


def test_hit_rate_comes_with_its_standard_error_over_users():
    # Four users, one hit at K=1 (user 0): p = 1/4, se = sqrt(p (1 - p) / 4).
    scores = [[2.0, 1.0]] * 4
    result = ranking_metrics(
        table_scorer(scores),
        pairs([]),
        pairs([(0, 0), (1, 1), (2, 1), (3, 1)]),
        4,
        2,
        [1],
        **ONE_CHUNK,
    )
    assert result["hit_rate@1"] == 0.25
    assert result["hit_rate_se@1"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=20),
    st.integers(1, 4),
)
def test_pair_scores_gathers_each_pairs_score_whatever_the_chunk(rows, chunk):
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    users = np.array([u for u, _ in rows])
    items = np.array([i for _, i in rows])
    got = pair_scores(table_scorer(table), users, items, chunk_size=chunk)
    assert got.tolist() == table[users, items].tolist()


# --- ties ----------------------------------------------------------------------


def test_a_constant_scorer_gets_exactly_random_in_expectation():
    # 4000 users, 20 items, 4 training items each: the one positive is uniform
    # over 16 candidates, so E[hit@5] = 5/16 and E[mrr] = H(16)/16.
    rng = np.random.default_rng(0)
    n_users, n_items = 4000, 20
    train_rows, val_rows = [], []
    for user in range(n_users):
        items = rng.choice(n_items, 5, replace=False)
        train_rows += [(user, int(i)) for i in items[:4]]
        val_rows.append((user, int(items[4])))
    result = ranking_metrics(
        lambda users: torch.zeros(len(users), n_items),
        pairs(train_rows),
        pairs(val_rows),
        n_users,
        n_items,
        [5],
        chunk_size=512,
        seed=3,
    )
    standard_error = math.sqrt(5 / 16 * 11 / 16 / n_users)
    assert abs(result["hit_rate@5"] - 5 / 16) < 4 * standard_error
    expected_mrr = sum(1 / r for r in range(1, 17)) / 16
    assert abs(result["mrr"] - expected_mrr) < 0.02


def test_tied_positives_of_one_user_get_distinct_ranks_and_ndcg_at_most_one():
    val = pairs([(0, i) for i in range(4)])
    for seed in range(20):
        rankings = rank_positives(
            lambda users: torch.zeros(len(users), 6),
            RankingTask(pairs([]), val, 1, 6, [2], chunk_size=1, seed=seed),
        )
        ranks = rankings.ranks["rank"].tolist()
        assert len(set(ranks)) == 4
        assert all(0 <= r < 6 for r in ranks)
        result = ranking_metrics(
            lambda users: torch.zeros(len(users), 6),
            pairs([]),
            val,
            1,
            6,
            [2],
            chunk_size=1,
            seed=seed,
        )
        assert result["ndcg@2"] <= 1.0


def test_the_same_seed_gives_the_same_tie_breaks():
    val = pairs([(u, u % 7) for u in range(50)])
    first = ranking_metrics(lambda u: torch.zeros(len(u), 7), pairs([]), val, 50, 7, [3], **SEED_5)
    again = ranking_metrics(lambda u: torch.zeros(len(u), 7), pairs([]), val, 50, 7, [3], **SEED_5)
    assert first == again


# --- brute-force reference -------------------------------------------------------


def brute_force(scores, train, val, ks):
    """Return per-positive (user, item) -> (greater, equal) and metrics for tie-free scores."""
    bounds, per_user = {}, {}
    for user, item in val:
        row = scores[user]
        masked = {i for u, i in train if u == user}
        candidates = [i for i in range(len(row)) if i not in masked and i != item]
        greater = sum(row[i] > row[item] for i in candidates)
        equal = sum(row[i] == row[item] for i in candidates)
        bounds[(user, item)] = (greater, equal)
        per_user.setdefault(user, []).append(greater)
    result = {"users": len(per_user)}
    result["mrr"] = np.mean([1 / (1 + min(r)) for r in per_user.values()])
    for k in ks:
        recall, ndcg, hit = [], [], []
        for ranks in per_user.values():
            in_top = [r for r in ranks if r < k]
            recall.append(len(in_top) / len(ranks))
            hit.append(float(bool(in_top)))
            ideal = sum(1 / math.log2(i + 2) for i in range(min(len(ranks), k)))
            ndcg.append(sum(1 / math.log2(r + 2) for r in in_top) / ideal)
        result[f"recall@{k}"], result[f"ndcg@{k}"] = np.mean(recall), np.mean(ndcg)
        result[f"hit_rate@{k}"] = np.mean(hit)
    return bounds, result


@st.composite
def ranking_problems(draw, tie_prone: bool):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(2, 9))
    if tie_prone:
        values = st.integers(0, 2).map(float)
    else:
        values = st.floats(-10, 10, allow_nan=False, width=32)
    scores = np.array(
        draw(
            st.lists(
                st.lists(values, min_size=n_items, max_size=n_items),
                min_size=n_users,
                max_size=n_users,
            )
        ),
        dtype=np.float32,
    )
    train, val = [], []
    for user in range(n_users):
        roles = draw(st.lists(st.sampled_from("tvn"), min_size=n_items, max_size=n_items))
        train += [(user, i) for i, r in enumerate(roles) if r == "t"]
        val += [(user, i) for i, r in enumerate(roles) if r == "v"]
    if not val:
        val = [(0, 0)]
        train = [p for p in train if p != (0, 0)]
    ks = sorted(draw(st.sets(st.integers(1, n_items + 1), min_size=1, max_size=3)))
    chunk = draw(st.integers(1, 4))
    return scores, train, val, ks, chunk


@settings(max_examples=150, deadline=None)
@given(ranking_problems(tie_prone=False))
def test_metrics_match_a_brute_force_reference_without_ties(problem):
    scores, train, val, ks, chunk = problem
    if len({(u, float(s)) for u, row in enumerate(scores) for s in row}) < scores.size:
        return  # a tie slipped in; the tie-prone test covers those
    _, expected = brute_force(scores, train, val, ks)
    result = ranking_metrics(
        table_scorer(scores),
        pairs(train),
        pairs(val),
        len(scores),
        scores.shape[1],
        ks,
        chunk_size=chunk,
        seed=0,
    )
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name


@settings(max_examples=150, deadline=None)
@given(ranking_problems(tie_prone=True), st.integers(0, 1000))
def test_ranks_with_ties_lie_between_the_optimistic_and_pessimistic_rank(problem, seed):
    scores, train, val, ks, chunk = problem
    bounds, _ = brute_force(scores, train, val, ks)
    rankings = rank_positives(
        table_scorer(scores),
        RankingTask(
            pairs(train), pairs(val), len(scores), scores.shape[1], ks, chunk_size=chunk, seed=seed
        ),
    )
    for user, item, rank in rankings.ranks.itertuples(index=False):
        greater, equal = bounds[(user, item)]
        assert greater <= rank <= greater + equal
    assert not rankings.ranks.duplicated(["user", "rank"]).any()
    result = ranking_metrics(
        table_scorer(scores),
        pairs(train),
        pairs(val),
        len(scores),
        scores.shape[1],
        ks,
        chunk_size=chunk,
        seed=seed,
    )
    assert all(0.0 <= result[f"ndcg@{k}"] <= 1.0 + 1e-12 for k in ks)


@settings(max_examples=100, deadline=None)
@given(ranking_problems(tie_prone=False), st.data())
def test_ranking_among_candidates_is_ranking_on_the_candidate_columns_alone(problem, data):
    scores, train, val, ks, chunk = problem
    if len({(u, float(s)) for u, row in enumerate(scores) for s in row}) < scores.size:
        return  # a tie slipped in
    n_items = scores.shape[1]
    held = {i for _, i in val}
    extra = data.draw(st.sets(st.integers(0, n_items - 1)))
    keep = sorted(held | extra)
    mask = np.isin(np.arange(n_items), keep)
    result = ranking_metrics(
        table_scorer(scores),
        pairs(train),
        pairs(val),
        len(scores),
        n_items,
        ks,
        chunk,
        0,
        candidates=mask,
    )
    # The same problem with the other columns deleted and items renumbered.
    new_index = {item: j for j, item in enumerate(keep)}
    sub_train = [(u, new_index[i]) for u, i in train if i in new_index]
    sub_val = [(u, new_index[i]) for u, i in val]
    _, expected = brute_force(scores[:, keep], sub_train, sub_val, ks)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value), name


# --- recommendations -------------------------------------------------------------


def test_top_k_unseen_skips_training_items_and_orders_by_score():
    scores = [[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]
    recs = top_k_unseen(
        table_scorer(scores), pairs([(0, 0), (1, 3)]), np.array([0, 1]), 2, 4, 2, chunk_size=1
    )
    assert recs[["user", "rank", "item"]].values.tolist() == [
        [0, 1, 1],
        [0, 2, 2],
        [1, 1, 2],
        [1, 2, 1],
    ]
    assert recs["score"].tolist() == [4.0, 3.0, 3.0, 2.0]


def test_top_k_unseen_returns_fewer_rows_when_few_items_are_unseen():
    recs = top_k_unseen(
        table_scorer([[1.0, 2.0, 3.0]]),
        pairs([(0, 0), (0, 1)]),
        np.array([0]),
        1,
        3,
        3,
        chunk_size=2,
    )
    assert recs["item"].tolist() == [2]


# --- pointwise ---------------------------------------------------------------------


def test_log_loss_of_zero_logits_is_ln2():
    assert binary_log_loss(np.zeros(4), np.array([1, 0, 0, 0])) == pytest.approx(math.log(2))


def test_pointwise_metrics_refuse_labels_of_one_class():
    with pytest.raises(ValueError, match="one class"):
        binary_log_loss(np.array([9.7, 9.7]), np.array([1, 1]))
    with pytest.raises(ValueError, match="one class"):
        roc_auc(np.array([0.1, 0.2]), np.array([0, 0]))


def test_auc_is_one_for_perfect_order_and_half_for_ties():
    assert roc_auc(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == 0.5


def test_recommend_node_masks_every_known_interaction_and_answers_in_original_ids(monkeypatch):
    from types import SimpleNamespace

    from twotower_pipeline.pipelines.evaluation import nodes

    # Item 0 suits user 0, item 1 user 1, item 2 both a little; user 0 already has item 0
    # and user 1 item 2, so neither may be recommended to them again.
    scores = [[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]]
    seen = {}

    def scorer(known):
        seen["known"] = known
        return table_scorer(scores)

    fake = SimpleNamespace(
        config=SimpleNamespace(n_users=2, n_items=3), catalogue_scorer=scorer, logit_scale=1.0
    )
    monkeypatch.setattr(
        nodes, "TwoTowerModel", SimpleNamespace(from_state=lambda config, state: fake)
    )
    interactions = pairs([(0, 0), (1, 2)])
    recs = nodes.recommend(
        {},
        {},
        interactions,
        pd.DataFrame({"user_id": ["ann", "bob"]}),
        pd.DataFrame({"item_id": ["x", "y", "z"]}),
        {"recommendations_k": 2, "chunk_size": 1},
        None,
        None,
        {"recommend_above_n_items": 1000},
    )
    assert seen["known"] is interactions
    assert recs[["user_id", "rank", "item_id"]].values.tolist() == [
        ["ann", 1, "z"],
        ["ann", 2, "y"],
        ["bob", 1, "y"],
        ["bob", 2, "x"],
    ]
