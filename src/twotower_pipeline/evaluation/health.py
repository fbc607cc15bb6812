"""Health checks of a training run: the seed's failure modes, each with the numbers behind it.

Every check returns a flag (raised or not) with a message, the numbers it
looked at and what to do about it. `health_report` runs them all; the run's
log turns each raised flag into a WARNING line.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from twotower_pipeline.evaluation.health_facts import (
    HealthThresholds,
    RunFacts,
    constant_predictor_loss,
)

__all__ = ["HealthThresholds", "RunFacts", "constant_predictor_loss", "health_report"]


ADVICE = {
    "non_finite": "The run diverged: lower training.learning_rate or model.max_logit_scale, "
    "and resume from the last good checkpoint.",
    "loss_collapse": "A loss this low this early means the task is too easy or leaks: raise "
    "neg_ratio, check that negatives exclude positives and that validation pairs are not in "
    "train, lower the initial logit_scale.",
    "one_class_validation": "Compute the validation loss on validation positives plus sampled "
    "negatives (as the function training.validation_sample draws them); a loss on positives "
    "alone goes to 0 for a model that scores everything high.",
    "not_learning": "The loss never beat a constant guess at the base rate: raise "
    "training.learning_rate, check model.init_std, let the logit scale learn.",
    "scale_at_clamp": "The model is as over-confident as it is allowed to be: lower "
    "model.max_logit_scale, add training.weight_decay, or stop earlier.",
    "scale_frozen": "The logit scale did not move: check training.scale_lr_ratio > 0; with a "
    "scale stuck near 1 the sigmoid cannot leave (0.27, 0.73) and the model learns popularity.",
    "embedding_collapse": "Item embeddings point the same way, so every user gets the same "
    "ranking: lower the learning rate, raise neg_ratio, check the negatives are not all "
    "popular items.",
    "no_lift": "The model does not rank better than item popularity: train longer or with a "
    "higher learning rate, and compare with the ALS baseline before trusting it.",
    "still_improving": "Training stopped while the ranking metric was still climbing: raise "
    "num_epochs (the seed's five epochs ended before the model had learned).",
    "scale_overconfident_start": "The model spent its training shrinking the logit scale, so "
    "it started over-confident: lower the initial logit_scale (1.0 learns upward; 10 x cosine "
    "saturates the sigmoid from the first step).",
    "behind_baseline": "A baseline ranks better than the model: the model is not worth serving "
    "yet; see the other flags for why (too few epochs, too few negatives, a bad scale).",
    "overfitting": "Validation loss rises while training loss falls. The persisted model keeps the "
    "best validation epoch, so the test figures do not pay for the later epochs, but they "
    "were wasted: add training.weight_decay, lower model.max_logit_scale, use lr_schedule: "
    "cosine, or fewer num_epochs.",
}


def _flag(name: str, raised: bool, message: str, **numbers) -> dict:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in numbers.items()
    }
    return {
        "name": name,
        "raised": bool(raised),
        "message": message,
        "numbers": clean,
        "advice": ADVICE[name],
    }


def check_non_finite(history: pd.DataFrame, item_vectors: np.ndarray | None) -> dict:
    """Flag NaN or infinite losses, scales or embeddings."""
    columns = [c for c in ("train_loss", "val_loss", "logit_scale") if c in history]
    bad = {
        c: [int(e) for e in history.loc[~np.isfinite(history[c].to_numpy(float)), "epoch"]]
        for c in columns
    }
    bad = {c: epochs for c, epochs in bad.items() if epochs}
    bad_vectors = 0 if item_vectors is None else int((~np.isfinite(item_vectors)).any(1).sum())
    raised = bool(bad) or bad_vectors > 0
    message = (
        (
            f"non-finite values: {bad or 'none in the history'}; "
            f"{bad_vectors} item embedding(s) with NaN/inf"
        )
        if raised
        else "all finite"
    )
    return _flag(
        "non_finite", raised, message, epochs_by_column=bad, non_finite_item_embeddings=bad_vectors
    )


def check_loss_collapse(history: pd.DataFrame, t: HealthThresholds) -> dict:
    """Flag a train loss near 0 within the first epochs."""
    early = history[history["epoch"] <= t.early_epochs]
    lowest = float(early["train_loss"].min()) if len(early) else float("nan")
    raised = bool(len(early)) and lowest < t.collapse_loss
    return _flag(
        "loss_collapse",
        raised,
        f"train loss {lowest:.2g} within the first {t.early_epochs} epochs "
        f"(collapse below {t.collapse_loss})",
        lowest_early_train_loss=lowest,
        threshold=t.collapse_loss,
    )


def check_one_class_validation(
    history: pd.DataFrame,
    sample_positives: int | None,
    sample_negatives: int | None,
    t: HealthThresholds,
) -> dict:
    """Flag a validation loss that can only have come from one class.

    Signs: the validation sample holds one class; the AUC is undefined; or the
    loss is near 0 while the AUC is clearly below 1 (on two classes a near-0
    mean BCE needs every positive above every negative).
    """
    last = history.iloc[-1]
    val_loss = float(last["val_loss"])
    val_auc = float(last["val_auc"]) if "val_auc" in history else float("nan")
    one_class_sample = sample_positives is not None and (
        sample_positives == 0 or sample_negatives == 0
    )
    auc_missing = not math.isfinite(val_auc)
    impossible = val_loss < t.collapse_loss and math.isfinite(val_auc) and val_auc < 0.99
    raised = one_class_sample or auc_missing or impossible
    if one_class_sample:
        message = (
            f"validation sample has {sample_positives} positives and {sample_negatives} negatives"
        )
    elif auc_missing:
        message = "validation AUC is undefined: the validation labels hold one class"
    elif impossible:
        message = (
            f"validation loss {val_loss:.2g} with AUC {val_auc:.3f}: a loss that low "
            "cannot come from positives and negatives ranked that badly"
        )
    else:
        message = (
            f"validation loss {val_loss:.4f} on {sample_positives} positives and "
            f"{sample_negatives} negatives, AUC {val_auc:.3f}"
        )
    return _flag(
        "one_class_validation",
        raised,
        message,
        final_val_loss=val_loss,
        final_val_auc=val_auc,
        sample_positives=sample_positives,
        sample_negatives=sample_negatives,
    )


def check_not_learning(history: pd.DataFrame, facts: RunFacts) -> dict:
    """Flag a train loss that never beat its loss's no-skill value.

    BCE's is the constant guess at the base rate 1/(1+neg_ratio); a softmax's
    is log of its candidates (every candidate alike).
    """
    floor, without_skill = facts.no_skill(history)
    best = float(history["train_loss"].min())
    return _flag(
        "not_learning",
        best >= floor,
        f"best train loss {best:.4f} vs {floor:.4f} for {without_skill}",
        best_train_loss=best,
        constant_predictor_loss=floor,
    )


def check_scale(history: pd.DataFrame, max_logit_scale: float, t: HealthThresholds) -> list[dict]:
    """Flag a logit scale at its clamp, and one that never moved."""
    scales = history["logit_scale"].to_numpy(float)
    final, first = float(scales[-1]), float(scales[0])
    at_clamp = final >= t.clamp_fraction * max_logit_scale
    spread = float(np.ptp(scales)) / max(abs(first), 1e-12)
    frozen = len(scales) >= 2 and spread < t.frozen_relative_change
    return [
        _flag(
            "scale_at_clamp",
            at_clamp,
            f"final logit scale {final:.2f} of max {max_logit_scale:g}",
            final_logit_scale=final,
            max_logit_scale=max_logit_scale,
        ),
        _flag(
            "scale_frozen",
            frozen,
            f"logit scale moved by {spread:.2%} over {len(scales)} epochs "
            f"(from {first:.3f} to {final:.3f})",
            relative_change=spread,
            first_logit_scale=first,
            final_logit_scale=final,
        ),
    ]


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Return the mean cosine over all pairs of distinct rows, exactly, in O(n d).

    For unit vectors v_i: sum over i != j of v_i.v_j = |sum v_i|^2 - n.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    vectors = vectors[np.isfinite(vectors).all(1)]  # non-finite rows are check_non_finite's
    norms = np.linalg.norm(vectors, axis=1)
    units = vectors[norms > 0] / norms[norms > 0, None]
    n = units.shape[0]
    if n < 2:
        return float("nan")
    total = units.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def check_embedding_collapse(item_vectors: np.ndarray, t: HealthThresholds) -> dict:
    """Flag item embeddings that are nearly parallel."""
    cosine = mean_pairwise_cosine(item_vectors)
    return _flag(
        "embedding_collapse",
        math.isfinite(cosine) and cosine > t.parallel_cosine,
        f"mean pairwise cosine of {len(item_vectors)} item embeddings {cosine:.3f} "
        f"(collapse above {t.parallel_cosine})",
        mean_pairwise_cosine=cosine,
        items=int(len(item_vectors)),
    )


def check_lift(comparison: dict, k: int, t: HealthThresholds) -> dict:
    """Flag a model whose HR@k or NDCG@k is not above popularity's by more than min_lift."""
    model, popularity = comparison["model"], comparison["popularity"]
    lifts, behind = {}, []
    for metric in (f"hit_rate@{k}", f"ndcg@{k}"):
        base = popularity.get(metric) or 0.0
        lifts[metric] = model[metric] / base if base else float("inf")
        # Compared by multiplication: a popularity score of 0 must not make any model pass.
        behind.append(model[metric] <= base * t.min_lift)
    raised = any(behind)
    return _flag(
        "no_lift",
        raised,
        f"HR@{k} {model[f'hit_rate@{k}']:.4f} vs popularity {popularity[f'hit_rate@{k}']:.4f} "
        f"(x{lifts[f'hit_rate@{k}']:.2f}); NDCG@{k} {model[f'ndcg@{k}']:.4f} vs "
        f"{popularity[f'ndcg@{k}']:.4f} (x{lifts[f'ndcg@{k}']:.2f})",
        **{f"lift_{m}": v for m, v in lifts.items()},
        min_lift=t.min_lift,
    )


