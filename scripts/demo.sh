#!/usr/bin/env bash
# The main job, offline: ingest documents as an MLflow run (MiniLM, no server, no API key),
# then search them. Uses the chatboti speakers CSV from ../shared/data when it is there,
# else the small example corpus in examples/docs.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
DATA="${MLFLOW_RAG_SHARED_DATA:-../shared/data}"
STORE="${MLFLOW_RAG_DEMO_STORE:-demo-store}"
if [ -f "$DATA/chatboti/2025-09-02-speaker-bio.csv" ]; then
  SOURCE="$DATA/chatboti/2025-09-02-speaker-bio.csv"
else
  SOURCE="examples/docs"
fi
QUERY="${1:-legacy modernization}"

echo "== ingest $SOURCE -> $STORE (an MLflow run in MLflow's default store, experiment 'demo')"
mlflow-rag ingest "$SOURCE" --store "$STORE" --experiment demo
echo
echo "== search: $QUERY"
mlflow-rag search "$QUERY" --store "$STORE" -k 3
echo
echo "== stats"
mlflow-rag stats --store "$STORE"
echo
echo "See the run: mlflow ui   (then open http://127.0.0.1:5000)"
