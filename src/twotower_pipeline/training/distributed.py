"""Training on several processes: PyTorch's elastic launcher, gloo or nccl, row-wise gradient sync.

`fit_distributed` runs the same `training.fit` in N processes started by
`torch.distributed.launcher.api.elastic_launch` (the machinery behind
`torchrun`). Every rank computes the same epoch order and the same negatives,
and takes its share of each global batch of `training.batch_size` positives,
so 1 and N processes step on the same global batches. After backward:

- dense parameters (logit scale, recency weights, MLPs): their gradients are
  all-reduced (summed) in one flat buffer;
- embedding tables, updated row-wise: each rank's touched ids and row gradients
  are all-gathered (padded to the largest rank's count, as gloo needs equal
  sizes), duplicates are summed, and every rank applies RowwiseAdamW to the
  union of the rows, so the replicas stay identical without ever moving a
  whole table.

Each rank's loss is its share of the global batch's mean loss (sum over its
examples / examples in the global batch), so the summed gradients are the
gradients of the single-process step, also when a batch does not divide evenly.
Only rank 0 evaluates, writes checkpoints and returns the history and the best
epoch's weights; the other ranks wait for rank 0's epoch row (a broadcast) and
keep the same best epoch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from twotower_pipeline.config.errors import RunFailedError, RunInterruptedError, SettingsError
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.checkpoints import checkpoint_path
from twotower_pipeline.training.loop import fit
from twotower_pipeline.training.shard import Shard, state_digest
from twotower_pipeline.training.spec import TrainingSpec, resolve_device

logger = logging.getLogger(__name__)


class DistributedTrainingError(RunFailedError):
    """A training rank failed; the message names the rank and where the last checkpoint is."""


@dataclass(frozen=True)
class DistributedSettings:
    """How many processes train and how they meet (training.distributed; no defaults here)."""

    nproc_per_node: int  # processes on this machine; 1 with nnodes 1: no launcher at all
    backend: str  # auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    nnodes: int  # machines taking part
    rdzv_endpoint: str | None  # host:port of the rendezvous; null: this machine alone
    rdzv_id: str  # the same on every machine of one job
    timeout_minutes: float  # how long a rank waits in a collective (rank 0 evaluating)

    @classmethod
    def from_params(cls, params: dict) -> DistributedSettings:
        """Return the settings of a training.distributed block (checked by config.schema)."""
        return cls(**params)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def resolved_backend(self, device: torch.device) -> str:
        """Return the process-group backend: nccl for CUDA, gloo for CPU, unless set."""
        if self.backend != "auto":
            return self.backend
        return "nccl" if device.type == "cuda" else "gloo"


# --- the launcher side -------------------------------------------------------------------------
@dataclass
class _Job:
    """Everything a rank needs, pickled to each spawned process."""

    model_config: dict
    initial_state: dict
    train: pd.DataFrame
    val: pd.DataFrame
    first_examples: pd.DataFrame
    spec: TrainingSpec
    probabilities: np.ndarray | None
    settings: DistributedSettings
    failure_dir: str  # each failing rank records there when and why it failed


def _train_rank(job: _Job) -> dict:
    """Return this rank's result: its weights' digest, and on local rank 0 the state and history.

    A rank that fails records the moment and its error in job.failure_dir first.
    """
    rank = int(os.environ["RANK"])
    try:
        return _run_rank(job, rank)
    except BaseException as error:
        _record_failure(Path(job.failure_dir), rank, error)
        raise


def _record_failure(folder: Path, rank: int, error: BaseException) -> None:
    """Write (time, error) of a failing rank, atomically; a rank elsewhere may have no folder."""
    record = {"time": time.time(), "error": f"{type(error).__name__}: {error}"}
    try:
        part = folder / f".rank_{rank}.json.part"
        part.write_text(json.dumps(record))
        part.replace(folder / f"rank_{rank}.json")
    except OSError:
        pass


def _recorded_failures(folder: Path) -> dict[int, dict]:
    """Return rank -> its failure record, for the ranks that recorded one."""
    records = {}
    for path in folder.glob("rank_*.json"):
        try:
            records[int(path.stem.split("_")[1])] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return records


def _run_rank(job: _Job, rank: int) -> dict:
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    _log_from_rank(rank)
    device = resolve_device(job.spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    else:
        # Each rank gets its share of this machine's cores, not all of them.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // job.settings.nproc_per_node))
    dist.init_process_group(
        job.settings.resolved_backend(device),
        timeout=timedelta(minutes=job.settings.timeout_minutes),
    )
    try:
        # Item-id dropout masks come from torch's generator: each rank its own stream.
        torch.manual_seed(job.spec.seed * 1_000 + rank)
        model = TwoTowerModel.from_state(job.model_config, job.initial_state)
        model.train()
        shard = Shard(rank, world)
        history = fit(
            model, job.train, job.val, job.first_examples, job.spec, job.probabilities, shard=shard
        )
        result: dict = {"rank": rank, "digest": state_digest(model)}
        if local_rank == 0:
            result |= {"state": model.state_dict(), "history": history}
        return result
    finally:
        dist.destroy_process_group()


def _log_from_rank(rank: int) -> None:
    # A spawned process has the logging set up on import (Kedro's, under kedro run) or none:
    # then rank 0 gets a handler of its own. Rank 0 logs the epochs, the others warnings only.
    package = logging.getLogger("twotower_pipeline")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(name)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def launch_config(settings: DistributedSettings):
    """Return the LaunchConfig of elastic_launch: standalone, or the rendezvous of nnodes."""
    from torch.distributed.launcher.api import LaunchConfig

    standalone = settings.nnodes == 1 and not settings.rdzv_endpoint
    return LaunchConfig(
        min_nodes=settings.nnodes,
        max_nodes=settings.nnodes,
        nproc_per_node=settings.nproc_per_node,
        run_id=str(uuid.uuid4()) if standalone else settings.rdzv_id,
        rdzv_backend="c10d",
        # Standalone, as torchrun --standalone: a rendezvous store on a free local port.
        rdzv_endpoint="localhost:0" if standalone else settings.rdzv_endpoint,
        max_restarts=0,
        start_method="spawn",
    )


def fit_distributed(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    first_examples: pd.DataFrame,
    spec: TrainingSpec,
    probabilities: np.ndarray | None,
    settings: DistributedSettings,
    entrypoint=_train_rank,
) -> pd.DataFrame:
    """Train on settings.world_size processes; return rank 0's history, model set to its best epoch.

    The history's attrs["replica_digests"] maps each rank of this machine to a
    SHA-256 of its final weights (all equal, or this raises). `entrypoint` runs
    in each process (distributed._train_rank; replaceable for failure tests).
    Raises DistributedTrainingError naming the rank when a rank fails, and
    when the replicas of this machine end with different weights.
    """
    device = resolve_device(spec.device)
    if device.type == "cuda" and settings.nproc_per_node > torch.cuda.device_count():
        # nccl needs one GPU per process: two ranks on one device fail deep inside NCCL.
        raise SettingsError(
            f"training.distributed.nproc_per_node is {settings.nproc_per_node} but this machine "
            f"has {torch.cuda.device_count()} CUDA device(s): use one process per GPU, "
            "or training.device=cpu"
        )
    failure_dir = tempfile.TemporaryDirectory(prefix="twotower_failures_")
    job = _Job(
        failure_dir=failure_dir.name,
        model_config=model.config.to_dict(),
        initial_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
        train=train,
        val=val,
        first_examples=first_examples,
        spec=spec,
        probabilities=probabilities,
        settings=settings,
    )
    logger.info(
        "training on %d processes (%d per node, %d node(s)), backend %s",
        settings.world_size,
        settings.nproc_per_node,
        settings.nnodes,
        settings.backend,
    )
    try:
        results = _launch(job, entrypoint)
    finally:
        failure_dir.cleanup()
    return _lead_result(model, results)


def _launch(job: _Job, entrypoint) -> dict:
    """Return each local rank's result; a failed rank or a signal raises one clear error."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    started = time.time()
    # The launcher installs its own SIGINT/SIGTERM handlers (they stop the workers); the
    # run's own handlers (a Ctrl-C rolls the run back) come back when it returns.
    handlers = _signal_handlers()
    try:
        return elastic_launch(launch_config(job.settings), entrypoint)(job)
    except ChildFailedError as error:
        recorded = _recorded_failures(Path(job.failure_dir))
        raise DistributedTrainingError(
            _failure_message(error, checkpoint_path(job.spec), started, recorded)
        ) from None
    except SignalException as error:
        _restore(handlers)
        previous = handlers.get(error.sigval)
        if callable(previous):
            previous(error.sigval, None)  # the run's handler raises its interruption
        raise RunInterruptedError(
            f"training interrupted by {signal.Signals(error.sigval).name}; the workers were "
            "stopped and the last good checkpoint is kept",
            128 + error.sigval,
        ) from None
    finally:
        _restore(handlers)


