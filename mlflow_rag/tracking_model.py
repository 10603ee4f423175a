"""The retriever as a logged (registered) MLflow model: models-from-code plus the bundle.

An MLflow adapter: :func:`log_model` snapshots the store, logs ``pyfunc_model.py`` (the
models-from-code file, by path) with the bundle as an artifact and the ``mlflow_rag`` package
as its code, pins the requirements the store's embedders need, and describes the run, the
logged model and the registered version. MLflow is imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_rag.errors import InvalidInput, RagError, UnknownChoice
from mlflow_rag.store.manifest import read_manifest
from mlflow_rag.store.store import Store, store_address
from mlflow_rag.tracking_bundles import BUNDLE_ARTIFACT_PATH, scratch_dir
from mlflow_rag.tracking_session import (
    TAG_BUNDLE_RUN_ID,
    TAG_DESCRIPTION,
    TAG_DOCUMENTS,
    TAG_EMBEDDER,
    TAG_GENERATION,
    TAG_INGEST_RUN_ID,
    TAG_RUN_TYPE,
    TAG_STORE_ID,
    TAG_STORE_PATH,
    TrackingError,
    check_tracking_uri,
    mlflow_session,
    resolve_tracking_uri,
    start_run,
)
from mlflow_rag.types import Hit

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger("mlflow_rag.tracking")


# What the served model imports: every bundle needs the base; each embedder adds what the
# embedder registry lists for it. Test tools are never here (pytest is a dev extra, and
# nothing at run time imports it).
BASE_REQUIREMENTS = ("mlflow", "numpy", "pandas", "faiss-cpu", "scikit-learn", "scipy", "click")
# The kinds of model ``log-model --kind`` logs, each its models-from-code file: ``retriever``
# answers search requests with hits (a table); ``rag`` answers questions (retrieve, then
# generate) as an MLflow ResponsesAgent, with citations.
MODEL_KINDS: dict[str, str] = {"retriever": "pyfunc_model.py", "rag": "pyfunc_rag_model.py"}
DEFAULT_KIND = "retriever"
# What a generator adds to the served model's requirements (its client library).
GENERATOR_REQUIREMENTS: dict[str, tuple[str, ...]] = {"extractive": (),
                                                      "openai:<model>": ("openai", "httpx")}


def requirement_names(embedders: Sequence[str | None], *, generator: str | None = None
                      ) -> list[str]:
    """The distributions the served model needs for these embedders (a TF-IDF or BM25-only
    bundle needs no torch, no sentence-transformers; imported vectors need no embedder) and,
    for a RAG model, its generator."""
    from mlflow_rag.embed.registry import find_embedder_kind
    from mlflow_rag.generate.registry import generator_kind

    names = list(BASE_REQUIREMENTS)
    for embedder in embedders:
        kind = find_embedder_kind(embedder)
        extra = kind.requirements if kind is not None else ()
        names += [name for name in extra if name not in names]
    if generator is not None:
        extra = GENERATOR_REQUIREMENTS[generator_kind(generator)]
        names += [name for name in extra if name not in names]
    return names


def public_version(version: str) -> str:
    """A version a public index serves: without the local label (``2.13.0+cpu`` -> ``2.13.0``).

    ``torch==2.13.0`` still installs the CPU build where the installer is pointed at it
    (docs/serving.md), and a local label pins a build no public index has under that name.
    """
    return version.split("+", 1)[0]


def pinned_requirements(embedders: Sequence[str | None], *, generator: str | None = None
                        ) -> list[str]:
    """pip requirements of the served model, pinned to the versions that run here."""
    out = []
    for name in requirement_names(embedders, generator=generator):
        try:
            out.append(f"{name}=={public_version(importlib_metadata.version(name))}")
        except importlib_metadata.PackageNotFoundError:
            out.append(name)
    return out


def _copy_package(destination: Path) -> Path:
    """The ``mlflow_rag`` package as model code (``code_paths``), so the model carries the
    code that reads its bundle; caches and build leftovers are not part of it."""
    source = Path(__file__).resolve().parent
    target = destination / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return target


def _examples(bundle: Path, *, embedder: str | None) -> tuple[Any, Any]:
    """An input example drawn from the bundle's own text and the real output for it."""
    import pandas as pd

    from mlflow_rag.serving import PARAM_DEFAULTS, Retriever, hits_frame

    retriever = Retriever(bundle, embedder=embedder)
    try:
        query = "example query"
        documents = retriever.store.find_documents(limit=1)
        if documents:
            chunks = retriever.store.get_document(documents[0].id).chunks
            if chunks:
                query = " ".join(chunks[0].text.split()[:6]) or query
        example = pd.DataFrame({"query": [query]})
        output = None
        for mode in ("hybrid", "bm25"):
            try:
                output = retriever.predict(example, {**PARAM_DEFAULTS, "mode": mode, "k": 2})
            except RagError:
                continue
            if len(output):
                break
        if output is None or not len(output):
            sample = Hit(rank=1, score=1.0, chunk_id="chunk", document_id="document",
                         chunk_type="text", chunk_index=0, text="text", source_path="path",
                         document_metadata={}, chunk_metadata={})
            output = hits_frame([[sample]])
        output["chunk_type"] = output["chunk_type"].fillna("")
        return example, output
    finally:
        retriever.close()


