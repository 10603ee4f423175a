"""Web pages over http(s), fetched defensively; HTML turned into text by ``html_text``.

Server-side request forgery is the main risk of a loader that fetches URLs it is given, so:
every hop (the first URL and each redirect) is resolved and checked before connecting, the
connection goes to the address that was checked (no second DNS lookup an attacker could
answer differently), redirects are followed by hand (at most ``max_redirects``), the body is
counted while it streams in, and the whole fetch has a deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urldefrag

from mlflow_rag.errors import InvalidInput, LoaderError
from mlflow_rag.load._common import base_metadata, check_positive
from mlflow_rag.load.html_text import html_meta_charset
from mlflow_rag.load.html_text import html_to_text as html_to_text
from mlflow_rag.types import LoadFailure, SourceDocument

if TYPE_CHECKING:
    import httpx

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
ALLOWED_SCHEMES = ("http", "https")
USER_AGENT = "mlflow-rag-loader/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(LoaderError):
    """A URL (or a redirect hop) that policy does not allow fetching."""


def address_refusal(ip: IPAddress) -> str | None:
    """Why fetching from ``ip`` is refused by default (None: a public address).

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are judged as the IPv4 address they map;
    a 6to4 address (``2002::/16``) is refused when the IPv4 address it embeds would be (a 6to4
    relay delivers ``2002:7f00:1::`` to 127.0.0.1 of the network it serves).
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:
        embedded = address_refusal(ip.sixtofour)
        if embedded is not None:
            return f"{embedded} (6to4, embeds the {embedded} address {ip.sixtofour})"
    checks = [
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    ]
    return next((name for refused, name in checks if refused), None)


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"cannot resolve host {host!r}: {exc}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        # The scope id of a link-local IPv6 address ("fe80::1%eth0") is not part of the address.
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True)
class _Target:
    """A checked hop: where to connect (a pinned IP) and what to call the host."""

    url: str  # the URL as requested (host name kept)
    connect_url: httpx.URL  # the same URL with the checked IP as host
    host: str
    host_header: str


