"""evaluation_metrics: the model beside its baselines on each set, with the model's lift."""

from __future__ import annotations

from twotower_pipeline.ranking.protocol import COLD_SECTIONS


def lift(model: dict, baseline: dict) -> dict:
    """Return model / baseline for each ranking metric (not coverage, not standard errors)."""
    return {
        name: (value / baseline[name] if baseline.get(name) else None)
        for name, value in model.items()
        if name == "mrr" or ("@" in name and not name.startswith(("coverage", "hit_rate_se")))
    }


def side_by_side(model: dict, baselines: dict, reference: str) -> dict:
    """Return {"model": ..., baselines..., "lift_over_<reference>": ...} (no lift if skipped)."""
    comparison = {"model": model, **baselines}
    if "skipped" not in model and "skipped" not in baselines[reference]:
        comparison[f"lift_over_{reference}"] = lift(model, baselines[reference])
    return comparison


def compare_with_baselines(model_metrics: dict, baseline_metrics: dict, ann_metrics: dict) -> dict:
    """Return evaluation_metrics: test figures at the top, then validation and the cold sets.

    Top level (test) and "validation": model, popularity, random, als and the
    model's lift over popularity. "cold_items" and "cold_items_full": model,
    popularity and random, with the lift over random. The retrieval index's
    recall against exact search rides along under "ann".
    """
    comparison = side_by_side(model_metrics["test"], baseline_metrics["test"], "popularity")
    comparison["ann"] = ann_metrics
    comparison["validation"] = side_by_side(
        model_metrics["validation"], baseline_metrics["validation"], "popularity"
    )
    for section in COLD_SECTIONS:
        comparison[section] = side_by_side(
            model_metrics[section], baseline_metrics[section], "random"
        )
    return comparison
