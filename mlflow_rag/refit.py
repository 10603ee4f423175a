"""Embedders fitted on the corpus (tfidf): when ingest fits or refits one, and the refit that
re-embeds all of a model's vectors in one transaction (what ``mlflow-rag refit`` runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.embed.base import FittedEmbedder
from mlflow_rag.embed.registry import KINDS, find_embedder_kind
from mlflow_rag.errors import InvalidInput
from mlflow_rag.ingest_embed import embed_all
from mlflow_rag.store.store import Store

log = logging.getLogger("mlflow_rag.ingest")

REFITS = ("auto", "always", "never")
# The auto-refit rule for an embedder fitted on the corpus (docs/store.md, "Models fitted on
# the corpus"): refit, re-embedding all the model's vectors, when after this ingest the model
# would hold more than REFIT_GROWTH times the texts it was fitted on, or when the texts this
# ingest embeds bring more distinct terms the vocabulary lacks than REFIT_NEW_TERMS of its
# size. Doubling keeps the total refit work linear in the corpus; the new-terms bound catches
# a corpus that changes subject without growing much.
REFIT_GROWTH = 2.0
REFIT_NEW_TERMS = 0.10



def fit_if_needed(
    model: FittedEmbedder, store: Store, new_texts: Sequence[str], replaced_ids: set[str], *,
    policy: str, say: Callable[[str], None], progress: bool,
) -> None:
    """Fit an embedder fitted on the corpus (tfidf) where it must be, under the store's lock:
    a first fit on the texts it will embed, or a refit that re-embeds every vector the model
    has (never a new fit beside vectors of an old one)."""
    existing = {m.name: m for m in store.models()}.get(model.name)
    count = existing.vector_count if existing is not None else 0
    reason = ""
    if not model.fitted:
        if count == 0:
            model.fit(list(new_texts))
            model.save(store.model_dir(model.name))
            store.publish_model_state(model.name, model.version)
            if existing is not None and existing.dimension != model.dimension:
                # a model left without vectors (all its documents deleted), fitted anew
                store.replace_model_vectors(model.name, [], np.zeros((0, model.dimension)),
                                            dimension=model.dimension, model_version=model.version)
            return
        reason = "the embedder given is not fitted"
    elif count and existing is not None and existing.model_version != model.version:
        reason = (f"its saved state ({model.version}) is not the fit its {count} stored vectors "
                  f"were made with ({existing.model_version})")
    elif policy == "always":
        reason = "asked for"
    else:
        stale = refit_reason(model, count, new_texts)
        if stale and policy == "never":
            say(f"{model.name} is stale: {stale}; refit it with `mlflow-rag refit --store "
                f"{store.root} --embedder {model.name}` (or ingest with --refit auto)")
        if not stale or policy == "never":
            return
        reason = stale
    refit(store, model, extra_texts=new_texts, skip_documents=replaced_ids, reason=reason,
          say=say, progress=progress)


def refit_reason(model: FittedEmbedder, vector_count: int, new_texts: Sequence[str]) -> str:
    """Why a fitted embedder is stale by the refit rule (REFIT_GROWTH, REFIT_NEW_TERMS), or ""."""
    if not new_texts:
        return ""
    fitted_on = int(model.n_documents)
    after = vector_count + len(new_texts)
    if after > REFIT_GROWTH * fitted_on:
        return (f"it would hold {after} texts, more than {REFIT_GROWTH:g}x the {fitted_on} "
                "it was fitted on")
    unknown, distinct = model.unknown_terms(new_texts)
    vocabulary = int(model.n_features)
    if unknown > REFIT_NEW_TERMS * vocabulary:
        return (f"{unknown} of the {distinct} distinct terms of the new texts are not in its "
                f"{vocabulary}-term vocabulary (over {REFIT_NEW_TERMS:.0%} of it)")
    return ""


def refit(
    store: Store, model: FittedEmbedder, *, extra_texts: Sequence[str] = (),
    skip_documents: set[str] | frozenset[str] = frozenset(), reason: str = "asked for",
    say: Callable[[str], None] | None = None, progress: bool = False, batch_size: int = 256,
) -> int:
    """Refit ``model`` (an embedder fitted on the corpus) on every chunk that holds one of its
    vectors (except chunks of ``skip_documents``, about to be replaced) plus ``extra_texts``,
    re-embed all those chunks and replace all its vectors in one transaction, then save the
    new state. Call it under ``store.writer_lock()``. Returns the number of vectors
    re-embedded."""
    say = say or log.warning
    stored = store.catalog.chunks_with_vectors(model.name)
    chunks = [(cid, text) for cid, _, text in stored]
    say(f"refitting {model.name}: {reason}; re-embedding its {len(chunks)} stored vector(s)")
    state_dir = store.model_dir(model.name)
    # The saved files as they were, put back if the vectors' commit fails.
    previous = {p.name: p.read_bytes() for p in sorted(state_dir.glob("*")) if p.is_file()} \
        if state_dir.is_dir() else {}
    # Replaced documents' old chunks are re-embedded too (their text may come back and be
    # served from the cache) but not fitted on: that text is leaving the store.
    model.fit([text for _, doc_id, text in stored if doc_id not in skip_documents]
              + list(extra_texts))
    hashes = [str(i) for i in range(len(chunks))]
    vectors, _, _ = embed_all(model, [text for _, text in chunks], hashes,
                               batch_size=batch_size, progress=progress)
    matrix = (np.stack([vectors[h] for h in hashes]) if chunks
              else np.zeros((0, model.dimension), dtype=np.float32))
    # The state is saved before the vectors commit and put back if the commit fails, so the
    # two disagree only if the process dies in between; the next ingest sees the version
    # mismatch and refits, and `check` reports it.
    model.save(state_dir)
    try:
        store.publish_model_state(model.name, model.version)
        if any(m.name == model.name for m in store.models()):
            store.replace_model_vectors(model.name, [cid for cid, _ in chunks], matrix,
                                        dimension=model.dimension, model_version=model.version)
    except BaseException:
        _restore_files(state_dir, previous)
        raise
    return len(chunks)


def refit_corpus_models(
    store: Store, *, wait: bool = True, on_message: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Refit every model of the store fitted on the corpus (tfidf), as after a delete: the
    deleted documents' terms leave the saved vocabulary. Returns each refit's facts."""
    return [refit_model(store, info.name, wait=wait, on_message=on_message)
            for info in store.models() if _fitted_on_corpus(info.embedder)]


