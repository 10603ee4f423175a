"""read_legacy: the chatboti ``embeddings-<model>.json`` files, real and generated."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, LoaderError
from mlflow_rag.load import CsvLoader, LegacyLoader, loader_for, read_legacy
from mlflow_rag.load.legacy import model_name_from_path
from mlflow_rag.types import LoadFailure, SourceDocument
from tests.fixtures_loaders import shared_file

REAL_FILES = [
    ("embeddings-text-embedding-3-small.json", "text-embedding-3-small", 1536),
    ("embeddings-amazon-titan-embed-text-v-2-0.json", "amazon-titan-embed-text-v-2-0", 1024),
]


def speaker(name: str, dim: int = 4, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "country": "UK",
        "name": name,
        "role": "Engineer",
        "final_title": f"Talk by {name}",
        "final_abstract_max_150_words": f"Abstract of {name}.",
        "bio_max_120_words": f"Bio of {name}.",
        "mail_adress": f"{name.lower()}@example.com",
        "headshot": "Upload here",
        "social_media_handles": f"https://social.example/{name.lower()}",
        "abstract_embedding": [0.5] * dim,
        "bio_embedding": [0.25] * dim,
    }
    record.update(overrides)
    return record


def write(tmp_path: Path, records: Any, name: str = "embeddings-tiny-model.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(("file_name", "model", "dimension"), REAL_FILES)
def test_real_legacy_file_imports_13_speakers_with_their_vectors(
    file_name: str, model: str, dimension: int
) -> None:
    path = shared_file("chatboti", file_name)
    imported = read_legacy(path)
    assert imported.model_name == model and imported.dimension == dimension
    assert imported.failures == [] and len(imported.documents) == 13
    raw = json.loads(path.read_text(encoding="utf-8"))
    for item, record in zip(imported.documents, raw, strict=True):
        doc = item.document
        assert doc.id == record["name"] and doc.source_type == "legacy"
        texts = {s.name: doc.text[s.start : s.end] for s in doc.sections}
        assert texts == {
            "abstract": record["final_abstract_max_150_words"],
            "bio": record["bio_max_120_words"],
        }
        assert set(item.vectors) == {"abstract", "bio"}
        for section, key in (("abstract", "abstract_embedding"), ("bio", "bio_embedding")):
            vector = item.vectors[section]
            assert vector.dtype == np.float32 and vector.shape == (dimension,)
            np.testing.assert_allclose(vector, np.asarray(record[key], dtype=np.float32))
            assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3  # both models store unit vectors
        assert doc.pii == {
            "mail_adress": record["mail_adress"],
            "social_media_handles": record["social_media_handles"],
        }
        assert "mail_adress" not in doc.metadata and "abstract_embedding" not in doc.metadata
        assert doc.metadata["pii_fields"] == ["mail_adress", "social_media_handles"]
        assert doc.metadata["final_title"] == record["final_title"]
        assert doc.metadata["embedding_model"] == model
        assert doc.metadata["loader"] == "legacy" and doc.metadata["encoding"] == "utf-8"
        assert doc.metadata["file_size"] == path.stat().st_size


def test_legacy_ids_and_texts_match_the_speaker_csv() -> None:
    """The same speaker imported from the CSV and from the legacy file is the same document."""
    legacy = read_legacy(shared_file("chatboti", REAL_FILES[0][0]))
    csv_path = shared_file("chatboti", "2025-09-02-speaker-bio.csv")
    loader = CsvLoader(
        id_column="Name",
        text_columns=["Final abstract (Max. 150 words)", "Bio (Max. 120 words)"],
        pii_columns=["Mail adress", "Social Media Handles"],
    )
    from_csv = [d for d in loader.load(str(csv_path)) if isinstance(d, SourceDocument)]
    assert [d.document.id for d in legacy.documents] == [d.id for d in from_csv]
    assert [d.document.text for d in legacy.documents] == [d.text for d in from_csv]
    with csv_path.open(encoding="utf-8", newline="") as f:
        assert len(list(csv.DictReader(f))) == 13


def test_generated_file_imports_with_model_name_from_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, [speaker("Ada"), speaker("Brian")])
    imported = read_legacy(path)
    assert imported.model_name == "tiny-model" and imported.dimension == 4
    assert [d.document.id for d in imported.documents] == ["Ada", "Brian"]
    doc = imported.documents[0].document
    assert doc.text == "Abstract of Ada.\n\nBio of Ada."
    assert doc.metadata["country"] == "UK" and doc.metadata["name"] == "Ada"
    assert read_legacy(path, model_name="override").model_name == "override"


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("embeddings-text-embedding-3-small.json", "text-embedding-3-small"),
        ("embeddings-amazon-titan-embed-text-v-2-0.json", "amazon-titan-embed-text-v-2-0"),
        ("speakers.json", None),
        ("embeddings-.json", None),
    ],
)
def test_model_name_from_the_file_name(file_name: str, expected: str | None) -> None:
    assert model_name_from_path(Path("/x") / file_name) == expected


def test_model_name_that_cannot_be_derived_must_be_given(tmp_path: Path) -> None:
    path = write(tmp_path, [speaker("Ada")], name="speakers.json")
    with pytest.raises(InvalidInput, match="pass model_name"):
        read_legacy(path)
    assert read_legacy(path, model_name="m").dimension == 4


def test_bad_records_are_failures_naming_the_record_and_the_rest_import(tmp_path: Path) -> None:
    records = [
        speaker("Good"),
        speaker("Short", abstract_embedding=[0.5] * 3),  # 1: inconsistent dimension
        speaker("NaN", bio_embedding=[0.1, float("nan"), 0.1, 0.1]),  # 2
        speaker("Text", abstract_embedding=[0.1, "0.2", 0.3, 0.4]),  # 3: non-numeric
        speaker("Zero", bio_embedding=[0, 0, 0, 0]),  # 4
        speaker("NoVector", bio_embedding=None),  # 5: text without its vector
        speaker("Good"),  # 6: duplicate name
        "not an object",  # 7
        speaker("", dim=4),  # 8: no name
        speaker("Big", bio_embedding=[1e39, 0, 0, 0]),  # 9: overflows float32
        speaker("AlsoGood"),
    ]
    imported = read_legacy(write(tmp_path, records))
    assert [d.document.id for d in imported.documents] == ["Good", "AlsoGood"]
    reasons = [f.reason for f in imported.failures]
    assert reasons == [
        "record 2 ('NaN'): bio_embedding value 1 is nan (NaN or infinite)",
        "record 3 ('Text'): abstract_embedding value 1 is not a number ('0.2')",
        "record 4 ('Zero'): bio_embedding is all zeros",
        "record 5 ('NoVector'): has bio_max_120_words text but no bio_embedding",
        "record 6 ('Good'): duplicate name (first at record 0); not loaded",
        "record 7: expected an object, got str",
        "record 8: no 'name' (the id)",
        "record 9 ('Big'): bio_embedding has values too large for float32",
        "record 1 ('Short'): vector dimension abstract_embedding=3; the file's dimension is 4",
    ]


def test_the_most_common_dimension_wins_so_one_odd_first_record_fails_alone(
    tmp_path: Path,
) -> None:
    records = [speaker("Odd", dim=3), speaker("A"), speaker("B")]
    imported = read_legacy(write(tmp_path, records))
    assert imported.dimension == 4
    assert [d.document.id for d in imported.documents] == ["A", "B"]
    assert "record 0 ('Odd')" in imported.failures[0].reason


def test_record_with_only_a_bio_has_one_section_and_one_vector(tmp_path: Path) -> None:
    record = speaker("Bio", final_abstract_max_150_words="", abstract_embedding=None)
    imported = read_legacy(write(tmp_path, [record]))
    item = imported.documents[0]
    assert [s.name for s in item.document.sections] == ["bio"] and set(item.vectors) == {"bio"}
    assert item.document.text == "Bio of Bio."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list of speaker objects, got dict"),
        ("[]", "no usable record"),
        ('["x", 1]', "no usable record with vectors in 2; first problem: record 0: expected"),
    ],
)
def test_whole_file_problems_raise_loader_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "embeddings-m.json"
    path.write_text(content)
    with pytest.raises(LoaderError, match=message):
        read_legacy(path)


def test_missing_file_raises_loader_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=re.escape("embeddings-m.json: no such file")):
        read_legacy(tmp_path / "embeddings-m.json")


def test_legacy_loader_yields_documents_then_failures_and_is_chosen_by_file_name(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, [speaker("A"), speaker("B", bio_embedding=[math.inf] * 4)])
    loader = loader_for(str(path))
    assert isinstance(loader, LegacyLoader)
    items = list(loader.load(str(path)))
    assert [type(i) for i in items] == [SourceDocument, LoadFailure]
    broken = tmp_path / "embeddings-broken.json"
    broken.write_text("[")
    assert isinstance(next(iter(LegacyLoader().load(str(broken)))), LoadFailure)