class WebLoader:
    """Loads one web page per ``load(url)``: source_type ``"web"``, id = the final URL.

    Options (keyword-only):
        allow_private: allow loopback, private, link-local, multicast and reserved addresses
            (off by default: a URL from a user must not reach the internal network).
        max_bytes: the most body bytes read (after content decoding); beyond it the page is
            reported.
        timeout: seconds for the whole fetch, redirects included (also each network wait).
        allowed_hosts: if given, only these host names may be fetched (checked on every hop).
        max_redirects: redirects followed before giving up.

    HTML is converted with the standard library's parser: script, style, nav (and similar
    non-content elements) are dropped; headings become ``#`` lines so the Markdown chunker can
    split on them; ``<title>`` goes to ``metadata["title"]``. ``text/plain`` and Markdown are
    kept as they are; any other content type is reported.
    """

    name: str = "web"
    version: str = "1"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_bytes: int = 5_000_000,
        timeout: float = 10.0,
        allowed_hosts: Collection[str] | None = None,
        max_redirects: int = 5,
    ) -> None:
        check_positive("max_bytes", max_bytes)
        check_positive("timeout", timeout)
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or max_redirects < 0:
            raise InvalidInput(f"max_redirects must be an integer >= 0, got {max_redirects!r}")
        if isinstance(allowed_hosts, str):
            raise InvalidInput(f"allowed_hosts must be a list of host names, got {allowed_hosts!r}")
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout = float(timeout)
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        )
        self.max_redirects = max_redirects

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        yield self.fetch(source)

    def fetch(self, url: str) -> SourceDocument | LoadFailure:
        """Fetch one URL; every problem (refusal, HTTP error, limit) is a LoadFailure."""
        import httpx

        deadline = time.monotonic() + self.timeout
        try:
            return self._fetch(url, deadline)
        except Refused as exc:
            return LoadFailure(url, f"refused: {exc}")
        except httpx.TimeoutException:
            return LoadFailure(url, f"timed out (timeout={self.timeout} s)")
        except httpx.HTTPError as exc:
            return LoadFailure(url, f"HTTP request failed: {type(exc).__name__}: {exc}")
        except LoaderError as exc:
            return LoadFailure(url, str(exc))

    # ------------------------------------------------------------------ hops

    def _check_url(self, url: str) -> _Target:
        """Scheme, host allow-list and resolved addresses of one hop; raises Refused."""
        import httpx

        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise Refused(f"invalid URL {url!r}: {exc}") from None
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise Refused(f"URL scheme {parsed.scheme!r} is not allowed; choose from {list(ALLOWED_SCHEMES)}")
        host = parsed.host.lower().rstrip(".")
        if not host:
            raise Refused(f"URL {url!r} has no host")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            raise Refused(f"host {host!r} is not in allowed_hosts {sorted(self.allowed_hosts)}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = resolve_host(host, port)
        if not addresses:
            raise Refused(f"host {host!r} resolves to no address")
        if not self.allow_private:
            for address in addresses:
                reason = address_refusal(address)
                if reason is not None:
                    kind, _, note = reason.partition(" (")  # note: "6to4, embeds ...)"
                    raise Refused(
                        f"host {host!r} resolves to {kind} address {address} "
                        + (f"({note} " if note else "") + "(allow_private=False)"
                    )
        # Connect to the address just checked, so a second DNS answer cannot differ.
        connect_url = parsed.copy_with(host=str(addresses[0]))
        return _Target(url, connect_url, host, parsed.netloc.decode("ascii"))

    def _fetch(self, url: str, deadline: float) -> SourceDocument:
        import httpx

        current = url
        for hop in range(self.max_redirects + 1):
            target = self._check_url(current)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoaderError(f"timed out (timeout={self.timeout} s) after {hop} redirects")
            # One client per hop: a pooled connection is keyed by IP, so a later hop to another
            # host on the same IP could reuse a TLS session verified for the first host.
            # trust_env=False: an environment proxy would connect somewhere other than the
            # address that was checked.
            with httpx.Client(follow_redirects=False, trust_env=False, timeout=remaining) as client:
                document = self._hop(client, target, url, hop, deadline)
            if isinstance(document, SourceDocument):
                return document
            current = document
        raise LoaderError(f"more than max_redirects={self.max_redirects} redirects")

    def _hop(
        self, client: httpx.Client, target: _Target, url: str, hop: int, deadline: float
    ) -> SourceDocument | str:
        """GET one checked hop: the document, or the next URL to go to (a redirect)."""
        import httpx

        remaining = max(deadline - time.monotonic(), 0.001)
        request = client.build_request(
            "GET",
            target.connect_url,
            headers={
                "Host": target.host_header,
                "User-Agent": USER_AGENT,
                "Accept": "text/html, application/xhtml+xml, text/plain;q=0.9, */*;q=0.1",
                # only what _BoundedDecoder inflates within max_bytes (httpx would add br/zstd)
                "Accept-Encoding": "gzip, deflate",
            },
            extensions={
                "sni_hostname": target.host,
                "timeout": {k: remaining for k in ("connect", "read", "write", "pool")},
            },
        )
        response = client.send(request, stream=True)
        try:
            if response.has_redirect_location:
                location = response.headers["location"]
                try:
                    return str(httpx.URL(target.url).join(location))
                except (httpx.InvalidURL, ValueError, UnicodeError):
                    raise Refused(f"invalid redirect Location {location!r}") from None
            if response.status_code != 200:
                raise LoaderError(f"HTTP {response.status_code} {response.reason_phrase} from {target.url}")
            kind = _content_kind(response.headers.get("content-type"))
            body = self._read_body(response, deadline)
            return self._document(url, target.url, hop, response, kind, body)
        finally:
            response.close()

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise LoaderError(f"Content-Length {declared} is over max_bytes={self.max_bytes}; not read")
        # Raw bytes, inflated here: httpx inflates each network read whole, so 64 KiB of gzip
        # could become 64 MiB in memory before the size check saw any of it.
        decoder = _BoundedDecoder(response.headers.get("content-encoding", ""))
        body = bytearray()
        for chunk in response.iter_raw():
            body += decoder.decode(chunk, room=self.max_bytes + 1 - len(body))
            if len(body) > self.max_bytes:
                raise LoaderError(f"body is over max_bytes={self.max_bytes}; stopped reading")
            if time.monotonic() > deadline:
                raise LoaderError(f"timed out (timeout={self.timeout} s) reading the body")
        body += decoder.flush(room=self.max_bytes + 1 - len(body))
        if len(body) > self.max_bytes:
            raise LoaderError(f"body is over max_bytes={self.max_bytes}; stopped reading")
        return bytes(body)

    def _document(
        self,
        requested: str,
        final: str,
        redirects: int,
        response: httpx.Response,
        kind: str,
        body: bytes,
    ) -> SourceDocument:
        encoding = response.charset_encoding
        if encoding is None and kind == "html":
            encoding = html_meta_charset(body[:4096])
        text, encoding = _decode(body, encoding)
        title: str | None = None
        if kind == "html":
            text, title = html_to_text(text)
        if not text.strip():
            raise LoaderError(f"no text in the page at {final}")
        final_id = urldefrag(final)[0]
        metadata = base_metadata(
            loader=self.name, version=self.version, file_size=len(body), encoding=encoding
        )
        metadata.update(
            url=final_id,
            requested_url=requested,
            redirects=redirects,
            status_code=response.status_code,
            content_type=response.headers.get("content-type"),
        )
        if title:
            metadata["title"] = title
        return SourceDocument(
            id=final_id,
            source_path=requested,
            source_type="web",
            text=text,
            metadata=metadata,
        )


class _BoundedDecoder:
    """Inflates a ``gzip`` / ``deflate`` / identity body producing at most ``room`` bytes per
    call, so a decompression bomb costs at most max_bytes of memory."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise LoaderError(
                f"content encoding {content_encoding!r} is not supported; choose from "
                "['gzip', 'deflate', 'identity']"
            )
        self.coding = codings[0] if codings else None
        # deflate is zlib-wrapped by the standard, raw by some servers: decided at the 1st byte
        wbits = 16 + zlib.MAX_WBITS if self.coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(wbits) if self.coding else None
        self._started = False

    def decode(self, data: bytes, *, room: int) -> bytes:
        if self._inflate is None:
            return data
        if self._inflate.eof:
            return b""  # bytes after the compressed stream are ignored, as httpx does
        try:
            if not self._started and self.coding == "deflate" and data:
                self._started = True
                if data[0] & 0x0F != 8:  # not a zlib header: raw deflate
                    self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            self._started = self._started or bool(data)
            # Past ``room`` the page is refused anyway, so the input left over is not needed.
            return self._inflate.decompress(data, max(room, 1))
        except zlib.error as exc:
            raise LoaderError(f"cannot decode the {self.coding} body: {exc}") from None

    def flush(self, *, room: int) -> bytes:
        if self._inflate is None or self._inflate.eof:
            return b""
        try:
            return self._inflate.decompress(self._inflate.unconsumed_tail, max(room, 1))
        except zlib.error as exc:
            raise LoaderError(f"cannot decode the {self.coding} body: {exc}") from None


def _content_kind(content_type: str | None) -> str:
    """ "html" or "text" for the supported media types; raises LoaderError for the rest."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in HTML_TYPES:
        return "html"
    if media in TEXT_TYPES:
        return "text"
    raise LoaderError(
        f"content type {media or '(none)'!r} is not supported; choose from {sorted(HTML_TYPES + TEXT_TYPES)}"
    )


def _decode(body: bytes, declared: str | None) -> tuple[str, str]:
    """Decode with the declared charset, else UTF-8, else cp1252 (web pages lie about it)."""
    for encoding in ([declared] if declared else []) + ["utf-8"]:
        try:
            return body.decode(encoding), encoding
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace"), "cp1252"
