"""The retrieval index: recall against exact search, unseen-item recommendations, persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from twotower_pipeline.evaluation import index as ann
from twotower_pipeline.io.index_dataset import ItemIndexDataset
from twotower_pipeline.pipelines.evaluation.index_nodes import (
    build_item_index,
    evaluate_item_index,
)
from twotower_pipeline.ranking.metrics import top_k_unseen

needs_faiss = pytest.mark.skipif(
    ann.faiss_module() is None, reason="faiss-cpu is not installed (pip install -e '.[ann]')"
)

INDEX_PARAMS = {
    "kind": "hnsw",
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": 1024, "nprobe": 32},
    "recall_k": 10,
    "recommend_above_n_items": 100000,
}


def config(kind: str = "hnsw") -> ann.IndexConfig:
    return ann.IndexConfig.from_params({**INDEX_PARAMS, "kind": kind}, seed=0)


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors around 8 shared directions, as learned item vectors are (taste groups)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((8, dim))
    return centres[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, dim))


def test_recall_counts_the_share_of_exact_neighbours_found():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approximate = np.array([[3, 2, 9], [6, 5, 4]])  # 2 of 3, then 3 of 3 in another order
    assert ann.recall_at_k(approximate, exact) == pytest.approx(5 / 6)


def test_exact_search_ranks_by_the_inner_product_of_the_vectors_as_given():
    # A biased model's vectors are not unit length: their lengths are part of the score.
    items = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    scores, ids = ann.exact_search(items, np.array([[1.0, 0.1]]), k=3)
    assert ids.tolist() == [[2, 0, 1]]  # 2.2, 1.0, 0.3
    assert scores[0].tolist() == pytest.approx([2.2, 1.0, 0.3], rel=1e-5)


@needs_faiss
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_recall_at_10_is_at_least_099_at_the_default_catalogue_size(kind):
    # The default synthetic catalogue: 2000 items, 16-dimensional vectors.
    items = clustered_vectors(2000, 16, seed=1)
    queries = clustered_vectors(500, 16, seed=2)
    index = ann.build_index(items, config(kind))
    metrics = ann.index_recall(index, items, queries, k=10)
    assert metrics["recall@10"] >= 0.99
    assert metrics["queries"] == 500


@needs_faiss
def test_a_tiny_index_finds_exactly_the_brute_force_neighbours():
    items = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    index = ann.build_index(items, config())
    _, found = index.search(np.array([[1.0, 0.2]]), 2)
    assert found.tolist() == [[0, 1]]


@needs_faiss
def test_index_recommendations_skip_seen_items_and_match_exact_search():
    items = clustered_vectors(300, 8, seed=3)
    users = clustered_vectors(40, 8, seed=4)
    rng = np.random.default_rng(5)
    seen = pd.DataFrame({"user": np.repeat(np.arange(40), 6), "item": rng.integers(0, 300, 240)})
    index = ann.build_index(items, config())
    got = ann.top_k_unseen(index, users, np.arange(40), seen, 5, 2.0, chunk_size=16)

    item_t = torch.from_numpy(ann.faiss_ready(items))
    user_t = torch.from_numpy(ann.faiss_ready(users))
    expected = top_k_unseen(
        lambda u: 2.0 * user_t[torch.from_numpy(u)] @ item_t.T, seen, np.arange(40), 40, 300, 5, 16
    )
    pairs = set(zip(seen["user"], seen["item"], strict=True))
    assert not pairs & set(zip(got["user"], got["item"], strict=True))
    assert got[["user", "rank", "item"]].values.tolist() == (
        expected[["user", "rank", "item"]].values.tolist()
    )
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5)


@needs_faiss
def test_a_user_who_has_seen_almost_everything_gets_what_is_left():
    items = clustered_vectors(20, 4, seed=6)
    seen = pd.DataFrame({"user": np.zeros(18, dtype=int), "item": np.arange(18)})
    index = ann.build_index(items, config())
    got = ann.top_k_unseen(index, clustered_vectors(1, 4, seed=7), np.array([0]), seen, 5, 1.0, 8)
    assert sorted(got["item"]) == [18, 19]
    assert got["rank"].tolist() == [1, 2]


def test_without_faiss_the_index_is_skipped_with_one_line(monkeypatch):
    monkeypatch.setattr(ann, "faiss_module", lambda: None)
    index = ann.build_index(np.eye(3), config())
    assert index.index is None
    assert "\n" not in index.skipped and "pip install" in index.skipped
    assert ann.index_recall(index, np.eye(3), np.eye(3), k=2) == {"skipped": index.skipped}


def test_unknown_index_kind_is_named():
    with pytest.raises(ValueError, match="index.kind"):
        config("lsh")


@needs_faiss
def test_dataset_round_trip_keeps_the_neighbours_and_writes_the_config(tmp_path):
    items = clustered_vectors(500, 8, seed=8)
    queries = clustered_vectors(20, 8, seed=9)
    built = ann.build_index(items, config())
    dataset = ItemIndexDataset(filepath=str(tmp_path / "item_ann_index.faiss"))
    dataset.save(built)
    loaded = dataset.load()
    assert loaded.search(queries, 10)[1].tolist() == built.search(queries, 10)[1].tolist()
    described = json.loads((tmp_path / "item_ann_index.json").read_text())
    assert described["config"]["kind"] == "hnsw" and described["n_items"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "item_ann_index.faiss",
        "item_ann_index.json",
    ]


@needs_faiss
def test_a_failed_save_leaves_the_previous_index(tmp_path, monkeypatch):
    dataset = ItemIndexDataset(filepath=str(tmp_path / "idx.faiss"))
    dataset.save(ann.build_index(clustered_vectors(50, 4, seed=10), config()))
    before = (tmp_path / "idx.faiss").read_bytes()
    faiss = ann.faiss_module()

    def broken_write(index, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(ann.build_index(clustered_vectors(60, 4, seed=11), config()))
    assert (tmp_path / "idx.faiss").read_bytes() == before
    assert dataset.load().n_items == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx.faiss", "idx.json"]


@needs_faiss
def test_nodes_report_recall_for_the_test_users():
    items = clustered_vectors(400, 8, seed=12)
    users = clustered_vectors(30, 8, seed=13)
    item_embeddings = pd.DataFrame({"item_id": np.arange(400), "embedding": list(items)})
    user_embeddings = pd.DataFrame({"user_id": np.arange(30), "embedding": list(users)})
    test = pd.DataFrame({"user": [3, 3, 7, 11], "item": [1, 2, 3, 4]})
    index = build_item_index(item_embeddings, INDEX_PARAMS, seed=0)
    metrics = evaluate_item_index(index, item_embeddings, user_embeddings, test, INDEX_PARAMS)
    assert metrics["queries"] == 3
    assert metrics["recall@10"] >= 0.99


@needs_faiss
def test_an_index_and_a_config_from_different_runs_are_refused(tmp_path):
    dataset = ItemIndexDataset(filepath=str(tmp_path / "idx.faiss"))
    dataset.save(ann.build_index(clustered_vectors(50, 4, seed=14), config()))
    older_index = (tmp_path / "idx.faiss").read_bytes()
    dataset.save(ann.build_index(clustered_vectors(50, 4, seed=15), config()))
    (tmp_path / "idx.faiss").write_bytes(older_index)  # as a rollback of one file would
    with pytest.raises(DatasetError, match="SHA-256"):
        dataset.load()


def test_tied_items_count_as_found_whichever_of_them_the_index_returns():
    # Items 0-3 are the same vector: exact search keeps two of them, an index may keep
    # two others, with the same scores.
    exact_scores = np.array([[0.9, 0.5, 0.5]])
    approximate_scores = np.array([[0.9, 0.5, 0.5]])
    assert ann.recall_with_ties(approximate_scores, exact_scores) == 1.0
    assert ann.recall_with_ties(np.array([[0.9, 0.5, 0.4]]), exact_scores) == pytest.approx(2 / 3)


@needs_faiss
def test_index_recall_is_one_when_the_catalogue_is_full_of_ties():
    items = np.vstack([np.tile([[1.0, 0.0, 0.0]], (30, 1)), np.eye(3)[1:], np.zeros((10, 3))])
    queries = np.array([[0.2, 1.0, 0.1], [0.0, 0.1, 1.0]])
    metrics = ann.index_recall(ann.build_index(items, config()), items, queries, k=10)
    assert metrics["recall@10"] == 1.0
