"""Model selection on validation: each candidate block trained, the best kept, an ensemble tried.

Each candidate model block (the configured one and model_selection's
alternatives) is trained with the same seed, keeping its best validation
epoch; the candidate whose kept epoch has the best validation Recall@K (K =
evaluation.headline_k; ties go to the earlier) is the model. With
model_selection.ensemble, the candidates scored together are measured the same
way and kept only when strictly better. Test is never looked at.

With training.resume, each candidate's checkpoint is judged before any trains
(training/checkpoints.py): one recording this run's fingerprint (the train
split's rows, the split and sampling settings, the environment, the
candidate's model block and name) resumes; a candidate with none, or with one
of another configuration, trains from epoch 1 with a warning naming what
differs, as long as one candidate of this run resumes. When none can, the run
stops in one line saying why; a defective file stops it in one line naming the
file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.config.errors import PipelineInputError
from twotower_pipeline.config.fingerprint import resume_refusal, training_fingerprint
from twotower_pipeline.data.sampling import item_distribution
from twotower_pipeline.model.build import build_model, token_matrix
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.checkpoints import (
    CheckpointedSpec,
    checkpoint_path,
    checkpoint_standing,
    no_checkpoint_message,
)
from twotower_pipeline.training.distributed import DistributedSettings, fit_distributed
from twotower_pipeline.training.loop import fit
from twotower_pipeline.training.spec import TrainingDivergedError, resolve_device
from twotower_pipeline.training.validation import validation_ranking

logger = logging.getLogger(__name__)

# The name model_selection gives the candidates scored together (not an alternative's name).
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class TrainingData:
    """What the candidates train and are chosen on."""

    train_examples: pd.DataFrame  # epoch 0's examples
    train_interactions: pd.DataFrame
    val_interactions: pd.DataFrame
    n_users: int
    n_items: int
    item_feature_tokens: pd.DataFrame | None = None
    user_feature_tokens: pd.DataFrame | None = None
    feature_encoders: dict | None = None


@dataclass(frozen=True)
class TrainingBlocks:
    """The parameter blocks training reads (conf/base/parameters*.yml)."""

    seed: int
    neg_ratio: int
    logit_scale: float
    num_epochs: int
    model: dict
    training: dict
    negative_sampling: dict
    evaluation: dict
    model_selection: dict
    split: dict = field(default_factory=dict)  # the split block, recorded by checkpoints
    environment: str | None = None  # the run's environment (None: local)


@dataclass
class Selection:
    """The chosen model, its per-epoch history, its name and every candidate's figure."""

    model: TwoTowerModel | TowerEnsemble
    history: pd.DataFrame
    recall: float
    name: str
    candidates: list[dict]


def model_candidates(model: dict, model_selection: dict) -> list[tuple[str, dict]]:
    """Return [(name, model block)]: the configured block first, then each alternative's.

    An alternative is a set of overrides of `model` keys, and optionally of how it
    trains (a `training` dict, kept in the block under that key); one that changes
    nothing is left out. With model_selection.enabled false, the configured block alone.
    """
    candidates = [("configured", dict(model))]
    if not model_selection["enabled"]:
        return candidates
    for name, overrides in model_selection["alternatives"].items():
        values = {**model, **overrides}
        if all(values != block for _, block in candidates):
            candidates.append((name, values))
    return candidates


def select_model(data: TrainingData, blocks: TrainingBlocks) -> Selection:
    """Return the candidate (or the ensemble of them) with the best validation Recall@K."""
    candidates = model_candidates(blocks.model, blocks.model_selection)
    k = blocks.evaluation["headline_k"]
    fingerprint = run_fingerprint(data, blocks)
    resumes = resume_plan(candidates, fingerprint, blocks)
    chosen, report, trained = None, [], []
    for name, block in candidates:
        if len(candidates) > 1:
            logger.info(
                "model selection: training candidate %d/%d, %r (%s)",
                len(report) + 1,
                len(candidates),
                name,
                _describe_block(block, blocks.model),
            )
        two_tower, history = _train_named(
            name, block, data, blocks, candidate_fingerprint(fingerprint, name, block), resumes
        )
        kept = history.loc[history["chosen"]].iloc[0]
        recall = float(kept[f"recall@{k}"])
        report.append(_candidate_row(name, _changes(block, blocks.model), kept["epoch"], recall, k))
        trained.append((name, two_tower))
        if chosen is None or recall > chosen.recall:
            chosen = Selection(two_tower, history, recall, name, report)
    if blocks.model_selection.get("ensemble") and len(trained) > 1:
        chosen = _try_ensemble(trained, chosen, data, blocks)
    for row in report:
        row["chosen"] = row["name"] == chosen.name
    if len(candidates) > 1:
        logger.info(
            "model selection on validation recall@%d: %s -> %s",
            k,
            ", ".join(f"{r['name']} {r[f'validation_recall@{k}']:.4f}" for r in report),
            chosen.name,
        )
    return chosen


