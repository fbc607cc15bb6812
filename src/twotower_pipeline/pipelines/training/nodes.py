"""Training node: builds the model from parameters and runs twotower_pipeline.training.loop."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.features import padded_tokens
from twotower_pipeline.data.sampling import item_distribution
from twotower_pipeline.data.user_histories import HistoryTable
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.distributed import DistributedSettings, fit_distributed
from twotower_pipeline.training.loop import fit
from twotower_pipeline.training.spec import TrainingDivergedError, TrainingSpec
from twotower_pipeline.training.validation import validation_ranking

logger = logging.getLogger(__name__)

# The name model_selection gives the candidates scored together (not an alternative's name).
ENSEMBLE = "ensemble"


def token_matrix(tokens: pd.DataFrame | None, key: str, n_rows: int) -> torch.Tensor:
    """Return an (n_rows, width) int64 matrix of feature tokens, 0-padded, from a token table."""
    if tokens is None or len(tokens) == 0:
        return torch.zeros(n_rows, 0, dtype=torch.int64)
    ordered = tokens.sort_values(key)
    if not np.array_equal(ordered[key].to_numpy(), np.arange(n_rows)):
        raise ValueError(
            f"{key}_feature_tokens does not hold one row per {key} index 0..{n_rows - 1}: "
            "re-run the features pipeline"
        )
    return torch.from_numpy(padded_tokens(ordered["tokens"], n_rows).astype(np.int64))


def build_model(
    model: dict,
    n_users: int,
    n_items: int,
    logit_scale: float,
    item_tokens: torch.Tensor,
    user_tokens: torch.Tensor,
    feature_encoders: dict | None,
) -> TwoTowerModel:
    """Return an untrained model whose config covers the data's ids and feature vocabularies."""
    encoders = feature_encoders or {}
    config = TwoTowerConfig(
        n_users=n_users,
        n_items=n_items,
        logit_scale=logit_scale,
        item_feature_vocab=int((encoders.get("item") or {}).get("vocab_size", 1)),
        item_feature_width=int(item_tokens.shape[1]),
        user_feature_vocab=int((encoders.get("user") or {}).get("vocab_size", 1)),
        user_feature_width=int(user_tokens.shape[1]),
        **model,
    )
    two_tower = TwoTowerModel(config)
    two_tower.set_side_information(item_tokens=item_tokens, user_tokens=user_tokens)
    return two_tower


def model_candidates(model: dict, model_selection: dict) -> list[tuple[str, dict]]:
    """Return [(name, model block)]: the configured block first, then each alternative's.

    An alternative is a set of overrides of `model` keys; one that changes nothing
    is left out. With model_selection.enabled false, the configured block alone.
    """
    candidates = [("configured", dict(model))]
    if not model_selection["enabled"]:
        return candidates
    for name, overrides in model_selection["alternatives"].items():
        values = {**model, **overrides}
        if all(values != block for _, block in candidates):
            candidates.append((name, values))
    return candidates


