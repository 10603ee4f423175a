"""What the store's searches take, parsed once at the boundary: a checked ``k`` and the filter
compiled to its plan. The layers above (search, serving, the CLI) build one per request and
hand it down, so no layer checks ``k`` or compiles the filter again (issue 12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mlflow_rag.store.access import Principal, restrict
from mlflow_rag.store.checks import check_k
from mlflow_rag.store.filters import Plan, as_plan


@dataclass(frozen=True)
class Retrieval:
    """``k`` results, among the chunks ``plan`` selects (``None``: every chunk). For a
    principal the plan holds its access rule too (:func:`mlflow_rag.store.access.restrict`),
    so every search below ranks only what the principal may see.

    Build it with :meth:`parse`; the constructor trusts its arguments."""

    k: int
    plan: Plan | None = None

    @classmethod
    def parse(
        cls, *, k: Any, filters: str | Mapping[str, Any] | Plan | None = None,
        principal: Principal | None = None,
    ) -> Retrieval:
        """``k`` checked (:func:`check_k`), ``filters`` compiled (:func:`as_plan`) and
        narrowed to what ``principal`` may see."""
        return cls(k=check_k(k), plan=restrict(as_plan(filters), principal))

    def deeper(self, k: int) -> Retrieval:
        """The same filter, ``k`` results (a depth derived from a checked ``k`` or checked)."""
        return replace(self, k=k)