def _candidate_row(name: str, model: dict, epoch, recall: float, k: int) -> dict:
    kept_epoch = None if epoch is None else int(epoch)
    return {
        "name": name,
        "model": model,
        "kept_epoch": kept_epoch,
        f"validation_recall@{k}": recall,
    }


def own_training(block: dict, training: dict) -> dict:
    """Return the training block with a candidate's own `training` overrides applied."""
    return {**training, **block.get("training", {})}


def candidate_training(name: str, training: dict, resume: bool | None = None) -> dict:
    """Return the training block of one candidate: its checkpoint folder, whether it resumes.

    The configured block checkpoints in the documented folder, each alternative
    in a folder of its own inside it.
    """
    folder = training["checkpoint_dir"]
    if name != "configured":
        folder = f"{folder}/{name}"
    resumed = {} if resume is None else {"resume": resume}
    return {**training, "checkpoint_dir": folder, **resumed}


def run_fingerprint(data: TrainingData, blocks: TrainingBlocks) -> dict:
    """Return what every candidate of this run trains on (config/fingerprint.py), no model yet.

    The train split's rows are hashed once; candidate_fingerprint adds each
    candidate's model block and name.
    """
    return training_fingerprint(
        data.train_interactions,
        split=blocks.split,
        sampling={"neg_ratio": blocks.neg_ratio, **blocks.negative_sampling},
        environment=blocks.environment,
        model={},
        candidate="",
    )


def candidate_fingerprint(run: dict, name: str, block: dict) -> dict:
    """Return one candidate's fingerprint, as its checkpoints record it."""
    return {**run, "model": dict(block), "candidate": name}


def resume_plan(
    candidates: list[tuple[str, dict]], fingerprint: dict, blocks: TrainingBlocks
) -> dict[str, bool]:
    """Return {candidate: resumes} under training.resume ({} without it); see the module.

    Raises PipelineInputError, in one line, when no candidate's checkpoint is this
    run's, or when a checkpoint file is defective.
    """
    if not blocks.training.get("resume"):
        return {}
    standings = {}
    for name, block in candidates:
        spec, _ = candidate_spec(
            candidate_training(name, own_training(block, blocks.training)),
            blocks,
            candidate_fingerprint(fingerprint, name, block),
        )
        standings[name] = (checkpoint_path(spec), checkpoint_standing(spec))
    if not any(differences == [] for _, differences in standings.values()):
        stale = [(path, found) for path, found in standings.values() if found]
        if stale:
            path, differences = stale[0]
            raise PipelineInputError(resume_refusal(str(path), differences))
        raise PipelineInputError(no_checkpoint_message(standings["configured"][0]))
    for name, (path, differences) in standings.items():
        if differences is None:
            logger.warning(
                "training.resume: candidate %r has no checkpoint at %s: it trains from epoch 1",
                name,
                path,
            )
        elif differences:
            logger.warning(
                "training.resume: candidate %r trains from epoch 1: its checkpoint %s was "
                "trained on other data or settings (%s); this run's epochs replace it",
                name,
                path,
                "; ".join(differences),
            )
    return {name: differences == [] for name, (_, differences) in standings.items()}


def _train_named(
    name: str,
    block: dict,
    data: TrainingData,
    blocks: TrainingBlocks,
    fingerprint: dict,
    resumes: dict[str, bool],
) -> tuple[TwoTowerModel, pd.DataFrame]:
    """Train one candidate in its checkpoint folder; a divergence names the candidate."""
    model = {key: value for key, value in block.items() if key != "training"}
    training = candidate_training(name, own_training(block, blocks.training), resumes.get(name))
    try:
        return train_candidate(training, model, data, blocks, fingerprint)
    except TrainingDivergedError as error:
        if name == "configured":  # the run as configured: its message as it always read
            raise
        raise TrainingDivergedError(
            f"model_selection candidate {name!r} ({_describe_block(block, blocks.model)}): {error}"
        ) from error


