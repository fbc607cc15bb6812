#!/usr/bin/env bash
# Screenshot of the project's kedro-viz lineage (the README image).
#   bash scripts/lineage_screenshot.sh [OUTPUT.png]      (default docs/img/lineage.png)
#   VIEW='?pid=__default__&fid=evaluation&expandAllPipelines=true' bash scripts/lineage_screenshot.sh X.png
#     (kedro-viz's URL parameters: fid focuses a stage, expandAllPipelines opens the stages)
# Run it after `kedro run` (set KEDRO_ENV=smoke for the small run): it builds the
# static site with previews, serves it on 127.0.0.1 and lets headless Chromium
# draw the graph in the light theme without the sidebar.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="$(realpath -m "${1:-docs/img/lineage.png}")"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[ -n "$CHROMIUM" ] || { echo "no Chromium: run bash scripts/install_browser.sh" >&2; exit 1; }

kedro viz build --include-previews >/dev/null
# Display settings live in the browser's localStorage: a page on the same origin sets them.
cat > build/_lineage_view.html <<'HTML'
<!doctype html><script>
localStorage.setItem("KedroViz", JSON.stringify(
  {theme: "light", showFeatureHints: false, visible: {sidebar: false, miniMap: false}}));
location.replace("/" + location.search);
</script>
HTML

PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python -m http.server "$PORT" --bind 127.0.0.1 --directory build >/dev/null 2>&1 &
SERVER=$!
PROFILE="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null; rm -rf "$PROFILE" build/_lineage_view.html' EXIT
sleep 1

mkdir -p "$(dirname "$OUTPUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --disable-background-networking --disable-component-update --disable-sync --no-first-run \
  --hide-scrollbars --virtual-time-budget=20000 --user-data-dir="$PROFILE" \
  --window-size="${WINDOW_SIZE:-1150,1900}" --force-device-scale-factor="${SCALE:-2}" \
  --screenshot="$OUTPUT" \
  "http://127.0.0.1:$PORT/_lineage_view.html${VIEW:-}" 2>/dev/null
# A 256-colour palette keeps the (grey, flat) image a fraction of the size; Pillow comes with matplotlib.
python - "$OUTPUT" <<'PY'
import sys
from PIL import Image

path = sys.argv[1]
Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
PY
echo "wrote $OUTPUT"
