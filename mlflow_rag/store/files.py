"""Durable file writes: temp file -> fsync -> os.replace -> fsync(dir); hashes; a lock file.

Every failure to write a store file (disk full, file size limit, I/O error) surfaces as one
error type, :class:`StorageError`: a :class:`RagError` (the CLI prints it on one line) and an
:class:`OSError` (callers that handle I/O errors keep working), whose message names the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlflow_rag.errors import RagError, StoreBusy, UnsafePath


@dataclass(frozen=True)
class FileStamp:
    """A file's identity and contents as hashed: inode, size and times, with its sha256.

    Rewriting a file in place changes its mtime and ctime (ctime cannot be set back from user
    space), and replacing it changes the inode; equal stamps taken moments apart in one
    process therefore mean the bytes hashed are the bytes there now. Only used within one
    ``Store.open``: never persisted, so bit rot at rest is always caught by a fresh hash.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str

    @classmethod
    def of(cls, fd: int, sha256: str) -> FileStamp:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256)


class StorageError(RagError, OSError):
    """Writing a store file failed (disk full, file too large, I/O error).

    The message names the file and the cause. What was committed before stays; the failed
    step leaves nothing half-written in place of a good file.
    """

    def __init__(
        self, message: str, *, filename: str | None = None, errno: int | None = None,
        strerror: str | None = None,
    ) -> None:
        super().__init__(message)
        self.filename = filename
        self.errno = errno
        self.strerror = strerror

    def __str__(self) -> str:  # OSError would format "[Errno None] None: ..." otherwise
        return str(self.args[0]) if self.args else ""


def storage_error(path: Path | str, exc: BaseException, *, action: str = "write") -> StorageError:
    """``cannot write PATH: No space left on device`` from an OSError (or any exception)."""
    if isinstance(exc, StorageError):
        return exc
    errno = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return StorageError(f"cannot {action} {path}: {reason}", filename=str(path),
                        errno=errno if isinstance(errno, int) else None, strerror=reason)


def confined(root: Path, relative: str | Path, *, what: str = "path") -> Path:
    """``root / relative``, if it stays inside ``root`` with every symlink followed.

    The one gate for every path that comes from stored data (a model's slug in the database,
    a manifest's file names, a bundle's folders): an absolute name, ``..``, a NUL byte or a
    symlink leading out (``index -> /etc``) is :class:`UnsafePath`, before anything opens,
    hashes or writes it. A path that does not exist yet is checked as far as it resolves.
    """
    text = os.fspath(relative)
    parts = Path(text).parts
    if not text or "\x00" in text or Path(text).is_absolute() or ".." in parts:
        raise UnsafePath(f"{what} {text!r} is not a relative path inside {root}; refused")
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root / text))
    if target != base and base not in target.parents:
        raise UnsafePath(f"{what} {text!r} leads outside {root} (to {target}); refused")
    return root / text


def check_tree_confined(root: Path, folder: str, *, what: str) -> None:
    """Every file, folder and symlink under ``root / folder`` stays inside ``root``
    (symlinks are not followed while walking, each one is resolved and checked)."""
    top = root / folder
    if not top.is_symlink() and not top.exists():
        return
    confined(root, folder, what=what)
    for current, dirs, files in os.walk(top, followlinks=False):
        for name in (*dirs, *files):
            path = Path(current) / name
            if path.is_symlink():
                confined(root, path.relative_to(root), what=what)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn write; errors leave the old file
    and raise :class:`StorageError` naming ``path``."""
    _atomic_write(path, lambda fd: _write_all(fd, data))


def _atomic_write(path: Path, fill: Callable[[int], None]) -> None:
    """``fill(fd)`` writes a temporary file beside ``path``, which is synced, then renamed over
    ``path``, then its folder synced: the old file or the new one, never a torn write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(path.parent, exc, action="create") from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # os-level writes: a buffered file would raise the same error again when closed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from exc
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise storage_error(path, exc, action="sync the folder of") from exc


#: Index files are hashed in blocks of this size, one sha256 per block, so that opening a
#: store verifies every byte on all cores at once (hashlib releases the GIL while hashing).
HASH_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class WrittenFile:
    """What :func:`atomic_write_stream` wrote: its size, sha256 and per-block sha256s."""

    size: int
    sha256: str
    block_sha256: list[str]


