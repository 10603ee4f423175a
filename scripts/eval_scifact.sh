#!/usr/bin/env bash
# Evaluate the grid of evaluations/scifact.yaml (BM25, MiniLM and TF-IDF dense, hybrids) on
# SciFact's 809 training claims, log it to MLflow (one parent run, one child run per variant),
# then read the runs back and check that every variant of the grid logged its metrics.
#
#   scripts/eval_scifact.sh [extra `mlflow-rag evaluate` options, e.g. --max-queries 100]
#
# Environment: MLFLOW_RAG_SHARED_DATA (default ../shared/data), MLFLOW_TRACKING_URI (default
# MLflow's own, sqlite:///mlflow.db here), EVAL_WORK_DIR (stores, kept for re-runs; default
# $TMPDIR/mlflow-rag-eval-scifact), EVAL_EXPERIMENT (default scifact), EVAL_VARIANTS (the grid
# file; default evaluations/scifact.yaml).
# Exits 0 with a message when the data is absent (CI without the shared data).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false

DATA="${MLFLOW_RAG_SHARED_DATA:-../shared/data}"
DATASET="$DATA/scifact-train"
if [ ! -f "$DATASET/corpus.jsonl" ] || [ ! -f "$DATASET/qrels/train.tsv" ]; then
  echo "SciFact training data not found at $DATASET (set MLFLOW_RAG_SHARED_DATA); nothing to evaluate."
  exit 0
fi
if [ -x .venv/bin/mlflow-rag ]; then BIN=.venv/bin; else BIN="$(dirname "$(command -v mlflow-rag)")"; fi
TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
WORK_DIR="${EVAL_WORK_DIR:-${TMPDIR:-/tmp}/mlflow-rag-eval-scifact}"
EXPERIMENT="${EVAL_EXPERIMENT:-scifact}"
VARIANTS="${EVAL_VARIANTS:-evaluations/scifact.yaml}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

echo "== mlflow-rag evaluate --dataset $DATASET --variants $VARIANTS (work dir $WORK_DIR)"
START=$(date +%s)
"$BIN/mlflow-rag" evaluate --dataset "$DATASET" --variants "$VARIANTS" --split train \
  --experiment "$EXPERIMENT" --tracking-uri "$TRACKING_URI" --work-dir "$WORK_DIR" "$@" | tee "$LOG"
SECONDS_TAKEN=$(( $(date +%s) - START ))
RUN_ID="$(sed -n 's/^evaluation run \([0-9a-f]*\)$/\1/p' "$LOG")"
if [ -z "$RUN_ID" ]; then
  echo "FAIL: no evaluation run id in the output" >&2
  exit 1
fi

echo
echo "== checking run $RUN_ID in $TRACKING_URI"
"$BIN/python" - "$TRACKING_URI" "$RUN_ID" "$VARIANTS" <<'EOF'
import sys

from mlflow import MlflowClient

from mlflow_rag.evaluation.variants import load_grid

uri, parent_id, variants_file = sys.argv[1:]
client = MlflowClient(uri)
grid = load_grid(variants_file)
parent = client.get_run(parent_id)
children = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)
by_name = {run.info.run_name: run for run in children}
wanted = ["ndcg_at_10", "recall_at_10", "recall_at_100", "precision_at_10", "mrr_at_10",
          "map_at_10", "hit_rate_at_10", "latency_p50_ms", "latency_p95_ms", "ingest_seconds",
          "index_bytes"]
problems = []
for variant in grid.variants:
    run = by_name.get(variant.label)
    if run is None:
        problems.append(f"no child run for variant {variant.label}")
        continue
    missing = [m for m in wanted if m not in run.data.metrics]
    if missing:
        problems.append(f"{variant.label}: missing metrics {missing}")
    if run.data.params.get("mode") != variant.mode:
        problems.append(f"{variant.label}: param mode is {run.data.params.get('mode')!r}")
    if not any(a.path == "per_query.json" for a in client.list_artifacts(run.info.run_id)):
        problems.append(f"{variant.label}: no per-query table")
best = parent.data.tags.get("mlflow_rag.best_variant")
if best not in by_name:
    problems.append(f"best-variant tag {best!r} names no child run")
if problems:
    print("FAIL:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"ok: {len(grid.variants)} variants with all metrics; best by "
      f"{parent.data.tags.get('mlflow_rag.best_metric')}: {best}")
EOF
echo "wall time: ${SECONDS_TAKEN}s"