def check_overfitting(history: pd.DataFrame, k: int, t: HealthThresholds) -> dict:
    """Flag validation loss rising for overfit_epochs epochs in a row while train loss falls.

    Only when it matters: the final val loss ends overfit_min_rise above its best,
    or the ranking metric ends overfit_ranking_drop below its best. A small
    rise while ranking keeps improving is calibration drift (a growing scale),
    reported in the numbers but not flagged.
    """
    val = history["val_loss"].to_numpy(float)
    train = history["train_loss"].to_numpy(float)
    epochs = history["epoch"].to_numpy()
    diverging = (np.diff(val) > 0) & (np.diff(train) < 0)
    run, start = 0, None
    for i, step in enumerate(diverging):
        run = run + 1 if step else 0
        if run >= t.overfit_epochs and start is None:
            start = int(epochs[i + 1 - run])
    best = int(np.nanargmin(val)) if np.isfinite(val).any() else 0
    rise = float(val[-1] / val[best] - 1) if val[best] > 0 else 0.0
    ranking = f"recall@{k}"
    drop = 0.0
    if ranking in history and np.isfinite(history[ranking].to_numpy(float)).any():
        recall = history[ranking].to_numpy(float)
        top = float(np.nanmax(recall))
        drop = float(1 - recall[-1] / top) if top > 0 else 0.0
    pattern = start is not None
    raised = pattern and (rise > t.overfit_min_rise or drop > t.overfit_ranking_drop)
    chosen = chosen_epoch(history)
    summary = (
        f"best val loss {val[best]:.4f} at epoch {int(epochs[best])}, final {val[-1]:.4f} "
        f"(+{rise:.1%}); {ranking} final {drop:.1%} below its best"
    )
    if chosen is not None:
        summary += f"; the persisted model keeps epoch {chosen} (the best on validation)"
    if pattern:
        message = (
            f"validation loss rose {t.overfit_epochs}+ epochs in a row from epoch {start} "
            f"while train loss fell; {summary}"
        )
        if not raised:
            message += " (too small to matter: not flagged)"
    else:
        message = summary
    return _flag(
        "overfitting",
        raised,
        message,
        rising_from_epoch=start,
        best_epoch=int(epochs[best]),
        best_val_loss=float(val[best]),
        final_val_loss=float(val[-1]),
        val_loss_rise=rise,
        ranking_drop=drop,
        final_train_loss=float(train[-1]),
        chosen_epoch=chosen,
    )


