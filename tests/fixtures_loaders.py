"""Helpers for the loader tests: real PDFs (fpdf2 + pypdf), a real local HTTP server, shared data.

Imported by tests/test_loaders.py, tests/test_web_loader.py and tests/test_legacy.py.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- shared data


def shared_data_dir() -> Path:
    """``$MLFLOW_RAG_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file of the shared data, or skip the test saying where it was looked for."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (set MLFLOW_RAG_SHARED_DATA)")
    return path


# --------------------------------------------------------------------------- PDFs


def make_pdf(pages: list[str], *, title: str | None = None) -> bytes:
    """A real PDF with one page per string (fpdf2, core Helvetica: latin-1 text only)."""
    from fpdf import FPDF

    pdf = FPDF()
    if title is not None:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, *, user_password: str, owner_password: str = "owner") -> bytes:
    """``data`` re-written by pypdf with standard encryption."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password=owner_password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def bomb_pdf(decompressed_bytes: int) -> bytes:
    """A small PDF whose page content stream inflates to ``decompressed_bytes`` bytes."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import EncodedStreamObject, NameObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["seed"]))))
    payload = b"BT /F1 12 Tf 72 720 Td (" + b"A" * decompressed_bytes + b") Tj ET"
    stream = EncodedStreamObject()
    stream._data = zlib.compress(payload, 9)
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    writer.pages[0][NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --------------------------------------------------------------------------- HTTP server


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/html"})
    body: bytes | Callable[[], Iterator[bytes]] = b""


@contextmanager
def http_server(routes: dict[str, Reply]) -> Iterator[str]:
    """A real threaded HTTP server on 127.0.0.1 (a free port); yields its base URL.

    A callable body is streamed chunk by chunk without a Content-Length, so the client only
    learns the size by reading. Requests for unknown paths get 404.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = routes.get(self.path, Reply(404, {"Content-Type": "text/plain"}, b"nope"))
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if callable(reply.body):
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in reply.body():
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: that is what the size-limit test wants
                return
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # A short poll interval only makes shutdown() return quickly; requests are not polled.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
