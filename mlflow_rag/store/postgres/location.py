"""A PostgreSQL store's location: its form, parsed and checked, and shown without a password.

A location is a libpq URL, ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE``, with one
parameter of ours, ``schema`` (default ``mlflow_rag``): a store is one schema, so several
stores share a database. Credentials best come from the environment (``PGPASSWORD``,
``~/.pgpass``, ``PGUSER``), which libpq reads itself; a password in the URL works but never
appears in a message, a parameter, a manifest or a log (:func:`redacted`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mlflow_rag.errors import RagError

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "mlflow_rag"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_location(text: str) -> bool:
    return str(text).startswith(SCHEMES)


@dataclass(frozen=True)
class Location:
    """A parsed ``postgresql://`` location: what libpq gets, and the store's schema."""

    conninfo: str
    schema: str
    shown: str  # the location without its password: for messages

    @property
    def lock_key(self) -> str:
        return f"mlflow-rag:{self.schema}"


def parse_location(text: str) -> Location:
    """Split off the ``schema`` parameter and check it; refuse what is not a location."""
    if not is_location(text):
        raise RagError(f"not a PostgreSQL location: {redacted(text)!r}; expected "
                       "postgresql://[USER@]HOST[:PORT]/DATABASE[?schema=NAME]")
    parts = urlsplit(text)
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    kept = []
    for key, value in params:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if not _SCHEMA_NAME.fullmatch(schema):
        raise RagError(f"bad schema name {schema!r} in {redacted(text)}: use 1-63 lowercase "
                       "letters, digits and underscores, not starting with a digit")
    conninfo = _unsplit(parts._replace(query=urlencode(kept)))
    return Location(conninfo=conninfo, schema=schema, shown=redacted(text))


def redacted(text: str) -> str:
    """The location with any password (in the URL or a ``password`` parameter) removed: safe
    to print or record, and still a location (libpq then takes the password from
    ``PGPASSWORD`` or ``~/.pgpass``)."""
    try:
        parts = urlsplit(str(text))
    except ValueError:
        return "postgresql://<unparseable location>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k != "password"], quote_via=quote, safe="/")
    return _unsplit(parts._replace(netloc=netloc, query=query))


def _unsplit(parts: SplitResult) -> str:
    """``urlunsplit``, keeping the ``//`` of a location without host or user
    (``postgresql:///rag``: the host from PGHOST or the default socket), which it drops for
    schemes it does not know, leaving ``postgresql:/rag``, which libpq refuses."""
    text = urlunsplit(parts)
    if not parts.netloc and not text.startswith(f"{parts.scheme}://"):
        text = f"{parts.scheme}://" + text[len(parts.scheme) + 1:]
    return text