def chosen_epoch(history: pd.DataFrame) -> int | None:
    """Return the epoch the persisted model kept (history column `chosen`), if recorded.

    When validation kept an ensemble, the history is its best member's and this is
    that member's kept epoch.
    """
    if "chosen" not in history or not history["chosen"].astype(bool).any():
        return None
    return int(history.loc[history["chosen"].astype(bool), "epoch"].iloc[0])


def check_still_improving(history: pd.DataFrame, k: int, t: HealthThresholds) -> dict:
    """Flag a run that ended while its ranking metric was still rising fast."""
    metric = f"recall@{k}"
    values = history[metric].to_numpy(float) if metric in history else np.array([])
    if values.size < 2 or not np.isfinite(values[-2:]).all() or values[-2] <= 0:
        return _flag(
            "still_improving", False, f"not enough epochs of {metric} to tell", last_epoch_gain=None
        )
    gain = float(values[-1] / values[-2] - 1)
    return _flag(
        "still_improving",
        gain > t.still_improving_gain,
        f"{metric} {values[-2]:.4f} -> {values[-1]:.4f} in the last epoch ({gain:+.1%}; "
        f"still improving above +{t.still_improving_gain:.0%})",
        last_epoch_gain=gain,
        previous=float(values[-2]),
        final=float(values[-1]),
    )


