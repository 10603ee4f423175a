"""Cross-validate the choice among some variants of a logged evaluation, from their per-query
tables (no search): for each fold, the variant with the best mean nDCG@10 on the other folds
is scored on it (mlflow_rag.evaluation.cross_validation, the folds `cv_folds` uses).

    python scripts/cv_variants.py --tracking-uri sqlite:///mlflow.db --run PARENT_RUN_ID \
        --match 'hybrid-minilm/w0\\.[3-7]/none' [--match ...] [--folds 5]

Each --match (a regular expression, searched in the variant names) is one family: the
variants it names are the choices of that cross-validation. Prints one line per family.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--tracking-uri", required=True)
@click.option("--run", "parent_id", required=True, help="the evaluation's parent run id")
@click.option("--match", "patterns", multiple=True, required=True,
              help="a regular expression over variant names: one family (repeatable)")
@click.option("--folds", default=5, show_default=True)
def main(tracking_uri: str, parent_id: str, patterns: tuple[str, ...], folds: int) -> None:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from mlflow_rag.evaluation.cross_validation import cross_validate, summary_line

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  max_results=1000)
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for run in children:
            path = client.download_artifacts(run.info.run_id, "per_query.json", scratch)
            table = json.loads(Path(path).read_text())
            column = table["columns"].index("ndcg_at_10")
            qid = table["columns"].index("query_id")
            scores[run.info.run_name] = {row[qid]: row[column] for row in table["data"]
                                         if row[column] is not None}
    for pattern in patterns:
        family = {name: s for name, s in sorted(scores.items()) if re.search(pattern, name)}
        if not family:
            sys.exit(f"no variant matches {pattern!r}; variants: {sorted(scores)}")
        cv = cross_validate(family, folds=folds, metric="ndcg_at_10")
        click.echo(f"{pattern}: {summary_line(cv)}")


if __name__ == "__main__":
    main()
