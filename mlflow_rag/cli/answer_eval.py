"""``evaluate-answers``: every generator x prompt (x retrieval variant of a grid file) on a
question/answer set, as MLflow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.answers import generators_help, parse_options
from mlflow_rag.cli.group import (
    EXPERIMENT_HELP,
    STORE_LOCATION,
    TRACKING_URI_HELP,
    HelpFrom,
    Names,
    check_tracking,
    echo_json,
    main,
)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@main.command("evaluate-answers")
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Question/answer set: a .jsonl file, one {id, question, reference_answer, "
                   "relevant_ids} a line (evaluations/speakers_qa.jsonl).")
@click.option("--store", "store_path", default=None, type=STORE_LOCATION,
              help="The store to answer from (or --variants with --corpus).")
@click.option("--variants", "variants_file", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A retrieval variant grid (YAML/JSON), as `evaluate` takes it (chunker, "
                   "chunk size, embedder, index type, mode): each variant x generator x prompt "
                   "is a child run, answered from a store built from --corpus per chunking.")
@click.option("--corpus", multiple=True,
              help="With --variants: the documents to build the stores from (files, folders); "
                   "repeatable.")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="With --variants: keep the stores here; a re-run reuses them [default: "
                   "MLFLOW_RAG_CACHE_DIR/eval (~/.cache/mlflow-rag/eval)].")
@click.option("--generators", default="extractive", cls=HelpFrom,
              help_from=lambda: "Comma-separated generators, one variant each. "
                                + generators_help())
@click.option("--prompts", default=None,
              help="Comma-separated prompts from MLflow's Prompt Registry (prompts:/NAME@ALIAS, "
                   "prompts:/NAME/VERSION): each generator that reads a prompt is evaluated "
                   "with each [default: the shipped prompt].")
@click.option("--generator-option", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="A generator option for every generator, VALUE as JSON (repeatable).")
@click.option("-k", "k", default=5, show_default=True, type=int,
              help="Chunks to answer from; retrieval recall and nDCG are at this k.")
@click.option("--mode", "modes", multiple=True, default=("hybrid",), show_default=True,
              type=Names("mlflow_rag.search.MODES"),
              help="Ranking of the retrieval; repeat it to compare modes (each a variant).")
@click.option("--judge", default=None,
              help="Also run MLflow's LLM judges (groundedness, relevance, sufficiency, "
                   "correctness) on this model, e.g. openai:/gpt-4o-mini [default: none].")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--run-name", default=None, help="The parent run's name.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def evaluate_answers_command(
    dataset: Path, store_path: Path | str | None, variants_file: Path | None,
    corpus: tuple[str, ...], work_dir: Path | None, generators: str, prompts: str | None,
    generator_options: tuple[str, ...], k: int, modes: tuple[str, ...], judge: str | None,
    tracking_uri: str | None, experiment: str | None, run_name: str | None, as_json: bool,
) -> None:
    """Answer every question of --dataset with every generator x prompt and score the answers.

    One MLflow parent run, one child run per variant, each an `mlflow.genai.evaluate` with a
    trace per question: exact match and token F1 against the reference answer, citation
    precision/recall against the relevant documents, retrieval recall@k and nDCG@k, and
    tokens, cost and latency per stage. Nothing is recorded in the store. With --variants,
    the retrieval variants of a grid file are crossed with the generators and prompts.
    """
    from mlflow_rag.evaluation.answer_set import load_qa_set
    from mlflow_rag.evaluation.answer_variants import answer_variants
    from mlflow_rag.generate.registry import check_option_names, generator_kind
    from mlflow_rag.search import SearchRequest
    from mlflow_rag.store.store import Store

    # Everything that can be refused is refused before a run starts.
    for mode in modes:
        SearchRequest.parse("probe", k=k, mode=mode)
    items = load_qa_set(dataset)
    options = parse_options(generator_options)
    names = _names(generators)
    for name in names:
        check_option_names(generator_kind(name), list(options))
    prompt_names: list[str | None] = list(_names(prompts)) if prompts else [None]
    if variants_file is not None:
        _check_grid_options(store_path, corpus, mode_given=_given("modes"))
        outcome = _evaluate_grid(variants_file, items, names, prompt_names, corpus=corpus,
                                 work_dir=work_dir, k=k, judge=judge, dataset=str(dataset),
                                 generator_options=options, tracking_uri=tracking_uri,
                                 experiment=experiment, run_name=run_name)
    else:
        if store_path is None:
            raise click.UsageError("give --store STORE, or --variants FILE with --corpus SOURCE")
        variants = answer_variants(names, prompt_names, modes)
        check_tracking(tracking_uri)
        from mlflow_rag.answer_eval_tracking import evaluate_answers

        with Store.open(store_path, read_only=True) as store:
            outcome = evaluate_answers(store, items, variants, k=k, judge=judge,
                                       dataset=str(dataset), generator_options=options,
                                       tracking_uri=tracking_uri, experiment=experiment,
                                       run_name=run_name)
    _report(outcome, questions=len(items), k=k, as_json=as_json)


def _report(outcome: Any, *, questions: int, k: int, as_json: bool) -> None:
    """The scores (and usage) of every variant: JSON, or a table and a line per variant."""
    rows = [{"variant": v.variant.name, "run_id": v.run_id,
             **{name.removesuffix("/mean"): round(value, 4)
                for name, value in v.metrics.items() if name.endswith("/mean")}}
            for v in outcome.variants]
    if as_json:
        echo_json({"run_id": outcome.run_id, "experiment_id": outcome.experiment_id,
                   "questions": questions,
                   "variants": [{**row, "usage": {name: round(value, 6)
                                                  for name, value in v.usage.items()}}
                                for row, v in zip(rows, outcome.variants, strict=True)]})
        return
    _echo_scores(rows, k=k)
    for v in outcome.variants:
        usage = v.usage
        click.echo(f"{v.variant.name}: {usage.get('input_tokens/mean', 0):.0f} input and "
                   f"{usage.get('output_tokens/mean', 0):.0f} output tokens per question, "
                   f"${usage.get('cost_usd/sum', 0):.4f} in all, answer "
                   f"{usage.get('answer_ms/mean', 0):.1f} ms mean")
    click.echo(f"\n{questions} questions; parent run {outcome.run_id} "
               f"(experiment {outcome.experiment_id})")


def _given(name: str) -> bool:
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (ParameterSource.DEFAULT, None)


def _check_grid_options(store_path: Path | str | None, corpus: tuple[str, ...], *,
                        mode_given: bool) -> None:
    if store_path is not None:
        raise click.UsageError("--variants builds its stores from --corpus; drop --store")
    if not corpus:
        raise click.UsageError("--variants needs --corpus SOURCE: the documents to build the "
                               "variants' stores from")
    if mode_given:
        raise click.UsageError("--variants takes its modes from the grid file's mode axis; "
                               "drop --mode")


def _evaluate_grid(
    variants_file: Path, items: Any, generators: list[str], prompts: list[str | None], *,
    corpus: tuple[str, ...], work_dir: Path | None, **evaluation: Any,
) -> Any:
    """The grid's retrieval variants x generators x prompts; stores under ``work_dir``."""
    from mlflow_rag.evaluation.answer_variants import grid_answer_variants
    from mlflow_rag.evaluation.beir_download import cache_root
    from mlflow_rag.evaluation.harness import HarnessOptions
    from mlflow_rag.evaluation.variants import load_grid

    grid = load_grid(variants_file)  # a bad axis value: one error naming it and the choices
    variants = grid_answer_variants(grid.variants, generators, prompts)
    check_tracking(evaluation["tracking_uri"])
    from mlflow_rag.answer_eval_tracking import evaluate_answer_grid

    options = HarnessOptions(work_dir=(work_dir or cache_root() / "eval").expanduser(),
                             sources=corpus, progress=False)
    return evaluate_answer_grid(grid, items, variants, sources=corpus, options=options,
                                **evaluation)


def _echo_scores(rows: list[dict[str, Any]], *, k: int) -> None:
    from mlflow_rag.answer_eval_tracking import SCORES

    # The offline scores first, in a fixed order, then the judges' (with --judge).
    order = [*SCORES, f"recall_at_{k}", f"ndcg_at_{k}"]
    found = {c for row in rows for c in row} - {"variant", "run_id"}
    columns = [c for c in order if c in found] + sorted(found - set(order))
    width = max(len("variant"), *(len(str(row["variant"])) for row in rows)) + 2
    click.echo("variant".ljust(width) + "".join(c.rjust(len(c) + 2) for c in columns))
    for row in rows:
        click.echo(str(row["variant"]).ljust(width) + "".join(
            f"{row[c]:.4f}".rjust(len(c) + 2) if c in row else "-".rjust(len(c) + 2)
            for c in columns))