class _HashingWriter:
    """Bytes written to ``fd`` in blocks of ``block`` bytes, each block hashed on its own
    (the block hashes of :func:`block_sha256s`) and into the whole file's sha256 as it goes.

    The block's sha256 runs on a second thread while this one hashes the whole and writes
    (hashlib releases the GIL), so the two hashes cost about one pass, and no byte is read
    back from the file."""

    def __init__(self, fd: int, block: int, pool: ThreadPoolExecutor) -> None:
        self.fd, self.pool = fd, pool
        self.buffer = bytearray(block)
        self.view = memoryview(self.buffer)
        self.fill = 0
        self.size = 0
        self.whole = hashlib.sha256()
        self.blocks: list[str] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        source = memoryview(data).cast("B")
        while len(source):
            take = min(len(source), len(self.buffer) - self.fill)
            self.view[self.fill : self.fill + take] = source[:take]
            self.fill += take
            source = source[take:]
            if self.fill == len(self.buffer):
                self.emit()

    def emit(self) -> None:
        piece = self.view[: self.fill]
        block = self.pool.submit(lambda: hashlib.sha256(piece).hexdigest())
        try:
            self.whole.update(piece)
            _write_all(self.fd, piece)
        finally:
            self.blocks.append(block.result())  # the buffer is reused only once hashed
        self.size += self.fill
        self.fill = 0


def atomic_write_stream(
    path: Path, produce: Callable[[Callable[[bytes], None]], None], *,
    block: int = HASH_BLOCK_BYTES,
) -> WrittenFile:
    """:func:`atomic_write_bytes` of what ``produce(write)`` writes, hashed on the way (the
    whole file and each ``block``), without holding the file's bytes in memory: an index is
    written by FAISS straight into it. Same guarantees and errors."""
    writers: list[_HashingWriter] = []

    def fill(fd: int) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            writer = _HashingWriter(fd, block, pool)
            writers.append(writer)
            produce(writer.write)
            if writer.fill:
                writer.emit()  # the last, shorter block

    _atomic_write(path, fill)
    writer = writers[0]
    return WrittenFile(size=writer.size, sha256=writer.whole.hexdigest(),
                       block_sha256=writer.blocks)


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha256_fd(handle.fileno())


def sha256_fd(fd: int, *, chunk_size: int = 1 << 20) -> str:
    """sha256 of the whole file open as ``fd`` (from its start; the position moves).

    Reads into one reused buffer that stays in cache while it is hashed: reading 150 MB into
    new bytes objects cost about as much again as hashing them. (Hashing through a memory
    map is no faster here, and a file truncated while mapped would kill the process.)"""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(fd, "rb", buffering=0, closefd=False) as raw:
        raw.seek(0)
        while count := raw.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()



def block_sha256s(data: bytes | bytearray | memoryview, *, block: int = HASH_BLOCK_BYTES) -> list[str]:
    """sha256 of each ``block``-byte slice of ``data`` (the last may be shorter)."""
    view = memoryview(data)
    pieces = [view[start : start + block] for start in range(0, len(view), block)]
    with ThreadPoolExecutor(max_workers=_hash_workers(len(pieces))) as pool:
        return list(pool.map(lambda piece: hashlib.sha256(piece).hexdigest(), pieces))


def block_sha256s_fd(fd: int, size: int, *, block: int = HASH_BLOCK_BYTES) -> list[str]:
    """:func:`block_sha256s` of the first ``size`` bytes of the file open as ``fd``.

    Each block is read with ``preadv`` (no shared file position, the GIL released) into a
    reused per-thread 1 MiB buffer that stays in cache while it is hashed."""
    local = threading.local()

    def one(start: int) -> str:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        digest = hashlib.sha256()
        offset, stop = start, min(size, start + block)
        while offset < stop:
            count = os.preadv(fd, [view[: min(len(buffer), stop - offset)]], offset)
            if count <= 0:
                break  # the file is shorter than ``size``: the digest will not match
            digest.update(view[:count])
            offset += count
        return digest.hexdigest()

    starts = list(range(0, size, block))
    with ThreadPoolExecutor(max_workers=_hash_workers(len(starts))) as pool:
        return list(pool.map(one, starts))


def _hash_workers(blocks: int) -> int:
    return max(1, min(blocks, os.cpu_count() or 1))


@contextlib.contextmanager
def exclusive_lock(
    path: Path, *, wait: bool = True, on_busy: Callable[[str], None] | None = None,
    record_holder: bool = False,
) -> Iterator[None]:
    """An advisory lock between processes that write the same store.

    If another process holds it, ``on_busy(holder)`` is called once (``holder`` describes
    that process, when it recorded itself) and then either this call waits for the lock or,
    with ``wait=False``, :class:`~mlflow_rag.errors.StoreBusy` is raised at once.
    ``record_holder`` writes this process id into the lock file for such messages (held
    locks only: the file's content means nothing once the lock is released)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error(path, exc, action="open the lock file") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            if on_busy is not None:
                on_busy(holder)
            if not wait:
                raise StoreBusy(
                    f"another process ({holder}) is writing to {path.parent}; try again when "
                    "it has finished (or let this command wait for it)"
                ) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        if record_holder:
            with contextlib.suppress(OSError):  # informational only
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") else "pid unknown"
