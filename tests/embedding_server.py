"""A real OpenAI-compatible embeddings server on 127.0.0.1, for tests of any embeddings client.

    with EmbeddingServer(api_key="test-key") as server:
        client = OpenAI(base_url=server.base_url, api_key="test-key")
        server.fail_next(2, status=429, retry_after="0")   # scripted failures
        ...
        assert len(server.embedding_requests) == 3         # request log

It speaks ``POST /v1/embeddings`` as the OpenAI API does: ``input`` as a string or a list of
strings, ``model``, ``dimensions`` (accepted only by ``text-embedding-3-*``, 400 otherwise),
``encoding_format`` ``float`` (the API default) or ``base64`` (little-endian float32, which
the official python client asks for by default), ``usage.prompt_tokens``, error bodies shaped
``{"error": {"message", "type", "code"}}``. Vectors come from :func:`fake_embedding`: feature
hashing of lower-cased words, deterministic and unit-norm, so texts sharing words are close
(lexical, not semantic, similarity). Tokens are counted as words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DEFAULT_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MAX_INPUTS = 2048
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def count_tokens(text: str) -> int:
    """The server's token count for one input: its words (at least 1)."""
    return max(1, len(words(text)))


def _hashed_vector(key: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension)


def fake_embedding(text: str, dimension: int) -> np.ndarray:
    """Unit float32 vector: the sum of one seeded random vector per word of ``text``."""
    tokens = words(text) or [text]
    total = np.zeros(dimension)
    for token in tokens:
        total += _hashed_vector(token, dimension)
    return (total / np.linalg.norm(total)).astype(np.float32)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body (None when absent or not JSON)
    status: int  # what the server answered

    @property
    def inputs(self) -> list[str]:
        value = self.body.get("input") if isinstance(self.body, dict) else None
        return [value] if isinstance(value, str) else list(value or [])


@dataclass
class Failure:
    """One scripted answer instead of embeddings."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


# What a response's data can be corrupted into (one scripted response each).
CORRUPTIONS = ("nan", "zero", "wrong_dimension", "missing_item", "reversed", "mixed_sizes")


class EmbeddingServer:
    """ThreadingHTTPServer on 127.0.0.1, port 0, serving in a daemon thread; a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        default_dimension: int = 64,
        embed: Callable[[str, int], np.ndarray] = fake_embedding,
    ) -> None:
        self.api_key = api_key
        self.default_dimension = default_dimension
        self.embed = embed
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: list[Failure] = []
        self._always: Failure | None = None
        self._corruptions: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------- lifecycle

    def __enter__(self) -> EmbeddingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as the client's ``base_url`` (or ``OPENAI_BASE_URL``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ----------------------------------------------------------------------- scripting

    def fail_next(
        self,
        count: int,
        *,
        status: int = 429,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
        message: str = "scripted failure",
    ) -> None:
        """The next ``count`` embedding requests answer ``status`` (with Retry-After if given)."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if retry_after_ms is not None:
            headers["retry-after-ms"] = retry_after_ms
        with self._lock:
            self._failures.extend(Failure(status, dict(headers), message) for _ in range(count))

    def fail_always(self, status: int | None, *, message: str = "scripted failure") -> None:
        """Every embedding request answers ``status`` (``None`` ends it)."""
        with self._lock:
            self._always = None if status is None else Failure(status, {}, message)

    def corrupt_next(self, kind: str) -> None:
        """The next successful response is corrupted: one of :data:`CORRUPTIONS`."""
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r}; choose from {list(CORRUPTIONS)}")
        with self._lock:
            self._corruptions.append(kind)

    def reset(self) -> None:
        """Forget the request log and every scripted failure or corruption."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._corruptions.clear()
            self._always = None

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/embeddings" and r.method == "POST"]

    # ----------------------------------------------------------------------- handling

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_failure(self) -> Failure | None:
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
            return self._always

    def _next_corruption(self) -> str | None:
        with self._lock:
            return self._corruptions.pop(0) if self._corruptions else None

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, extra headers, JSON body) for one request."""
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        status, extra, payload = self._answer(method, path, headers, body)
        self._record(RecordedRequest(method, path, headers, body, status))
        return status, extra, payload

    # One branch per way the real API refuses a request: a flat list is easier to compare
    # with OpenAI's documented errors than helpers would be.
    def _answer(  # noqa: C901
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        expected_auth = None if self.api_key is None else f"Bearer {self.api_key}"
        if expected_auth is not None and headers.get("authorization") != expected_auth:
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if path != "/v1/embeddings":
            return _error(404, f"Unknown URL {path}", "unknown_url", kind="invalid_request_error")
        if method != "POST":
            return _error(405, f"{method} is not allowed", "method_not_allowed")
        failure = self._next_failure()
        if failure is not None:
            body = _error_body(failure.message, failure.status, f"scripted_{failure.status}")
            return failure.status, dict(failure.headers), body
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", None)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) and t for t in inputs)
        ):
            return _error(400, "'$.input' is invalid. Please check the API reference.", None)
        if len(inputs) > MAX_INPUTS:
            return _error(400, f"'$.input' must have at most {MAX_INPUTS} items", None)
        dimension = DEFAULT_DIMENSIONS.get(model, self.default_dimension)
        if "dimensions" in body:
            requested = body["dimensions"]
            if not model.startswith("text-embedding-3"):
                return _error(400, "This model does not support specifying dimensions.", None)
            if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
                return _error(400, "'$.dimensions' must be a positive integer", None)
            dimension = requested
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _error(400, "'$.encoding_format' must be 'float' or 'base64'", None)

        vectors = [np.asarray(self.embed(text, dimension), dtype=np.float32) for text in inputs]
        indices = list(range(len(inputs)))
        corruption = self._next_corruption()
        if corruption == "nan":
            vectors[-1] = np.full(dimension, np.nan, dtype=np.float32)
        elif corruption == "zero":
            vectors[-1] = np.zeros(dimension, dtype=np.float32)
        elif corruption == "wrong_dimension":
            vectors = [np.resize(v, dimension + 1) for v in vectors]
        elif corruption == "mixed_sizes":
            vectors[-1] = np.resize(vectors[-1], dimension + 1)
        elif corruption == "missing_item":
            indices = indices[:-1]
        elif corruption == "reversed":
            indices = indices[::-1]  # right indices, list order reversed: clients must sort

        def encode(vector: np.ndarray) -> Any:
            if encoding == "base64":
                return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            return [float(x) for x in vector]

        tokens = sum(count_tokens(text) for text in inputs)
        payload = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(vectors[i])}
                for i in indices
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return 200, {}, payload


def _error_body(message: str, status: int, code: str | None = None) -> dict[str, Any]:
    kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    if 400 <= status < 500 and status not in (401, 429):
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error(
    status: int, message: str, code: str | None, *, kind: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = _error_body(message, status, code)
    if kind is not None:
        body["error"]["type"] = kind
    return status, {}, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    # One buffered write per response (flushed by the base class) and TCP_NODELAY: headers and
    # body in separate small segments meet Nagle + delayed ACK and cost ~40 ms per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server_version = "EmbeddingServer/1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        app: EmbeddingServer = self.server.app  # type: ignore[attr-defined]
        status, extra, payload = app.handle(self.command, self.path, headers, raw)
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_POST = _serve
    do_GET = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass
