#!/usr/bin/env bash
# Screenshot of the latest tracked run in the MLflow UI (docs/img/mlflow_run.png).
#   bash scripts/mlflow_screenshot.sh [OUTPUT.png]
# Run it after a tracked `kedro run` (pip install -e ".[mlflow]"): it serves
# mlruns/mlflow.db with `mlflow server` on 127.0.0.1 and lets headless Chromium
# draw the run's metric charts.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="$(realpath -m "${1:-docs/img/mlflow_run.png}")"
STORE="${MLFLOW_STORE:-sqlite:///mlruns/mlflow.db}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[ -n "$CHROMIUM" ] || { echo "no Chromium: run bash scripts/install_browser.sh" >&2; exit 1; }

# The run's metric page with the per-epoch losses and recall (MLflow's own URL format).
read -r EXPERIMENT RUN QUERY < <(python - "$STORE" <<'PY'
import json
import sys
from urllib.parse import urlencode

import mlflow

client = mlflow.MlflowClient(tracking_uri=sys.argv[1])
experiment = client.get_experiment_by_name("twotower_pipeline")
[run] = client.search_runs(
    # A whole run: partial ones (kedro run --nodes=...) may have no metrics.
    [experiment.experiment_id],
    "attributes.status = 'FINISHED' and metrics.`epoch.train_loss` >= 0",
    order_by=["attributes.start_time DESC"], max_results=1,
)
keys = ["epoch.train_loss", "epoch.val_loss", "epoch.recall_at_10"]
query = {
    "runs": json.dumps([run.info.run_id]),
    "metric": json.dumps(keys[0]),
    "experiments": json.dumps([experiment.experiment_id]),
    "plot_metric_keys": json.dumps(keys),
    "plot_layout": "{}",
    "x_axis": "step",
    "y_axis_scale": "linear",
    "line_smoothness": "1",
    "show_point": "true",
    "deselected_curves": "[]",
    "last_linear_y_axis_range": "[]",
}
print(experiment.experiment_id, run.info.run_id, urlencode(query))
PY
)

PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# setsid: the server starts worker processes; the whole group is stopped on exit.
setsid mlflow server --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" \
  --workers 1 >/dev/null 2>&1 &
SERVER=$!
PROFILE="$(mktemp -d)"
trap 'kill -- -"$SERVER" 2>/dev/null; rm -rf "$PROFILE"' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 1
done

mkdir -p "$(dirname "$OUTPUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --disable-background-networking --disable-component-update --disable-sync --no-first-run \
  --hide-scrollbars --virtual-time-budget=30000 --user-data-dir="$PROFILE" \
  --window-size=1800,900 --screenshot="$OUTPUT" "http://127.0.0.1:$PORT/#/metric?$QUERY" 2>/dev/null
# The right-hand 470 pixels are MLflow's assistant panel, which opens by itself: cut off.
python - "$OUTPUT" <<'PY'
import sys
from PIL import Image

path = sys.argv[1]
image = Image.open(path).convert("RGB")
image.crop((0, 0, image.width - 470, image.height)).quantize(colors=256).save(path, optimize=True)
PY
echo "wrote $OUTPUT (run $RUN)"
