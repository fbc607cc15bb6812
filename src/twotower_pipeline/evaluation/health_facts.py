"""What the health checks are told: where each draws its line, and how the run was set up.

A loss's no-skill value lives here too: BCE's constant guess at the base
rate, a softmax's equal scores over its candidates, so every check judges a
loss against its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class HealthThresholds:
    """Where each check draws its line (values come from parameters_evaluation.yml)."""

    collapse_loss: float  # a train loss below this in the first epochs is a collapse
    early_epochs: int  # "early" means within this many epochs
    clamp_fraction: float  # a final scale >= this x max_logit_scale is "at the clamp"
    frozen_relative_change: float  # a scale that moves less than this (relative) is frozen
    parallel_cosine: float  # mean pairwise cosine of item embeddings above this: collapse
    min_lift: float  # the model must beat popularity by more than this factor
    overfit_epochs: int  # val loss rising this many epochs in a row while train loss falls
    overfit_min_rise: float  # ...and ending this much (relative) above its best, or
    overfit_ranking_drop: float  # ...the ranking metric ending this much below its best
    still_improving_gain: float  # ranking metric up more than this (relative) in the last epoch
    scale_drop_ratio: float  # final scale below this x its initial value: started over-confident

    @classmethod
    def from_params(cls, params: dict) -> HealthThresholds:
        return cls(**params)


def constant_predictor_loss(neg_ratio: int) -> float:
    """Return the BCE of always predicting the base rate 1/(1+neg_ratio): no-skill loss."""
    p = 1.0 / (1 + neg_ratio)
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


@dataclass(frozen=True)
class RunFacts:
    """What the checks read of how the run was set up, besides its history and metrics."""

    max_logit_scale: float  # model.max_logit_scale, the clamp
    neg_ratio: int  # sampled negatives per positive in the losses
    k: int  # the headline K the ranking checks read
    sample_positives: int | None = None  # the validation sample val_loss is on: positives
    sample_negatives: int | None = None  # ...and negatives
    initial_scale: float | None = None  # the logit scale training started from
    loss: str = "bce"  # training.loss
    batch_size: int = 1  # training.batch_size: a softmax's in-batch candidates

    def no_skill(self, history: pd.DataFrame | None = None) -> tuple[float, str]:
        """Return the train loss of a model without skill, and what that model is.

        A softmax's is the loss all-zero logits had on the epoch's own training
        batches (history's no_skill_loss: with the logQ correction it is not log of
        the candidates), else log of the candidates.
        """
        if self.loss == "softmax":
            candidates = self.batch_size + self.neg_ratio
            measured = _last(history, "no_skill_loss")
            if measured is not None:
                return measured, "all scores equal (measured on the epoch's training batches)"
            return math.log(candidates), f"equal scores over the {candidates} candidates"
        floor = constant_predictor_loss(self.neg_ratio)
        return floor, f"a constant guess at the base rate 1/(1+{self.neg_ratio})"

    def zero_logits(self, history: pd.DataFrame | None = None) -> tuple[float, str]:
        """Return the loss of logits all at 0, and how to say it."""
        if self.loss == "softmax":
            value, _ = self.no_skill(history)
            return value, f"{value:.3f}, the loss of equal scores"
        return math.log(2), "log 2 = 0.693 (predicting 0.5 everywhere)"


def _last(history: pd.DataFrame | None, column: str) -> float | None:
    """Return a history column's last finite value, or None."""
    if history is None or column not in history or history.empty:
        return None
    value = float(history[column].iloc[-1])
    return value if math.isfinite(value) else None