def _lead_result(model: TwoTowerModel, results: dict) -> pd.DataFrame:
    """Set the model to the lowest local rank's weights; return its history with the digests."""
    mine = [r for r in results.values() if r is not None]
    digests = {r["rank"]: r["digest"] for r in mine}
    if len(set(digests.values())) > 1:
        raise DistributedTrainingError(
            f"training replicas ended with different weights (ranks {sorted(digests)}): "
            "the gradient synchronisation is broken, or one rank fell back from a compiled "
            "row update to eager ops (its log says training.compile_rows; set it to false); "
            "report this with the run's settings"
        )
    lead = min((r for r in mine if "state" in r), key=lambda r: r["rank"])
    model.load_state_dict(lead["state"])
    model.to("cpu")
    history = lead["history"]
    history.attrs["replica_digests"] = digests
    return history


def _signal_handlers() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def _failure_message(error, checkpoint, started: float, recorded: dict[int, dict]) -> str:
    """Return one line: the rank that failed first, its exit code and error, and the checkpoint.

    When one rank fails, the others soon fail too (a collective finds its peer gone),
    and the launcher may report theirs as well. The cause is the rank whose own
    record (`recorded`, written as it failed) is the earliest; without records (a
    rank killed by a signal writes none), the lowest failed rank.
    """
    if recorded:
        rank = min(recorded, key=lambda r: (recorded[r]["time"], r))
        failure = error.failures.get(rank)
        message = str(recorded[rank]["error"]).strip().splitlines()[:1]  # "Type: first line"
    else:
        rank, failure = min(error.failures.items())
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", str(message))
        message = str(message or "no message (killed by a signal?)").strip().splitlines()
    reason = message[-1] if message else ""
    exitcode = failure.exitcode if failure is not None else "unknown"
    if checkpoint.exists() and checkpoint.stat().st_mtime >= started:
        kept = f"the last good checkpoint is kept at {checkpoint} (training.resume=true continues)"
    else:
        kept = "no epoch finished, so this run left no checkpoint"
    return f"training rank {rank} failed (exit code {exitcode}): {reason}; {kept}"
