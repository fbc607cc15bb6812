"""Training on two gloo processes: same answers as one process, one line when a rank dies."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from twotower_pipeline.config.errors import SettingsError
from twotower_pipeline.config.loader import EnvironmentConfigLoader
from twotower_pipeline.config.schema import check_parameters
from twotower_pipeline.data.sampling import build_training_examples, item_distribution
from twotower_pipeline.data.splitting import SplitSpec, split_interactions
from twotower_pipeline.data.synthetic import SyntheticLogSpec, generate_interactions
from twotower_pipeline.model.build import build_model
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.ranking.metrics import ranking_metrics
from twotower_pipeline.training import distributed
from twotower_pipeline.training import loop as training
from twotower_pipeline.training.checkpoints import checkpoint_path
from twotower_pipeline.training.distributed import DistributedSettings, DistributedTrainingError
from twotower_pipeline.training.shard import Shard
from twotower_pipeline.training.spec import TrainingSpec

ROOT = Path(__file__).resolve().parents[1]
SEED, NEG, K = 42, 5, 10


@pytest.fixture(scope="module")
def data() -> dict:
    """A small synthetic log split leave-last-out, with epoch 0's examples."""
    return prepared(SyntheticLogSpec(n_users=300, n_items=200, seed=5))


@pytest.fixture(scope="module")
def default_data() -> dict:
    """The embedded default log (5,000 users x 2,000 items), split leave-last-out."""
    return prepared(SyntheticLogSpec())


def prepared(spec: SyntheticLogSpec) -> dict:
    """Return the log of `spec` split leave-last-out, with epoch 0's examples and id maps."""
    log = generate_interactions(spec)
    users, items = np.unique(log["user_id"]), np.unique(log["item_id"])
    interactions = pd.DataFrame(
        {
            "user": np.searchsorted(users, log["user_id"]).astype(np.int32),
            "item": np.searchsorted(items, log["item_id"]).astype(np.int32),
            "timestamp": log["timestamp"].to_numpy(np.int64),
        }
    )
    split = split_interactions(interactions, SplitSpec("leave_last_out", 2, (0.8, 0.9), 0.0), SEED)
    examples = build_training_examples(split.train, items.size, NEG, np.random.default_rng([SEED]))
    return {
        "split": split,
        "examples": examples,
        "user_index": pd.DataFrame({"user": np.arange(users.size), "user_id": users}),
        "item_index": pd.DataFrame({"item": np.arange(items.size), "item_id": items}),
    }


def base_parameters() -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / "parameters_training.yml").read_text())


def evaluation_parameters() -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / "parameters_evaluation.yml").read_text())[
        "evaluation"
    ]


def training_params(tmp_path: Path, nproc: int, **overrides) -> dict:
    params = base_parameters()["training"] | {
        "batch_size": 256,
        "learning_rate": 0.02,
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "progress_bar": False,
        "device": "cpu",
    }
    params["distributed"] = params["distributed"] | {"nproc_per_node": nproc}
    params.pop("cuda_batch_multiple")  # resolved before a spec is made (selection.sized_for_device)
    return params | overrides


def train(data: dict, params: dict, num_epochs: int) -> tuple[TwoTowerModel, pd.DataFrame]:
    split = data["split"]
    model, _, history, _, _, _ = train_two_tower(
        data["examples"],
        split.train,
        split.val,
        data["user_index"],
        data["item_index"],
        seed=SEED,
        neg_ratio=NEG,
        logit_scale=1.0,
        num_epochs=num_epochs,
        model=base_parameters()["model"],
        training=params,
        negative_sampling={"distribution": "uniform", "popularity_alpha": 0.75},
        evaluation=evaluation_parameters() | {"headline_k": K, "chunk_size": 4096},
    )
    return model, history


def heldout_hit_rate(model: TwoTowerModel, data: dict) -> tuple[float, float]:
    split = data["split"]
    known = pd.concat([split.train, split.val], ignore_index=True)
    metrics = ranking_metrics(
        model.catalogue_scorer(known, split.test),
        known,
        split.test,
        len(data["user_index"]),
        len(data["item_index"]),
        [K],
        4096,
        SEED,
    )
    return metrics[f"hit_rate@{K}"], metrics[f"hit_rate_se@{K}"]


