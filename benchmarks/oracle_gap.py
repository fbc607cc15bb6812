"""How far below the oracle can any learner stay on the default data? A learner's ceiling.

The oracle of the default data ranks with the generator's true taste of every
user and item. A learner must estimate both from the training log. This
benchmark measures a ceiling for learners that is still generous: the true
item side (taste vectors, popularity, release dates) handed over, and only
each user's taste estimated, by maximum a posteriori under the generator's
own choice model (a softmax over the available items, the generator's prior
on tastes) from the user's known interactions. Then it ranks test exactly as
the evaluation does (`metrics.ranking_metrics`, known items masked), next to
the oracle and the project's model trained with the defaults. Prints a line
per ranker and writes benchmarks/results/oracle_gap.json.

    python benchmarks/oracle_gap.py
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tower_sweep import prepare, project_parameters, run_setting
from twotower_pipeline.data.synthetic import oracle_scorer, true_logits
from twotower_pipeline.ranking.metrics import ranking_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def map_user_tastes(
    known: pd.DataFrame, item_tastes: np.ndarray, offsets: np.ndarray, prior_variance: float
) -> np.ndarray:
    """Return each user's MAP taste under softmax choice with known item tastes and offsets.

    offsets (users x items): the generator's logit without the taste term (log
    popularity, and -1e9 for an item not yet released in the user's window).
    """
    n_users, dim = offsets.shape[0], item_tastes.shape[1]
    items = torch.from_numpy(item_tastes)
    offset = torch.from_numpy(offsets)
    users = torch.tensor(known["user"].to_numpy())
    chosen = torch.tensor(known["item"].to_numpy())
    counts = torch.bincount(users, minlength=n_users).double()
    taste = torch.zeros(n_users, dim, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([taste], max_iter=200, line_search_fn="strong_wolfe")

    def negative_log_posterior() -> torch.Tensor:
        optimizer.zero_grad()
        partition = torch.logsumexp(taste @ items.T + offset, dim=1)
        loss = (
            -(taste[users] * items[chosen]).sum()
            + (counts * partition).sum()
            + 0.5 / prior_variance * (taste**2).sum()
        )
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(negative_log_posterior)
    return taste.detach().numpy()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="oracle_gap_"))
    data = prepare("base", workdir)
    raw = workdir / "base" / "data" / "01_raw"
    item_taste = pd.read_parquet(raw / "synthetic_interactions_item_taste.parquet")
    user_taste = pd.read_parquet(raw / "synthetic_interactions_user_taste.parquet")
    train, val, test = (
        data[n] for n in ("train_interactions", "val_interactions", "test_interactions")
    )
    user_index, item_index = data["user_index"], data["item_index"]
    n_users, n_items = len(user_index), len(item_index)
    known = pd.concat([train, val], ignore_index=True)

    columns = [c for c in user_taste.columns if c.startswith("taste_")]
    users = user_taste.set_index("user_id").reindex(user_index["user_id"].to_numpy())
    items = item_taste.set_index("item_id").reindex(item_index["item_id"].to_numpy())
    item_vectors = items[columns].to_numpy(np.float64)
    true_users = users[columns].to_numpy(np.float64)
    offsets = true_logits(
        np.zeros_like(true_users),
        users["window_end"].to_numpy(np.float64),
        item_vectors,
        items["log_popularity"].to_numpy(np.float64),
        items["release"].to_numpy(np.float64),
    )
    estimated = map_user_tastes(known, item_vectors, offsets, float(true_users.var()))

    def ceiling(rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(
            (estimated[rows] @ item_vectors.T + offsets[rows]).astype(np.float32)
        )

    scorers = {
        "oracle (true users and items)": oracle_scorer(
            user_taste, item_taste, user_index, item_index
        ),
        "ceiling (true items, users estimated)": ceiling,
    }
    rows = []
    for name, scorer in scorers.items():
        metrics = ranking_metrics(scorer, known, test, n_users, n_items, [10], 1024, 42)
        rows.append(
            {"ranker": name, "test_hr10": metrics["hit_rate@10"], "users": metrics["users"]}
        )
    params = project_parameters({"use_features": True})
    with tempfile.TemporaryDirectory() as checkpoints:
        model = run_setting(data, params, checkpoints)
    rows.append(
        {
            "ranker": "two-tower (defaults)",
            "test_hr10": model["test_hr10"],
            "users": model["test_users"],
        }
    )
    oracle = rows[0]["test_hr10"]
    for row in rows:
        row["share_of_oracle"] = row["test_hr10"] / oracle
        share = row["share_of_oracle"]
        print(f"{row['ranker']:40s} test HR@10 {row['test_hr10']:.4f}  {share:.3f} x oracle")
    correlation = float(np.corrcoef(estimated.ravel(), true_users.ravel())[0, 1])
    print(f"estimated vs true user tastes: correlation {correlation:.3f}")
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / "oracle_gap.json"
    output.write_text(json.dumps({"rows": rows, "user_taste_correlation": correlation}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