def check_scale_start(
    history: pd.DataFrame,
    initial_scale: float | None,
    t: HealthThresholds,
    zero_logits: tuple[float, str] = (math.log(2), "log 2 = 0.693 (predicting 0.5 everywhere)"),
) -> dict:
    """Flag an over-confident start: a first epoch worse than saying 0.5, or a shrunk scale.

    A model whose logits start near 0 begins at log 2 = 0.693 whatever neg_ratio
    is (BCE; a softmax at log of its candidates: `zero_logits` says which), and
    its first epoch's mean loss falls under that; a first epoch *above* it
    means the starting logits were confidently wrong (the scale saturates the
    sigmoid). A scale that training pulled well below its initial value says the
    same after the fact (a warm-up can hide that one: the rate is low while it
    should be shrinking).
    """
    final = float(history["logit_scale"].iloc[-1])
    first_loss = float(history["train_loss"].iloc[0]) if len(history) else math.nan
    ceiling, ceiling_note = zero_logits
    worse_than_half = bool(math.isfinite(first_loss) and first_loss > ceiling)
    loss_note = (
        f"first epoch's loss {first_loss:.3f} above {ceiling_note}"
        if worse_than_half
        else f"first epoch's loss {first_loss:.3f}"
    )
    if not initial_scale:
        return _flag(
            "scale_overconfident_start",
            worse_than_half,
            f"initial logit scale unknown; {loss_note}",
            initial_logit_scale=None,
            final_logit_scale=final,
            first_epoch_loss=first_loss,
        )
    ratio = final / initial_scale
    return _flag(
        "scale_overconfident_start",
        ratio < t.scale_drop_ratio or worse_than_half,
        f"logit scale went from {initial_scale:g} to {final:.2f} (x{ratio:.2f}); {loss_note}",
        initial_logit_scale=float(initial_scale),
        final_logit_scale=final,
        ratio=ratio,
        first_epoch_loss=first_loss,
    )


# Baselines the model must beat on test besides popularity (which no_lift checks).
OTHER_BASELINES = ("random", "als")


def check_behind_baseline(comparison: dict, k: int) -> dict:
    """Flag a model whose test HR@k is below that of a baseline other than popularity (ALS)."""
    metric = f"hit_rate@{k}"
    model = comparison["model"][metric]
    others = {
        name: comparison[name][metric]
        for name in OTHER_BASELINES
        if isinstance(comparison.get(name), dict) and metric in comparison[name]
    }
    better = {name: value for name, value in others.items() if value > model}
    message = f"HR@{k} {model:.4f} vs " + (
        ", ".join(f"{n} {v:.4f}" for n, v in others.items()) or "no other baseline"
    )
    return _flag("behind_baseline", bool(better), message, model=model, baselines=others)


def health_report(
    history: pd.DataFrame,
    item_vectors: np.ndarray,
    comparison: dict,
    facts: RunFacts,
    thresholds: HealthThresholds,
) -> dict:
    """Return every check's flag and a one-line verdict ("healthy" or the raised flags)."""
    max_logit_scale, k = facts.max_logit_scale, facts.k
    sample_positives, sample_negatives = facts.sample_positives, facts.sample_negatives
    initial_scale = facts.initial_scale
    if history.empty:
        raise ValueError("training_history is empty: there is no run to diagnose")
    flags = [
        check_non_finite(history, item_vectors),
        check_loss_collapse(history, thresholds),
        check_one_class_validation(history, sample_positives, sample_negatives, thresholds),
        check_not_learning(history, facts),
        *check_scale(history, max_logit_scale, thresholds),
        check_embedding_collapse(item_vectors, thresholds),
        check_scale_start(history, initial_scale, thresholds, facts.zero_logits(history)),
        check_lift(comparison, k, thresholds),
        check_behind_baseline(comparison, k),
        check_still_improving(history, k, thresholds),
        check_overfitting(history, k, thresholds),
    ]
    raised = [f["name"] for f in flags if f["raised"]]
    verdict = "healthy" if not raised else f"{len(raised)} flag(s) raised: {', '.join(raised)}"
    return {"verdict": verdict, "raised": raised, "epochs": int(len(history)), "flags": flags}
