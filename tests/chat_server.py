"""A real OpenAI-compatible chat completions server on 127.0.0.1, for tests of answering.

    with ChatServer() as server:
        server.fail_next(1, status=429, retry_after="0")   # scripted failures
        server.always_fail(500)                            # every request fails
        server.delay = 2.0                                 # slow answers
        server.reply = lambda body: '{"result": "yes"}'    # a fixed answer (an LLM judge's)

It speaks ``POST /v1/chat/completions`` (``model``, ``messages``, ``max_tokens``) and answers
with the first sentence of the first passage of the user message, cited by the passage's id
(``[id]`` at the start of a passage line, as the default prompt writes it). ``usage`` counts
words. Error bodies are shaped ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PASSAGE = re.compile(r"^\[([^\]]+)\]\s*(.*)$", re.MULTILINE)


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


@dataclass
class _Failure:
    status: int
    retry_after: str | None = None


class ChatServer:
    def __init__(self, *, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.delay = 0.0
        # A reply of one's own for every request (given the request body), else answer_for.
        self.reply: Callable[[dict[str, Any]], str] | None = None
        self._failures: list[_Failure] = []
        self._always: _Failure | None = None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ChatServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def fail_next(self, count: int, *, status: int, retry_after: str | None = None) -> None:
        with self._lock:
            self._failures.extend(_Failure(status, retry_after) for _ in range(count))

    def always_fail(self, status: int) -> None:
        self._always = _Failure(status)

    def next_failure(self) -> _Failure | None:
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
        return self._always

    @staticmethod
    def answer_for(prompt: str) -> str:
        found = _PASSAGE.search(prompt)
        if not found:
            return "The passages do not say."
        chunk_id, text = found.groups()
        sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
        return f"{sentence} [{chunk_id}]"


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.server.app.statuses.append(status)  # type: ignore[attr-defined]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client timed out
            self.wfile.write(data)

    def do_POST(self) -> None:
        app: ChatServer = self.server.app  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        app.requests.append(body)
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                       "code": None}})
            return
        if self.headers.get("Authorization") != f"Bearer {app.api_key}":
            self._send(401, {"error": {"message": "bad key", "type": "auth", "code": None}})
            return
        failure = app.next_failure()
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            self._send(failure.status, {"error": {"message": "scripted failure",
                                                  "type": "server_error", "code": None}}, headers)
            return
        if app.delay:
            time.sleep(app.delay)
        messages = body.get("messages") or []
        prompt = messages[-1]["content"] if messages else ""
        text = app.reply(body) if app.reply else ChatServer.answer_for(prompt)
        prompt_tokens = sum(_words(m.get("content") or "") for m in messages)
        self._send(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(text),
                      "total_tokens": prompt_tokens + _words(text)},
        })
