#!/usr/bin/env bash
# Screenshots of a study in the MLflow UI, as the README shows them, from a real browser:
# Debian's headless Chromium (`apt-get install chromium`) against `mlflow server` on the
# store that `dvc repro` filled.
#
#   bash docs/mlflow_screenshot.sh [sqlite:///mlflow.db] [docs]
set -euo pipefail
STORE=${1:-sqlite:///mlflow.db}
OUT=${2:-docs}
PORT=5077
mlflow server --backend-store-uri "$STORE" --host 127.0.0.1 --port $PORT >/tmp/mlflow-shot.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
id=$(python3 -c "
from mlflow.tracking import MlflowClient
print(MlflowClient('http://127.0.0.1:$PORT').get_experiment_by_name('study-mask_quality').experiment_id)")
shot() {  # shot <file> <url fragment>
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1900,1300 \
        --virtual-time-budget=60000 --screenshot="$OUT/$1" "http://127.0.0.1:$PORT/$2" 2>/dev/null
}
shot mlflow_study_table.png "#/experiments/$id/runs?viewStateShareKey=detlab-study"
shot mlflow_study_charts.png "#/experiments/$id/runs?viewStateShareKey=detlab-study&compareRunsMode=CHART"
echo "wrote $OUT/mlflow_study_table.png $OUT/mlflow_study_charts.png"