def train_two_tower(
    train_examples: pd.DataFrame,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    seed: int,
    neg_ratio: int,
    logit_scale: float,
    num_epochs: int,
    model: dict,
    training: dict,
    negative_sampling: dict,
    evaluation: dict,
    item_feature_tokens: pd.DataFrame | None = None,
    user_feature_tokens: pd.DataFrame | None = None,
    feature_encoders: dict | None = None,
    run_id: str | None = None,
    model_selection: dict | None = None,
) -> tuple[TwoTowerModel, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Return the chosen model, its config, its per-epoch history, both embeddings, the choice.

    Each candidate model block (the configured one and model_selection's
    alternatives) is trained with the same seed, keeping its best validation
    epoch; the candidate whose kept epoch has the best validation Recall@K (K =
    evaluation.headline_k; ties go to the earlier) is the model. Test is never
    looked at. The config names the run that made it (run_id: its run_manifest's
    version); the choice lists every candidate's figure.
    """
    selection = model_selection or {"enabled": False, "alternatives": {}}
    candidates = model_candidates(model, selection)
    k = evaluation["headline_k"]
    chosen, report, trained = None, [], []
    for name, block in candidates:
        # The configured block checkpoints in the documented folder, each alternative in a
        # folder of its own inside it.
        folder = training["checkpoint_dir"]
        if name != "configured":
            folder = f"{folder}/{name}"
        if len(candidates) > 1:
            logger.info(
                "model selection: training candidate %d/%d, %r (%s)",
                len(report) + 1,
                len(candidates),
                name,
                _describe_block(block, model),
            )
        try:
            two_tower, history = _train_candidate(
                {**training, "checkpoint_dir": folder},
                block,
                train_examples,
                train_interactions,
                val_interactions,
                len(user_index),
                len(item_index),
                seed,
                neg_ratio,
                logit_scale,
                num_epochs,
                negative_sampling,
                evaluation,
                item_feature_tokens,
                user_feature_tokens,
                feature_encoders,
            )
        except TrainingDivergedError as error:
            if name == "configured":  # the run as configured: its message as it always read
                raise
            raise TrainingDivergedError(
                f"model_selection candidate {name!r} ({_describe_block(block, model)}): {error}"
            ) from error
        kept = history.loc[history["chosen"]].iloc[0]
        report.append(
            {
                "name": name,
                "model": _changes(block, model),
                "kept_epoch": int(kept["epoch"]),
                f"validation_recall@{k}": float(kept[f"recall@{k}"]),
            }
        )
        trained.append((name, two_tower))
        if chosen is None or report[-1][f"validation_recall@{k}"] > chosen[2]:
            chosen = (two_tower, history, report[-1][f"validation_recall@{k}"], name)
    if selection.get("ensemble") and len(trained) > 1:
        chosen = _try_ensemble(
            trained, chosen, report, train_interactions, val_interactions, seed, evaluation
        )
    two_tower, history, _, chosen_name = chosen
    for row in report:
        row["chosen"] = row["name"] == chosen_name
    if len(candidates) > 1:
        logger.info(
            "model selection on validation recall@%d: %s -> %s",
            k,
            ", ".join(f"{r['name']} {r[f'validation_recall@{k}']:.4f}" for r in report),
            chosen_name,
        )
    two_tower.eval()
    with torch.no_grad():
        user_vectors = two_tower.user_vectors_from(
            np.arange(len(user_index)),
            *_whole_histories(two_tower, train_interactions, val_interactions),
        ).numpy()
        item_vectors = two_tower.all_item_vectors().numpy()
    return (
        two_tower,
        {**two_tower.config.to_dict(), **({"run_id": run_id} if run_id else {})},
        history,
        _embedding_table(user_index, "user_id", user_vectors),
        _embedding_table(item_index, "item_id", item_vectors),
        {"metric": f"validation recall@{k}", "chosen": chosen_name, "candidates": report},
    )


def _try_ensemble(
    trained: list[tuple[str, TwoTowerModel]],
    chosen: tuple,
    report: list[dict],
    train: pd.DataFrame,
    val: pd.DataFrame,
    seed: int,
    evaluation: dict,
) -> tuple:
    """Score every candidate's kept epoch together; return it as the choice if it ranks best.

    The ensemble is measured as each candidate was (validation Recall@K, the same
    seeded users) and kept only when strictly better than the best single model.
    Its history is the best single model's (the members' curves are each in their
    checkpoint folder).
    """
    k = evaluation["headline_k"]
    ensemble = TowerEnsemble([model.eval() for _, model in trained], [n for n, _ in trained])
    recall = validation_ranking(
        ensemble, train, val, k, seed, evaluation["chunk_size"], evaluation["max_users"]
    )[f"recall@{k}"]
    report.append(
        {
            "name": ENSEMBLE,
            "model": {"members": " + ".join(ensemble.config.names)},
            "kept_epoch": None,
            f"validation_recall@{k}": float(recall),
        }
    )
    if recall > chosen[2]:
        return ensemble, chosen[1], float(recall), ENSEMBLE
    return chosen


def _changes(block: dict, model: dict) -> dict:
    """Return the keys of a candidate block that differ from the configured model block."""
    return {key: value for key, value in block.items() if value != model.get(key)}


def _describe_block(block: dict, model: dict) -> str:
    changes = _changes(block, model)
    return ", ".join(f"model.{key}={value}" for key, value in changes.items()) or "model as given"


def _train_candidate(
    training: dict,
    model: dict,
    train_examples: pd.DataFrame,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    n_users: int,
    n_items: int,
    seed: int,
    neg_ratio: int,
    logit_scale: float,
    num_epochs: int,
    negative_sampling: dict,
    evaluation: dict,
    item_feature_tokens: pd.DataFrame | None,
    user_feature_tokens: pd.DataFrame | None,
    feature_encoders: dict | None,
) -> tuple[TwoTowerModel, pd.DataFrame]:
    """Return one model block's trained model (its best validation epoch) and its history."""
    torch.manual_seed(seed)
    two_tower = build_model(
        model,
        n_users,
        n_items,
        logit_scale,
        token_matrix(item_feature_tokens, "item", n_items),
        token_matrix(user_feature_tokens, "user", n_users),
        feature_encoders,
    )
    two_tower.set_side_information(
        train_users=train_interactions["user"].to_numpy(np.int64),
        train_items=train_interactions["item"].to_numpy(np.int64),
    )
    training = dict(training)
    distributed = training.pop("distributed", None)
    spec = TrainingSpec(
        seed=seed,
        num_epochs=num_epochs,
        neg_ratio=neg_ratio,
        eval_k=evaluation["headline_k"],
        eval_chunk_size=evaluation["chunk_size"],
        eval_max_users=evaluation["max_users"],
        **training,
    )
    probabilities = item_distribution(
        train_interactions["item"].to_numpy(),
        n_items,
        negative_sampling["distribution"],
        negative_sampling["popularity_alpha"],
    )
    settings = DistributedSettings.from_params(distributed) if distributed else None
    with torch.random.fork_rng():
        if settings is None or settings.world_size == 1:
            history = fit(
                two_tower, train_interactions, val_interactions, train_examples, spec, probabilities
            )
        else:  # training.distributed: N processes under PyTorch's elastic launcher
            history = fit_distributed(
                two_tower,
                train_interactions,
                val_interactions,
                train_examples,
                spec,
                probabilities,
                settings,
            )
    return two_tower, history


def _whole_histories(model: TwoTowerModel, train: pd.DataFrame, val: pd.DataFrame):
    """Return (histories, ends) over everything known after training: train + validation."""
    if model.config.history_length == 0:
        return None, None
    known = pd.concat([train, val], ignore_index=True)
    histories = HistoryTable.from_interactions(known, model.config.n_users)
    return histories, histories.ends_before(np.arange(model.config.n_users), None)


def _embedding_table(index: pd.DataFrame, id_column: str, vectors: np.ndarray) -> pd.DataFrame:
    """Return one row per original id with its L2-normalised embedding as a list column."""
    return pd.DataFrame({id_column: index[id_column].to_numpy(), "embedding": list(vectors)})