def test_two_gloo_processes_reach_the_test_hit_rate_of_one_with_identical_replicas(
    default_data, tmp_path
):
    # The default data and the default global batch (2048 positives), three epochs.
    data, default_batch = default_data, {"batch_size": 2048, "learning_rate": 0.007}
    one_model, one = train(data, training_params(tmp_path / "one", 1, **default_batch), 3)
    two_model, two = train(data, training_params(tmp_path / "two", 2, **default_batch), 3)

    assert list(two.columns) == list(one.columns)
    assert two["epoch"].tolist() == [1, 2, 3] and two["chosen"].sum() == 1
    one_hr, one_se = heldout_hit_rate(one_model, data)
    two_hr, _ = heldout_hit_rate(two_model, data)
    assert one_hr > 0.1  # the model learned something, or the comparison says nothing
    assert abs(two_hr - one_hr) <= one_se
    # Same global batches, gradients summed over ranks: the curves agree closely.
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=0.02)
    digests = two.attrs["replica_digests"]
    assert sorted(digests) == [0, 1] and len(set(digests.values())) == 1
    # Only rank 0 wrote the checkpoint, in the single-process format.
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["history"]) == 3


def _rank_one_dies_in_epoch_three(job) -> dict:
    """Run a rank as fit_distributed does, except that rank 1 fails when epoch 3 starts."""
    if os.environ["RANK"] == "1":
        original, calls = training.train_epoch, []

        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("simulated loss of rank 1")
            return original(*args, **kwargs)

        training.train_epoch = dying
    return distributed._train_rank(job)


def test_a_dying_rank_is_named_and_the_last_good_checkpoint_resumes(data, tmp_path):
    split = data["split"]
    params = training_params(tmp_path, 2)
    settings = DistributedSettings.from_params(params.pop("distributed"))
    spec = TrainingSpec(
        seed=SEED,
        num_epochs=4,
        neg_ratio=NEG,
        eval_k=K,
        eval_chunk_size=4096,
        eval_max_users=None,
        **params,
    )
    n_items = len(data["item_index"])
    probabilities = item_distribution(split.train["item"].to_numpy(), n_items, "uniform", 0.75)

    def new_model() -> TwoTowerModel:
        torch.manual_seed(SEED)
        n_users = len(data["user_index"])
        model = build_model(
            base_parameters()["model"],
            n_users,
            n_items,
            1.0,
            torch.zeros(n_items, 0, dtype=torch.int64),
            torch.zeros(n_users, 0, dtype=torch.int64),
            None,
        )
        model.set_side_information(
            train_users=split.train["user"].to_numpy(np.int64),
            train_items=split.train["item"].to_numpy(np.int64),
        )
        return model

    model = new_model()
    with pytest.raises(DistributedTrainingError) as failure:
        distributed.fit_distributed(
            model,
            split.train,
            split.val,
            data["examples"],
            spec,
            probabilities,
            settings,
            entrypoint=_rank_one_dies_in_epoch_three,
        )
    message = str(failure.value)
    assert "\n" not in message
    assert "training rank 1 failed" in message and "simulated loss of rank 1" in message
    assert "last good checkpoint is kept" in message
    kept = torch.load(checkpoint_path(spec), weights_only=True)
    assert 1 <= len(kept["history"]) <= 2

    resumed = distributed.fit_distributed(
        new_model(),
        split.train,
        split.val,
        data["examples"],
        TrainingSpec(**(vars(spec) | {"resume": True})),
        probabilities,
        settings,
    )
    assert resumed["epoch"].tolist() == [1, 2, 3, 4]
    kept_rows = pd.DataFrame(kept["history"])
    pd.testing.assert_frame_equal(
        resumed.iloc[: len(kept_rows)][kept_rows.columns].reset_index(drop=True), kept_rows
    )


