"""Access labels: who may see which documents, as an exact pre-filter (no SQL here).

A document carries access labels in its reserved metadata key :data:`ACCESS_KEY` (a sorted
list of strings; set at ingest by ``--access-labels`` or an ``_access`` field of a record). A
document without labels is visible to everyone. A :class:`Principal` holds the labels of its
name and its groups, and sees a document when it holds at least one of the document's labels.

The rule is one filter plan (:func:`access_plan`) ANDed with the caller's filter
(:func:`restrict`), so dense, BM25 and hybrid search, ``find``/``list`` and the served model
all rank only among the visible chunks: scores, counts and top-k come from the allowed
subset, exactly as if nothing else were stored. ``show`` and context expansion ask
:func:`visible` of the document's stored metadata and answer "not found" otherwise.

Who may claim which principal is the deployment's business (the CLI user, the server's
authenticating proxy); the store's business is never to return what the principal may not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.filters import Condition, Junction, Plan

ACCESS_KEY = "_access"  # document metadata key holding the document's access labels
MAX_LABELS = 256
MAX_LABEL_CHARS = 256


def _check_label(label: Any, *, what: str) -> str:
    if not isinstance(label, str):
        raise InvalidInput(f"{what} must be strings, got {type(label).__name__} {label!r}")
    text = label.strip()
    if not text or len(text) > MAX_LABEL_CHARS or any(ord(ch) < 32 for ch in text) or "," in text:
        raise InvalidInput(
            f"bad {what[:-1]} {label!r}: 1-{MAX_LABEL_CHARS} printable characters, no comma"
        )
    return text


def parse_labels(value: Any, *, what: str = "access labels") -> list[str]:
    """Labels from ``"L1,L2"`` or a list of strings: stripped, unique, sorted; ``None``, ``""``
    and ``[]`` are no labels (visible to everyone)."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[Any] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise InvalidInput(
            f"{what} must be a comma-separated string or a list of strings, "
            f"got {type(value).__name__}"
        )
    labels = sorted({_check_label(item, what=what) for item in items})
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"{len(labels)} {what}; at most {MAX_LABELS}")
    return labels


def with_labels(metadata: Mapping[str, Any], default: Any = None) -> dict[str, Any]:
    """Document metadata with its labels normalised under :data:`ACCESS_KEY`: the record's own
    ``_access`` field wins, else ``default`` (an ingest's ``--access-labels``); no labels, no
    key (so an unlabelled document stays visible to everyone)."""
    out = dict(metadata)
    raw = out.pop(ACCESS_KEY, None)
    labels = parse_labels(raw if raw not in (None, "", []) else default)
    if labels:
        out[ACCESS_KEY] = labels
    return out


def check_stored_labels(metadata: Mapping[str, Any]) -> None:
    """Refuse a write whose labels are not in their stored form (a sorted list of labels)."""
    if ACCESS_KEY not in metadata:
        return
    value = metadata[ACCESS_KEY]
    if not isinstance(value, list) or not value or parse_labels(value) != value:
        raise InvalidInput(
            f"metadata {ACCESS_KEY!r} must be a non-empty sorted list of labels, got {value!r}"
        )


@dataclass(frozen=True)
class Principal:
    """Who a read runs for: a name and groups. Build it with :meth:`parse`."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: Any, groups: Any = None) -> Principal:
        """A checked principal: ``name`` a label, ``groups`` ``"G1,G2"`` or a list."""
        checked = _check_label(name, what="principal names")
        return cls(name=checked, groups=tuple(parse_labels(groups, what="groups")))

    @classmethod
    def optional(cls, name: Any, groups: Any = None) -> Principal | None:
        """:meth:`parse`, or ``None`` when no name is given (groups without a name: refused)."""
        if name in (None, ""):
            if groups not in (None, "", []):
                raise InvalidInput("groups were given without a principal; name the principal too")
            return None
        return cls.parse(name, groups)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset((self.name, *self.groups))


def access_plan(principal: Principal) -> Plan:
    """The chunks ``principal`` may see: their document has no labels, or one it holds."""
    return Junction("OR", (
        Condition("document", None, ACCESS_KEY, "$exists", None, negate=True),
        Condition("document", None, ACCESS_KEY, "$in", sorted(principal.labels)),
    ))


def restrict(plan: Plan | None, principal: Principal | None) -> Plan | None:
    """``plan`` narrowed to what ``principal`` may see (no principal: ``plan`` unchanged)."""
    if principal is None:
        return plan
    access = access_plan(principal)
    return access if plan is None else Junction("AND", (access, plan))


def visible(metadata: Mapping[str, Any], principal: Principal | None) -> bool:
    """Whether a document with this stored metadata is visible to ``principal``."""
    if principal is None:
        return True
    labels = metadata.get(ACCESS_KEY)
    if not labels:
        return True
    return bool(principal.labels.intersection(labels))