def _fitted_on_corpus(spec: str | None) -> bool:
    kind = find_embedder_kind(spec)
    return kind is not None and kind.fitted_on_corpus


def _restore_files(directory: Path, files: Mapping[str, bytes]) -> None:
    from mlflow_rag.store.files import atomic_write_bytes

    # The JSON names the npz's hash and is read first: write it last, as a save does.
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        atomic_write_bytes(directory / name, files[name])


def refit_model(
    store: Store, model_name: str = "tfidf", *, wait: bool = True, progress: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Refit a model fitted on the corpus (tfidf) on the chunks that hold its vectors, and
    re-embed them: what ``mlflow-rag refit`` runs. After deletions it also takes the deleted
    documents' terms out of the saved vocabulary. Returns before/after facts."""
    say = on_message or log.warning
    def busy(holder: str) -> None:
        say(f"another process ({holder}) is writing to {store.root}; waiting for it to finish")

    with store.writer_lock(wait=wait, on_busy=busy if wait else None):
        info = store.model(model_name)
        if not _fitted_on_corpus(info.embedder):
            fitted = [kind.spec for kind in KINDS if kind.fitted_on_corpus]
            raise InvalidInput(
                f"model {model_name!r} is embedded by {info.embedder!r}, which is not fitted on "
                f"the corpus; only {', '.join(fitted)} models can be refitted"
            )
        from mlflow_rag.embed.tfidf import STATE_JSON, STATE_NPZ, TfidfEmbedder

        state_dir = store.model_dir(model_name)
        saved = TfidfEmbedder.load(state_dir) if TfidfEmbedder.is_saved(state_dir) else None
        model = TfidfEmbedder(**saved.params()) if saved is not None else TfidfEmbedder()
        vectors = next(m.vector_count for m in store.models() if m.name == model_name)
        before = {"dimension": info.dimension, "vectors": vectors,
                  "n_features": saved.n_features if saved is not None else None}
        if vectors == 0:
            # Nothing left to fit on (every document deleted): the vocabulary goes too.
            for name in (STATE_JSON, STATE_NPZ):
                (state_dir / name).unlink(missing_ok=True)
            return {"model": model_name, "before": before,
                    "after": {"dimension": info.dimension, "vectors": 0, "n_features": None}}
        count = refit(store, model, say=say, progress=progress)
        store.flush()
        after = {"dimension": model.dimension, "vectors": count, "n_features": model.n_features}
    return {"model": model_name, "before": before, "after": after}


