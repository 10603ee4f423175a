"""WebLoader against a real http.server on 127.0.0.1, plus its pure parts (address policy,
HTML to text). No test waits on a clock except the timeout test, which waits for the timeout.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from mlflow_rag.errors import InvalidInput
from mlflow_rag.load import WebLoader
from mlflow_rag.load import web as web_module
from mlflow_rag.load.web import address_refusal, html_to_text
from mlflow_rag.types import LoadFailure, SourceDocument
from tests.fixtures_loaders import Reply, http_server

PAGE = b"""<!DOCTYPE html>
<html><head><title>  The  Page </title>
<style>body { color: red }</style><script>var secret = "drop me";</script></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Main heading</h1>
<p>First   paragraph with <b>bold</b> and
<a href="/x">a link</a>.</p>
<h2>Sub heading</h2>
<ul><li>one</li><li>two</li></ul>
<pre>  keep
    indentation</pre>
<p>Caf&eacute; &amp; more<br>next line</p>
<script>console.log("drop me too")</script>
</body></html>"""

PAGE_TEXT = (
    "# Main heading\n\n"
    "First paragraph with bold and a link.\n\n"
    "## Sub heading\n\n"
    "- one\n"
    "- two\n\n"
    "  keep\n"
    "    indentation\n\n"
    "Café & more\n"
    "next line"
)


def html(body: bytes, content_type: str = "text/html; charset=utf-8") -> Reply:
    return Reply(200, {"Content-Type": content_type}, body)


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status, {"Location": location, "Content-Type": "text/plain"}, b"")


def fetch(loader: WebLoader, url: str) -> SourceDocument | LoadFailure:
    items = list(loader.load(url))
    assert len(items) == 1
    return items[0]


def document(loader: WebLoader, url: str) -> SourceDocument:
    item = fetch(loader, url)
    assert isinstance(item, SourceDocument), item
    return item


def failure(loader: WebLoader, url: str) -> str:
    item = fetch(loader, url)
    assert isinstance(item, LoadFailure), item
    assert item.source_path == url
    return item.reason


LOCAL = WebLoader(allow_private=True, timeout=5.0)


# --------------------------------------------------------------------------- pages


def test_html_page_becomes_markdown_style_text_with_the_title_in_metadata() -> None:
    with http_server({"/page": html(PAGE)}) as base:
        doc = document(LOCAL, base + "/page#section")
    assert doc.text == PAGE_TEXT
    assert "drop me" not in doc.text and "Home" not in doc.text and "color" not in doc.text
    assert doc.id == base + "/page" and doc.source_type == "web"
    assert doc.source_path == base + "/page#section"
    assert doc.metadata["title"] == "The Page"
    assert doc.metadata["encoding"] == "utf-8" and doc.metadata["file_size"] == len(PAGE)
    assert doc.metadata["loader"] == "web" and doc.metadata["status_code"] == 200
    assert doc.metadata["redirects"] == 0


def test_plain_text_is_accepted_as_it_is() -> None:
    body = b"Just text.\n\n  Indented line.\n"
    with http_server({"/t": html(body, "text/plain")}) as base:
        doc = document(LOCAL, base + "/t")
    assert doc.text == body.decode() and "title" not in doc.metadata


def test_declared_charset_is_used_for_decoding() -> None:
    body = "<p>naïve – €</p>".encode("cp1252")
    with http_server({"/w": html(body, "text/html; charset=windows-1252")}) as base:
        doc = document(LOCAL, base + "/w")
    assert doc.text == "naïve – €" and doc.metadata["encoding"] == "windows-1252"


def test_meta_charset_is_used_when_the_header_has_none() -> None:
    body = '<html><head><meta charset="iso-8859-1"></head><p>caf\xe9</p></html>'.encode("latin-1")
    with http_server({"/m": html(body, "text/html")}) as base:
        doc = document(LOCAL, base + "/m")
    assert doc.text == "café"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", "application/pdf", ""])
def test_binary_content_types_are_refused(content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with http_server({"/b": Reply(200, headers, b"\x89PNG\r\n\x1a\n")}) as base:
        reason = failure(LOCAL, base + "/b")
    assert "is not supported; choose from" in reason and "'text/html'" in reason


def test_404_is_reported_with_the_status() -> None:
    with http_server({}) as base:
        reason = failure(LOCAL, base + "/missing")
    assert reason == f"HTTP 404 Not Found from {base}/missing"


# --------------------------------------------------------------------------- size and time


def test_body_over_max_bytes_is_refused_while_streaming() -> None:
    def endless() -> Iterator[bytes]:
        for _ in range(200):  # 12.8 MB if nobody stopped reading; no Content-Length
            yield b"<p>" + b"x" * 65_530 + b"</p>"

    loader = WebLoader(allow_private=True, max_bytes=100_000, timeout=5.0)
    with http_server({"/huge": Reply(200, {"Content-Type": "text/html"}, endless)}) as base:
        reason = failure(loader, base + "/huge")
    assert reason == "body is over max_bytes=100000; stopped reading"


def test_declared_content_length_over_max_bytes_is_refused_unread() -> None:
    loader = WebLoader(allow_private=True, max_bytes=1000, timeout=5.0)
    with http_server({"/big": html(b"x" * 5000)}) as base:
        reason = failure(loader, base + "/big")
    assert reason == "Content-Length 5000 is over max_bytes=1000; not read"


def test_server_that_stalls_is_reported_after_the_timeout() -> None:
    release = threading.Event()

    def stall() -> Iterator[bytes]:
        release.wait(10)
        yield b"too late"

    loader = WebLoader(allow_private=True, timeout=0.3)
    try:
        with http_server({"/slow": Reply(200, {"Content-Type": "text/plain"}, stall)}) as base:
            reason = failure(loader, base + "/slow")
    finally:
        release.set()
    assert "timed out" in reason


# --------------------------------------------------------------------------- redirects


def test_redirects_are_followed_and_the_final_url_is_the_id() -> None:
    routes = {
        "/old": redirect("/older", 301),
        "/older": redirect("/new"),
        "/new": html(b"<h1>New</h1><p>moved here</p>"),
    }
    with http_server(routes) as base:
        doc = document(LOCAL, base + "/old")
    assert doc.id == base + "/new" and doc.metadata["url"] == base + "/new"
    assert doc.metadata["requested_url"] == base + "/old" and doc.metadata["redirects"] == 2
    assert doc.text == "# New\n\nmoved here"


def test_redirect_loop_stops_after_max_redirects() -> None:
    routes = {"/a": redirect("/b"), "/b": redirect("/a")}
    with http_server(routes) as base:
        reason = failure(LOCAL, base + "/a")
    assert reason == "more than max_redirects=5 redirects"


def test_redirect_to_a_host_outside_allowed_hosts_is_refused_at_that_hop() -> None:
    loader = WebLoader(allow_private=True, allowed_hosts=["127.0.0.1"], timeout=5.0)
    with http_server({"/go": html(b"")}) as base:
        port = base.rsplit(":", 1)[1]
        with http_server({"/r": redirect(f"http://localhost:{port}/go")}) as base2:
            reason = failure(loader, base2 + "/r")
    assert reason == "refused: host 'localhost' is not in allowed_hosts ['127.0.0.1']"


def test_redirect_to_a_private_address_is_refused_at_that_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The test server is on loopback, so the policy is patched to treat exactly 127.0.0.1 as
    # public; the redirect target (the cloud metadata address) is judged by the real policy.
    real = web_module.address_refusal

    def loopback_is_public(ip: web_module.IPAddress) -> str | None:
        return None if str(ip) == "127.0.0.1" else real(ip)

    monkeypatch.setattr(web_module, "address_refusal", loopback_is_public)
    loader = WebLoader(allow_private=False, timeout=5.0)
    target = "http://169.254.169.254/latest/meta-data/"
    with http_server({"/r": redirect(target), "/ok": html(b"<p>public page</p>")}) as base:
        assert document(loader, base + "/ok").text == "public page"
        reason = failure(loader, base + "/r")
    assert reason == (
        "refused: host '169.254.169.254' resolves to link-local address 169.254.169.254 (allow_private=False)"
    )


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"])
def test_loopback_and_unspecified_addresses_are_refused_by_default(host: str) -> None:
    with http_server({"/": html(b"<p>internal</p>")}) as base:
        port = base.rsplit(":", 1)[1]
        reason = failure(WebLoader(timeout=5.0), f"http://{host}:{port}/")
    assert reason.startswith("refused: host ") and "(allow_private=False)" in reason
    assert "loopback" in reason or "unspecified" in reason


@pytest.mark.parametrize(
    "url", ["ftp://example.org/file.txt", "file:///etc/passwd", "gopher://x/", "javascript:x"]
)
def test_non_http_schemes_are_refused(url: str) -> None:
    reason = failure(WebLoader(), url)
    assert reason.startswith("refused: ") and ("scheme" in reason or "invalid URL" in reason)


def test_unresolvable_host_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    reason = failure(WebLoader(), "https://no-such-host.example/")
    assert reason.startswith("refused: cannot resolve host 'no-such-host.example'")


def test_host_resolving_to_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS answers mixing a public and a private address: one private answer is enough.
    def mixed(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    reason = failure(WebLoader(), "http://mixed.example/")
    assert reason == (
        "refused: host 'mixed.example' resolves to private address 10.1.2.3 (allow_private=False)"
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_address_policy_table(address: str, expected: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == expected


def test_shared_address_space_is_refused_too() -> None:
    assert address_refusal(ipaddress.ip_address("100.64.0.1")) is not None


@pytest.mark.parametrize(
    "options",
    [{"max_bytes": 0}, {"timeout": -1}, {"max_redirects": -1}, {"allowed_hosts": "example.org"}],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        WebLoader(**options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- HTML to text


def test_html_to_text_drops_non_content_and_keeps_heading_levels() -> None:
    text, title = html_to_text(
        "<html><head><title>T</title></head><body>"
        "<svg><title>icon</title></svg><noscript>enable js</noscript>"
        "<h3>Three</h3>text<h6>Six</h6><table><tr><td>a</td><td>b</td></tr></table>"
        "</body></html>"
    )
    assert title == "T"
    assert text == "### Three\n\ntext\n\n###### Six\n\na | b"


def test_html_to_text_without_title_or_body_tags() -> None:
    assert html_to_text("plain <i>inline</i>   words") == ("plain inline words", None)


def test_redirect_with_an_invalid_location_is_refused() -> None:
    with http_server({"/r": redirect("http://[not-an-address/")}) as base:
        reason = failure(LOCAL, base + "/r")
    assert reason.startswith("refused: ")
