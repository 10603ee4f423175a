"""Named BEIR datasets (``beir:<name>``): the official zip, downloaded once (streamed, size
limits, timeouts), checked (a zip with the BEIR layout, no unsafe member, no zip bomb),
extracted and cached under ``<cache>/beir/<name>/``, where ``<cache>`` is the ``cache_dir``
argument, else ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mlflow_rag.errors import LoaderError

BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
#: The datasets the BEIR server hosts publicly (named in the error when a download is a 404).
BEIR_PUBLIC_DATASETS = (
    "arguana",
    "climate-fever",
    "cqadupstack",
    "dbpedia-entity",
    "fever",
    "fiqa",
    "hotpotqa",
    "msmarco",
    "nfcorpus",
    "nq",
    "quora",
    "scidocs",
    "scifact",
    "trec-covid",
    "webis-touche2020",
)
ENV_CACHE_DIR = "MLFLOW_RAG_CACHE_DIR"
ENV_BEIR_URL = "MLFLOW_RAG_BEIR_URL"
#: The largest BEIR zips (msmarco, climate-fever) are 1-2 GB; more than this is not BEIR.
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3
#: A zip's declared uncompressed size is checked before extraction (zip bombs). Text inflates
#: a few times, so the largest BEIR zips stay well inside this.
DEFAULT_MAX_EXTRACTED_BYTES = 8 * 1024**3
#: Text compresses well under 100x; a zip that claims more is a bomb. Archives inflating to
#: less than _RATIO_FLOOR are small enough not to matter.
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 64 * 1024**2
#: BEIR zips hold a handful of files (cqadupstack, the largest layout, under a hundred).
DEFAULT_MAX_MEMBERS = 1_000

_MARKER = ".mlflow-rag-download.json"  # written last: its presence means the cache is complete


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlflow-rag"


def cached_beir_folder(
    name: str,
    url: str,
    *,
    cache_root: Path,
    timeout: float,
    max_download_bytes: int,
    max_extracted_bytes: int,
    max_members: int,
    progress: bool,
) -> Path:
    beir_root = cache_root / "beir"
    final = beir_root / name
    if (final / _MARKER).is_file():
        return final
    beir_root.mkdir(parents=True, exist_ok=True)
    # Download and extract inside the cache directory, then rename: the rename is atomic on
    # one filesystem, so an interrupted download never leaves a folder that looks complete.
    with tempfile.TemporaryDirectory(dir=beir_root, prefix=f".{name}-") as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        sha256, size = _download(
            url, zip_path, timeout=timeout, max_bytes=max_download_bytes, progress=progress
        )
        staging = Path(tmp) / name
        _extract_beir_zip(zip_path, staging, max_extracted_bytes=max_extracted_bytes,
                          max_members=max_members, url=url)
        zip_path.unlink()
        marker = {
            "url": url,
            "sha256": sha256,
            "bytes": size,
            "downloaded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        (staging / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # a leftover without a marker: an earlier run died mid-way
            shutil.rmtree(final)
        try:
            staging.rename(final)
        except OSError:
            # Another process finished the same download first; its copy is as good as ours.
            if not (final / _MARKER).is_file():
                raise
    return final


def _download(url: str, dest: Path, *, timeout: float, max_bytes: int, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return (sha256, size). Raise LoaderError on any failure."""
    import httpx  # heavy-ish import, needed only when a download actually happens
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = 0
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code == 404:
                raise LoaderError(
                    f"BEIR dataset not found: GET {url} returned HTTP 404 (the public BEIR "
                    f"datasets are {list(BEIR_PUBLIC_DATASETS)})"
                )
            if response.status_code != 200:
                raise LoaderError(f"download failed: GET {url} returned HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            if total is not None and total > max_bytes:
                raise LoaderError(
                    f"refusing {url}: {total} bytes is over the limit of {max_bytes} bytes "
                    "(raise max_download_bytes if this is expected)"
                )
            with (
                dest.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None if progress else True,  # None: only on a terminal
                ) as bar,
            ):
                for chunk in response.iter_bytes(chunk_size=1 << 20):
                    size += len(chunk)
                    if size > max_bytes:  # the server may not send (or may lie about) a length
                        raise LoaderError(f"refusing {url}: more than the limit of {max_bytes} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as exc:
        raise LoaderError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # writing the zip: disk full, quota; the caller removes the part
        raise LoaderError(
            f"cannot save the download of {url}: {exc.strerror or exc} (disk full?); nothing was cached"
        ) from exc
    return digest.hexdigest(), size


def _extract_beir_zip(
    zip_path: Path, dest: Path, *, max_extracted_bytes: int, max_members: int, url: str
) -> None:
    """Extract the BEIR folder inside ``zip_path`` to ``dest`` (its top-level dir stripped)."""
    if not zipfile.is_zipfile(zip_path):
        raise LoaderError(f"{url} is not a zip archive")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if len(members) > max_members:
                raise LoaderError(
                    f"refusing {url}: it has {len(members)} entries; the limit is "
                    f"max_members={max_members} (a BEIR zip has a handful)"
                )
            for info in members:
                _check_member_is_safe(info, url=url)
            declared = sum(info.file_size for info in members)
            if declared > max_extracted_bytes:
                raise LoaderError(
                    f"refusing {url}: it would extract to {declared} bytes, over the limit of "
                    f"{max_extracted_bytes}"
                )
            size = zip_path.stat().st_size
            if declared > max(_RATIO_FLOOR, MAX_COMPRESSION_RATIO * size):
                raise LoaderError(
                    f"refusing {url}: it would extract to {declared} bytes, {declared // size} "
                    f"times its size of {size} bytes (over {MAX_COMPRESSION_RATIO}x: a zip bomb?)"
                )
            prefix = _beir_prefix([info.filename for info in members], url=url)
            dest.mkdir(parents=True)
            for info in members:
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                target = dest / info.filename[len(prefix) :]
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # ZipExtFile never yields more than the declared size and checks the CRC
                    # at the end, so a corrupt member raises BadZipFile here.
                    with archive.open(info) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                except OSError as exc:  # disk full, quota, permissions: the caller cleans up
                    raise LoaderError(
                        f"cannot extract {url}: writing {target.name}: "
                        f"{exc.strerror or exc} (disk full?); nothing was cached"
                    ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        # BadZipFile: bad CRC or structure; zlib.error: corrupt deflate data; EOFError: truncated.
        raise LoaderError(f"{url} is a corrupt zip archive: {exc}") from exc


def _check_member_is_safe(info: zipfile.ZipInfo, *, url: str) -> None:
    name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
    parts = PurePosixPath(name).parts
    is_absolute = name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if is_absolute or ".." in parts or is_link:
        raise LoaderError(
            f"refusing {url}: unsafe archive member {info.filename!r} (absolute path, '..' or symlink)"
        )


def _beir_prefix(names: list[str], *, url: str) -> str:
    """The folder ('' or '<dir>/') inside the zip that holds the BEIR layout."""
    present = set(names)
    candidates = {""} | {n.split("/", 1)[0] + "/" for n in names if "/" in n}
    for prefix in sorted(candidates):
        has_qrels = any(n.startswith(prefix + "qrels/") and n.endswith(".tsv") for n in names)
        if prefix + "corpus.jsonl" in present and prefix + "queries.jsonl" in present and has_qrels:
            return prefix
    raise LoaderError(
        f"{url} does not have the BEIR layout: expected [<dir>/]corpus.jsonl, queries.jsonl and "
        "qrels/<split>.tsv"
    )
