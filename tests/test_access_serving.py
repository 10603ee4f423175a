"""The served model reads as the request's principal; configured with ``require_principal``
a request without one is a 400, never full access (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_rag.serving import Retriever
from mlflow_rag.serving_body import BadRequest
from mlflow_rag.store.store import Store
from tests.conftest import make_record


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("access-serving")
    with Store.open(root / "store", create=True) as store:
        store.write([
            make_record("public", ["payroll public handbook"]),
            make_record("salaries", ["payroll salaries per person"], metadata={"_access": ["hr"]}),
            make_record("contract", ["payroll contract draft"], metadata={"_access": ["legal"]}),
        ])
        return store.snapshot(root / "bundle")


def served(retriever: Retriever, **params: object) -> set[str]:
    frame = retriever.predict(["payroll"], {"mode": "bm25", "k": 10, **params})
    return set(frame.document_id)


def test_requests_read_as_their_principal_and_a_required_one_is_enforced(bundle: Path) -> None:
    open_model = Retriever(bundle)
    try:
        assert served(open_model) == {"public", "salaries", "contract"}
        assert served(open_model, principal="bob") == {"public"}
        assert served(open_model, principal="bob", groups="hr") == {"public", "salaries"}
        assert served(open_model, principal="legal") == {"public", "contract"}
        with pytest.raises(BadRequest, match="without a principal"):
            served(open_model, groups="hr")
        with pytest.raises(BadRequest, match="bad group"):
            served(open_model, principal="bob", groups="h\nr")
    finally:
        open_model.close()
    strict = Retriever(bundle, require_principal=True)
    try:
        for params in ({}, {"principal": ""}):
            with pytest.raises(BadRequest, match="requires a principal"):
                served(strict, **params)
        assert served(strict, principal="bob") == {"public"}
    finally:
        strict.close()


def test_the_pyfunc_model_turns_a_missing_principal_into_a_400(bundle: Path) -> None:
    from mlflow.exceptions import MlflowException

    from mlflow_rag.pyfunc_model import RetrieverModel

    model = RetrieverModel()
    model.trace = "off"
    model.retriever = Retriever(bundle, require_principal=True)
    try:
        with pytest.raises(MlflowException) as caught:
            model.predict(None, ["payroll"], {"mode": "bm25", "k": 3})
        assert caught.value.get_http_status_code() == 400
        assert "requires a principal" in caught.value.message
        frame = model.predict(None, ["payroll"], {"mode": "bm25", "k": 3, "principal": "x",
                                                  "groups": "legal"})
        assert set(frame.document_id) == {"public", "contract"}
    finally:
        model.retriever.close()