def test_the_rank_that_failed_first_is_named_not_the_peers_that_lost_it(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    # Rank 1 fails; rank 0's next collective finds its peer gone and rank 0 aborts too.
    # The launcher reports both; each rank recorded the moment it failed.
    failures = {
        0: ProcessFailure(local_rank=0, pid=10, exitcode=-6, error_file=str(tmp_path / "none")),
        1: ProcessFailure(local_rank=1, pid=11, exitcode=1, error_file=str(tmp_path / "none")),
    }
    error = ChildFailedError("training", failures)
    records = tmp_path / "failures"
    records.mkdir()
    distributed._record_failure(records, 1, RuntimeError("simulated loss of rank 1"))
    assert distributed._recorded_failures(records)[1]["error"] == (
        "RuntimeError: simulated loss of rank 1"
    )
    checkpoint = tmp_path / "last.pt"
    recorded = {
        0: {"time": 1000.25, "error": "RuntimeError: gloo: Connection closed by peer"},
        1: {"time": 1000.10, "error": "RuntimeError: simulated loss of rank 1\nmore detail"},
    }
    message = distributed._failure_message(error, checkpoint, 0.0, recorded)
    assert message.startswith(
        "training rank 1 failed (exit code 1): RuntimeError: simulated loss of rank 1;"
    )
    assert "\n" not in message
    # Without records (ranks killed by a signal write none): the lowest failed rank.
    message = distributed._failure_message(error, checkpoint, 0.0, {})
    assert message.startswith("training rank 0 failed (exit code -6)")
    assert "no epoch finished" in message


def test_a_batch_splits_into_contiguous_shares_that_cover_it_once():
    batch = torch.arange(7)
    negatives = torch.arange(14).view(7, 2)
    shares = [Shard(rank, 3).split(batch, negatives) for rank in range(3)]
    assert torch.equal(torch.cat([rows for rows, _ in shares]), batch)
    assert torch.equal(torch.cat([negs for _, negs in shares]), negatives)
    # Fewer positives than ranks: the last rank's share is empty, its loss 0.
    shard = Shard(2, 3)
    rows, negs = shard.split(torch.arange(2), torch.zeros(2, 2, dtype=torch.int64))
    assert rows.numel() == 0 and negs.shape == (0, 2)
    loss = shard.step_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    assert float(loss) == 0.0


def project_parameters() -> dict:
    """Return the parameters of conf/base as a run loads them."""
    loader = EnvironmentConfigLoader(
        conf_source=str(ROOT / "conf"),
        env=None,
        base_env="base",
        default_run_env="local",
        merge_strategy={"parameters": "soft", "catalog": "soft", "globals": "soft"},
    )
    return loader["parameters"]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        (
            {"nproc_per_node": 0},
            "training.distributed.nproc_per_node=0: input should be greater than or equal to 1",
        ),
        ({"backend": "mpi"}, "training.distributed.backend='mpi': input should be 'auto'"),
        ({"nnodes": 2}, "training.distributed: nnodes > 1 needs rdzv_endpoint"),
        ({"nprocs": 2}, "unknown parameter training.distributed.nprocs"),
    ],
)
def test_distributed_settings_are_checked(changes, complaint):
    # The schema is the one check of training.distributed, before any node runs.
    parameters = project_parameters()
    parameters["training"]["distributed"] |= changes
    with pytest.raises(SettingsError) as error:
        check_parameters(parameters)
    assert complaint in str(error.value) and "\n" not in str(error.value)


def test_more_processes_than_gpus_is_refused_before_any_process_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    params = training_params(tmp_path, 2, device="cuda")
    settings = DistributedSettings.from_params(params.pop("distributed"))
    spec = TrainingSpec(
        seed=SEED,
        num_epochs=1,
        neg_ratio=NEG,
        eval_k=K,
        eval_chunk_size=4096,
        eval_max_users=None,
        **params,
    )

    def never_launched(job):
        raise AssertionError("no process should start")

    with pytest.raises(SettingsError, match="1 CUDA device"):
        distributed.fit_distributed(
            None, None, None, None, spec, None, settings, entrypoint=never_launched
        )