def ingest_run_of(client: Any, store_id: str, generation: int) -> tuple[str, str] | None:
    """The latest ingest run, in any experiment, that left this store at this generation, and
    the run holding that state's bundle (itself, unless it changed nothing), or None."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string=(f"tags.`{TAG_STORE_ID}` = '{store_id}' and tags.`{TAG_RUN_TYPE}` = "
                       f"'ingest' and tags.`{TAG_GENERATION}` = '{generation}'"),
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        return None
    run_id = str(runs[0].info.run_id)
    return run_id, str(runs[0].data.tags.get(TAG_BUNDLE_RUN_ID) or run_id)


def _model_description(store_name: str, *, store_id: str, generation: int,
                       models: Sequence[Any], documents: int,
                       ingest_run: tuple[str, str] | None) -> str:
    spaces = ", ".join(f"`{m.name}` ({m.vector_count} vectors, dimension {m.dimension}, "
                       f"{m.index_type} index)" for m in models) or "none (BM25 only)"
    source = (f"the state ingest run `{ingest_run[0]}` left (its bundle: "
              f"`runs:/{ingest_run[1]}/{BUNDLE_ARTIFACT_PATH}`)" if ingest_run
              else "a state no logged ingest run recorded")
    return (f"mlflow-rag retriever over the store `{store_name}` (store id `{store_id}`, "
            f"generation {generation}): {documents} documents; embedding models: {spaces}. "
            f"The bundle is {source}. Request params: `k`, `mode` (dense, bm25, hybrid), "
            f"`filters`.")


def _describe_version(client: Any, name: str, version: str, *, description: str,
                      tags: Mapping[str, str], kind: str = DEFAULT_KIND) -> None:
    """A registered model version's description and tags; the registered model gets a
    description too when it has none."""
    from mlflow.exceptions import MlflowException

    try:
        client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        if not client.get_registered_model(name).description:
            client.update_registered_model(
                name, description=(
                    "mlflow-rag RAG models (pyfunc ResponsesAgent: retrieve, then answer)"
                    if kind == "rag" else "mlflow-rag retrievers (pyfunc)")
                + "; each version's description names its store, embedders and ingest run.")
    except MlflowException as exc:
        raise TrackingError(f"cannot describe {name} version {version}: {exc.message}") from None


def log_model(
    store_path: str | Path, *, name: str = "retriever", register: str | None = None,
    alias: str | None = None, experiment: str | None = None, tracking_uri: str | None = None,
    model_config: Mapping[str, Any] | None = None, run_name: str | None = None,
    live: bool = False, kind: str = DEFAULT_KIND, generator: str | None = None,
    generator_options: Mapping[str, Any] | None = None, prompt: str | None = None,
) -> ModelInfo:
    """Log the store as a pyfunc retriever (models-from-code + the bundle as an artifact).

    ``register`` names a registered model to add a version to; ``alias`` (needs ``register``)
    points e.g. ``champion`` at that version, so ``models:/NAME@champion`` serves it.
    ``model_config``: see :class:`mlflow_rag.pyfunc_model.RetrieverModel`. ``live`` (a store
    in a database only): the model names the store (without a password) instead of carrying
    a bundle, so its servers search what the store holds when they answer.

    ``kind`` (:data:`MODEL_KINDS`): ``rag`` logs a model that answers questions (an MLflow
    ``ResponsesAgent``, docs/serving.md) with ``generator`` (``extractive`` by default: no
    model, no key), its ``generator_options`` and ``prompt`` (a Prompt Registry URI; the
    shipped template, registered on first use, for a generator that reads one), all recorded
    in the model config. ``generator``, its options and ``prompt`` need ``kind="rag"``.
    """
    if kind not in MODEL_KINDS:
        raise UnknownChoice("model kind", kind, MODEL_KINDS)
    if kind != "rag" and (generator or generator_options or prompt):
        raise InvalidInput("--generator, --generator-option and --prompt need --kind rag "
                           "(a retriever answers with hits, not with text)")
    if alias and not register:
        raise TrackingError("--alias needs --register NAME (aliases belong to registered models)")
    check_tracking_uri(resolve_tracking_uri(tracking_uri))  # before snapshotting a big store
    config = _model_config(kind, model_config)
    if kind == "rag":  # checked (and the prompt registered) before snapshotting the store
        config.update(rag_config(generator or str(config["generator"]),
                                 generator_options or config["generator_options"],
                                 prompt or str(config["prompt"]) or None,
                                 tracking_uri=tracking_uri, experiment=experiment))
    with Store.open(store_path, read_only=True) as store, scratch_dir(
        store.root, "log_model"
    ) as tmp:
        if live and not store.is_database:
            raise InvalidInput(f"--live needs a store in a database (postgresql://...); "
                               f"{store.location} is a folder: log its bundle instead")
        if live:
            config["store"] = store.location  # never a password: redacted
        state = _logged_state(store, Path(tmp), embedder=config["embedder"] or None)
        if run_name is None and not os.environ.get("MLFLOW_RUN_ID"):  # not `mlflow run`'s run
            run_name = f"log-model {state.store_name}" + (f" -> {register}" if register else "")
        with mlflow_session(tracking_uri, experiment) as mlflow, start_run(
            mlflow, run_name
        ) as run:
            about, description = _describe_run(mlflow, run, state, kind=kind, config=config)
            info = _log_pyfunc(mlflow, state, name=name, kind=kind, live=live, config=config,
                               register=register, about=about)
            if register:
                _describe_version(mlflow.MlflowClient(), register,
                                  str(info.registered_model_version), description=description,
                                  tags={**about, "mlflow_rag.log_model_run_id": run.info.run_id},
                                  kind=kind)
                if alias:
                    _set_alias(mlflow.MlflowClient(), register, alias,
                               str(info.registered_model_version))
            log.info("logged %s in run %s", info.model_uri, run.info.run_id)
            return info


@dataclass(frozen=True)
class _LoggedState:
    """What a logged model is made of, read from the store in one go: its bundle (a live
    model's input example is answered from one too), the model code and the store's facts."""

    bundle: Path
    code: Path
    generation: int
    models: list[Any]
    documents: int
    store_id: str
    store_name: str
    store_address: str
    example: Any
    output: Any


def _model_config(kind: str, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model config: the kind's defaults updated with ``model_config`` (unknown keys are
    one error listing the valid ones)."""
    from mlflow_rag.serving import DEFAULT_MODEL_CONFIG
    from mlflow_rag.serving_rag import RAG_MODEL_CONFIG

    defaults = {**DEFAULT_MODEL_CONFIG, **(RAG_MODEL_CONFIG if kind == "rag" else {})}
    unknown = sorted(set(model_config or {}) - set(defaults))
    if unknown:
        raise InvalidInput(f"unknown model_config keys {unknown}; choose from {sorted(defaults)}")
    return {**defaults, **(model_config or {})}


def _logged_state(store: Store, tmp: Path, *, embedder: str | None) -> _LoggedState:
    bundle = store.snapshot(tmp / "bundle")
    manifest = read_manifest(bundle)
    example, output = _examples(bundle, embedder=embedder)
    return _LoggedState(
        bundle=bundle, code=_copy_package(tmp / "code"),
        generation=manifest.generation if manifest else -1, models=store.models(),
        documents=store.stats().documents, store_id=store.store_id, store_name=store.name,
        store_address=store_address(store), example=example, output=output)


def _retriever_signature(example: Any, output: Any) -> Any:
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, DataType, Schema

    from mlflow_rag.serving import PARAM_DEFAULTS
    from mlflow_rag.serving_body import QUERY_COLUMN

    signature = infer_signature(example, output, params=PARAM_DEFAULTS)
    # The query column is declared optional so that a request without it reaches the
    # model, whose error names the problem (MLflow's own error quotes the request data).
    # The optional k, mode and filters columns override the params row by row (a Spark
    # DataFrame of queries, each with its own k); MLflow drops columns a schema lacks.
    # k is a long: MLflow refuses int64 -> double, so a double column would refuse the
    # common case; an empty cell (pandas floats) is refused by MLflow as a long, so a k
    # column is whole (docs/serving.md); mode and filters cells may be empty.
    signature.inputs = Schema([
        ColSpec(DataType.string, QUERY_COLUMN, required=False),
        ColSpec(DataType.long, "k", required=False),
        ColSpec(DataType.string, "mode", required=False),
        ColSpec(DataType.string, "filters", required=False),
    ])
    return signature


def _describe_run(mlflow: Any, run: Any, state: _LoggedState, *, kind: str,
                  config: Mapping[str, Any]) -> tuple[dict[str, str], str]:
    """Tag the run with what the model holds; returns those tags (the model's and its
    version's too) and the description."""
    ingest_run = ingest_run_of(mlflow.MlflowClient(), state.store_id, state.generation)
    about = {
        TAG_STORE_ID: state.store_id,
        TAG_GENERATION: str(state.generation),
        TAG_EMBEDDER: ",".join(m.name for m in state.models),
        TAG_DOCUMENTS: str(state.documents),
        **({TAG_INGEST_RUN_ID: ingest_run[0]} if ingest_run else {}),
    }
    description = _model_description(
        state.store_name, store_id=state.store_id, generation=state.generation,
        models=state.models, documents=state.documents, ingest_run=ingest_run)
    if kind == "rag":
        description = rag_description(description, config)
    run_tags = {TAG_RUN_TYPE: "log_model", **about, TAG_STORE_PATH: state.store_address}
    if TAG_DESCRIPTION not in run.data.tags:
        run_tags[TAG_DESCRIPTION] = description
    mlflow.set_tags(run_tags)
    return about, description


def _log_pyfunc(mlflow: Any, state: _LoggedState, *, name: str, kind: str, live: bool,
                config: Mapping[str, Any], register: str | None,
                about: Mapping[str, str]) -> ModelInfo:
    rag = kind == "rag"
    info: ModelInfo = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).resolve().parent / MODEL_KINDS[kind]),
        artifacts={} if live else {"bundle": str(state.bundle)},
        code_paths=[str(state.code)],
        # a ResponsesAgent's signature is MLflow's (the Responses API)
        signature=None if rag else _retriever_signature(state.example, state.output),
        input_example=rag_example(state.example) if rag else state.example,
        pip_requirements=pinned_requirements(
            [m.embedder for m in state.models],
            generator=str(config["generator"]) if rag else None),
        model_config=dict(config),
        registered_model_name=register,
        tags=dict(about),
        metadata={
            "mlflow_rag": {
                "kind": kind,
                "store_id": state.store_id,
                "generation": state.generation,
                "models": {m.name: {"embedder": m.embedder, "dimension": m.dimension,
                                    "index_type": m.index_type} for m in state.models},
            }
        },
    )
    return info