def _try_ensemble(
    trained: list[tuple[str, TwoTowerModel]],
    chosen: Selection,
    data: TrainingData,
    blocks: TrainingBlocks,
) -> Selection:
    """Score every candidate's kept epoch together; return it as the choice if it ranks best.

    The ensemble is measured as each candidate was (validation Recall@K, the same
    seeded users) and kept only when strictly better than the best single model.
    Its history is the best single model's (the members' curves are each in their
    checkpoint folder).
    """
    evaluation = blocks.evaluation
    k = evaluation["headline_k"]
    ensemble = TowerEnsemble([model.eval() for _, model in trained], [n for n, _ in trained])
    recall = validation_ranking(
        ensemble,
        data.train_interactions,
        data.val_interactions,
        k,
        blocks.seed,
        evaluation["chunk_size"],
        evaluation["max_users"],
    )[f"recall@{k}"]
    members = {"members": " + ".join(ensemble.config.names)}
    chosen.candidates.append(_candidate_row(ENSEMBLE, members, None, float(recall), k))
    if recall > chosen.recall:
        return Selection(ensemble, chosen.history, float(recall), ENSEMBLE, chosen.candidates)
    return chosen


def _changes(block: dict, model: dict) -> dict:
    """Return the keys of a candidate block that differ from the configured model block."""
    return {key: value for key, value in block.items() if value != model.get(key)}


def _describe_block(block: dict, model: dict) -> str:
    changes = _changes(block, model)
    training = changes.pop("training", {})
    described = [f"model.{key}={value}" for key, value in changes.items()]
    described += [f"training.{key}={value}" for key, value in training.items()]
    return ", ".join(described) or "model as given"


def sized_for_device(training: dict, device: torch.device | None = None) -> dict:
    """Return the training block with its batch sized for the device it trains on.

    On a CUDA device a step of batch_size positives is bound by kernel launches:
    batches cuda_batch_multiple times larger, with the learning rate grown in
    proportion (the linear rule), amortise them. On the CPU nothing changes.
    The key itself is consumed here. Measured at 8x (docs/training.md): the
    rule held validation on the default data and lost a third of it on ML-100K,
    whose epoch it cut to five steps, so the configured multiple is 1.
    """
    training = dict(training)
    multiple = training.pop("cuda_batch_multiple", 1)
    device = device if device is not None else resolve_device(training.get("device", "auto"))
    if device.type == "cuda" and multiple > 1:
        training["batch_size"] = training["batch_size"] * multiple
        training["learning_rate"] = training["learning_rate"] * multiple
    return training


def candidate_spec(
    training: dict, blocks: TrainingBlocks, fingerprint: dict | None = None
) -> tuple[CheckpointedSpec, dict | None]:
    """Return one candidate's training spec (its checkpoints record `fingerprint`), distributed."""
    training = sized_for_device(training)
    distributed = training.pop("distributed", None)
    evaluation = blocks.evaluation
    spec = CheckpointedSpec(
        seed=blocks.seed,
        num_epochs=blocks.num_epochs,
        neg_ratio=blocks.neg_ratio,
        eval_k=evaluation["headline_k"],
        eval_chunk_size=evaluation["chunk_size"],
        eval_max_users=evaluation["max_users"],
        **training,
        fingerprint=fingerprint,
    )
    return spec, distributed


def train_candidate(
    training: dict,
    model: dict,
    data: TrainingData,
    blocks: TrainingBlocks,
    fingerprint: dict | None = None,
) -> tuple[TwoTowerModel, pd.DataFrame]:
    """Return one model block's trained model (its best validation epoch) and its history.

    Its checkpoints record `fingerprint`, and a resume continues only a checkpoint
    that recorded the same.
    """
    torch.manual_seed(blocks.seed)
    two_tower = build_model(
        model,
        data.n_users,
        data.n_items,
        blocks.logit_scale,
        token_matrix(data.item_feature_tokens, "item", data.n_items),
        token_matrix(data.user_feature_tokens, "user", data.n_users),
        data.feature_encoders,
    )
    train = data.train_interactions
    two_tower.set_side_information(
        train_users=train["user"].to_numpy(np.int64), train_items=train["item"].to_numpy(np.int64)
    )
    spec, distributed = candidate_spec(training, blocks, fingerprint)
    sampling = blocks.negative_sampling
    probabilities = item_distribution(
        train["item"].to_numpy(),
        data.n_items,
        sampling["distribution"],
        sampling["popularity_alpha"],
    )
    settings = DistributedSettings.from_params(distributed) if distributed else None
    inputs = (two_tower, train, data.val_interactions, data.train_examples, spec, probabilities)
    with torch.random.fork_rng():
        if settings is None or settings.world_size == 1:
            history = fit(*inputs)
        else:  # training.distributed: N processes under PyTorch's elastic launcher
            history = fit_distributed(*inputs, settings)
    return two_tower, history
