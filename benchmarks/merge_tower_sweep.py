"""Merge tower_sweep runs into one table whose rows carry their full settings.

Each run of tower_sweep.py names its settings relative to conf/base at the time;
this writes every row with the overrides it had against the first-release
towers' base (history 20, warm-up 1 epoch), so the table reads on its own.

    python benchmarks/merge_tower_sweep.py RUN.json [RUN.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tower_sweep import RESULTS, SETTINGS  # noqa: E402

BASE_AT_THE_TIME = {"model.history_length": 20, "training.warmup_epochs": 1.0}


def main() -> None:
    merged: dict = {"base_at_the_time": BASE_AT_THE_TIME, "envs": {}}
    for path in sys.argv[1:]:
        for env, entry in json.loads(Path(path).read_text()).items():
            target = merged["envs"].setdefault(env, {"baselines": entry["baselines"], "rows": []})
            for name, row in entry.get("settings", {}).items():
                target["rows"].append({"setting": name, "overrides": SETTINGS[name], **row})
    out = RESULTS / "tower_sweep.json"
    out.write_text(json.dumps(merged, indent=2))
    for env, entry in merged["envs"].items():
        print(f"\n{env}: ALS {entry['baselines'].get('als')}")
        print(f"{'setting':32s} {'val HR@10':>9s} {'test HR@10':>16s} epoch loss1 loss2")
        for row in sorted(entry["rows"], key=lambda r: -r["val_hr10"]):
            print(
                f"{row['setting']:32s} {row['val_hr10']:9.4f} {row['test_hr10']:9.4f} "
                f"±{row['test_hr10_se']:.4f} {row['chosen_epoch']:5d} {row['epoch1_loss']:.3f} "
                f"{row['epoch2_loss']:.3f}"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