def _set_alias(client: Any, register: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(register, alias, version)
    except MlflowException as exc:
        raise TrackingError(
            f"cannot set alias {alias!r} on {register} version {version}: {exc.message}"
        ) from None


def rag_config(generator: str, options: Mapping[str, Any], prompt: str | None, *,
               tracking_uri: str | None, experiment: str | None) -> dict[str, Any]:
    """A RAG model's config keys: the generator checked (an unknown name or option is one
    error listing the valid ones) and the prompt resolved to ``prompts:/NAME/VERSION`` (the
    shipped template registered on first use) for a generator that reads one."""
    from mlflow_rag.answer import resolve_template
    from mlflow_rag.generate.registry import get_generator

    gen = get_generator(generator, **dict(options))
    template = resolve_template(gen, prompt, track=True, tracking_uri=tracking_uri,
                                experiment=experiment)
    return {"generator": generator, "generator_options": dict(options),
            "prompt": template.uri if template is not None else ""}


def rag_example(example: Any) -> dict[str, Any]:
    """The RAG model's input example: a Responses API request asking the retriever's
    example query (words of the bundle's first chunk)."""
    question = str(example["query"].iloc[0])
    return {"input": [{"role": "user", "content": question}], "custom_inputs": {"k": 3}}


def rag_description(retriever_description: str, config: Mapping[str, Any]) -> str:
    about = retriever_description.replace("mlflow-rag retriever over", "mlflow-rag RAG model "
                                          "(retrieve, then answer) over", 1)
    about = about.split(" Request params:", 1)[0]
    prompt = config.get("prompt") or "none"
    return (f"{about} Generator `{config['generator']}`, prompt `{prompt}`. Requests: the "
            f"Responses API (`input`: messages; `custom_inputs`: `k`, `mode`, `filters`).")
