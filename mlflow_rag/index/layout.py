"""The FAISS file layouts the store writes, checked before FAISS reads a byte.

FAISS allocates what a file's length fields claim before it reads the data behind them (a
vector's ``resize(n)`` precedes its read, and it only refuses claims over 1 TB), so a
hash-consistent file with one patched length made a process reach 2.9-3.9 GB before FAISS
noticed the file was short. This module walks the four layouts the store writes — flat
(``IxM2`` > ``IxFI``), HNSW (``IxM2`` > ``IHNf`` > ``IxFI``), IVF (``IwFl`` > ``IxFI`` +
``ilar``) and IVF-PQ (``IwPQ`` > ``IxFI`` + product quantizer + ``ilar``) — reading only
headers and length fields, and requires every count to agree with
the manifest (vectors, dimension, lists) and every length to fit in the bytes that are left,
ending exactly at the end of the file. What FAISS then allocates is bounded by the file's size.

Layouts as written by ``faiss/impl/index_write.cpp`` (stable since FAISS 1.7): an index
header is fourcc, ``d`` (int32), ``ntotal`` (int64), two int64 dummies, ``is_trained`` (1
byte), ``metric_type`` (int32) and, for metrics above 1, ``metric_arg`` (float32); a vector is
its element count (uint64) and the elements; a flat index's codes are a count of 4-byte groups.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow_rag.errors import IndexCorrupt

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes

METRIC_INNER_PRODUCT = 0
HNSW_TRAILER_INTS = 5  # entry_point, max_level, efConstruction, efSearch, a deprecated int
NO_DIRECT_MAP = 0  # FAISS DirectMap::NoMap


@dataclass
class Layout:
    """Where each count and length field of a checked file is: name -> (offset, bytes)."""

    fields: dict[str, tuple[int, int]] = field(default_factory=dict)


class _Walker:
    def __init__(self, read_at: ReadAt, size: int, name: str) -> None:
        self.read_at = read_at
        self.size = size
        self.name = name
        self.pos = 0
        self.layout = Layout()

    def fail(self, problem: str) -> IndexCorrupt:
        return IndexCorrupt(f"{self.name}: {problem}")

    def take(self, count: int, what: str) -> bytes:
        left = self.size - self.pos
        if count > left:
            raise self.fail(f"{what} needs {count:,} bytes at offset {self.pos:,}; the file "
                            f"has {left:,} left")
        data = self.read_at(self.pos, count)
        if len(data) != count:
            raise self.fail(f"short read of {what} at offset {self.pos:,}")
        self.pos += count
        return data

    def skip(self, count: int, what: str) -> None:
        left = self.size - self.pos
        if count > left:
            raise self.fail(f"{what} claims {count:,} bytes at offset {self.pos:,}; the file "
                            f"has {left:,} left")
        self.pos += count

    def number(self, fmt: str, what: str) -> int:
        width = struct.calcsize(fmt)
        self.layout.fields.setdefault(what, (self.pos, width))
        (value,) = struct.unpack("<" + fmt, self.take(width, what))
        return int(value)

    def fourcc(self, expected: str, what: str) -> None:
        got = self.take(4, what)
        if got != expected.encode():
            raise self.fail(f"{what} is {got!r}, expected {expected!r}")

    def header(self, fourcc: str, what: str, *, dimension: int, count: int) -> None:
        self.fourcc(fourcc, f"{what} type")
        d = self.number("i", f"{what} d")
        ntotal = self.number("q", f"{what} ntotal")
        if d != dimension or ntotal != count:
            raise self.fail(f"{what} holds {ntotal:,} vectors of dimension {d}; the manifest "
                            f"says {count:,} of dimension {dimension}")
        self.skip(16, f"{what} header")  # two dummies
        self.skip(1, f"{what} is_trained")
        metric = self.number("i", f"{what} metric")
        if metric != METRIC_INNER_PRODUCT:
            raise self.fail(f"{what} uses metric {metric}, not inner product")

    def vector(self, item: int, what: str, *, expected: int | None = None) -> int:
        """A length-prefixed vector of ``item``-byte elements, skipped; returns its length."""
        count = self.number("Q", f"{what} length")
        if expected is not None and count != expected:
            raise self.fail(f"{what} has {count:,} elements, expected {expected:,}")
        self.skip(count * item, what)
        return count

    def flat(self, what: str, *, dimension: int, count: int) -> None:
        self.header("IxFI", what, dimension=dimension, count=count)
        groups = self.number("Q", f"{what} codes length")  # in 4-byte groups
        if groups != count * dimension:
            raise self.fail(f"{what} codes hold {groups * 4:,} bytes, expected "
                            f"{count * dimension * 4:,} ({count:,} x {dimension} floats)")
        self.skip(groups * 4, f"{what} codes")

    def end(self) -> None:
        if self.pos != self.size:
            raise self.fail(f"{self.size - self.pos:,} unexpected bytes after offset {self.pos:,}")


def check_index_file(
    read_at: ReadAt, size: int, *, kind: str, dimension: int, count: int,
    nlist: int | None = None, pq_m: int | None = None, name: str = "index file",
) -> Layout:
    """Refuse (:class:`IndexCorrupt`) an index file whose layout or counts are not what the
    store wrote for ``count`` vectors of ``dimension`` (and ``nlist`` lists for IVF, and
    ``pq_m`` one-byte codes per vector for IVF-PQ)."""
    walk = _Walker(read_at, size, name)
    if kind == "flat":
        walk.header("IxM2", "id map", dimension=dimension, count=count)
        walk.flat("flat index", dimension=dimension, count=count)
        walk.vector(8, "id map ids", expected=count)
    elif kind == "hnsw":
        walk.header("IxM2", "id map", dimension=dimension, count=count)
        walk.header("IHNf", "hnsw", dimension=dimension, count=count)
        walk.vector(8, "hnsw assign_probas")
        walk.vector(4, "hnsw cum_nneighbor_per_level")
        walk.vector(4, "hnsw levels", expected=count)
        offsets = walk.vector(8, "hnsw offsets", expected=count + 1)
        last = struct.unpack("<Q", read_at(walk.pos - 8, 8))[0] if offsets else 0
        walk.vector(4, "hnsw neighbors", expected=int(last))
        walk.skip(4 * HNSW_TRAILER_INTS, "hnsw parameters")
        walk.flat("hnsw storage", dimension=dimension, count=count)
        walk.vector(8, "id map ids", expected=count)
    elif kind == "ivf":
        _check_ivf(walk, dimension=dimension, count=count, nlist=nlist)
    elif kind == "ivfpq":
        _check_ivf(walk, dimension=dimension, count=count, nlist=nlist, pq_m=pq_m or 0)
    else:
        raise IndexCorrupt(f"{name}: unknown index kind {kind!r}")
    walk.end()
    return walk.layout


def _check_ivf(
    walk: _Walker, *, dimension: int, count: int, nlist: int | None, pq_m: int | None = None
) -> None:
    walk.header("IwFl" if pq_m is None else "IwPQ", "ivf", dimension=dimension, count=count)
    lists = walk.number("Q", "ivf nlist")
    if lists < 1 or (nlist is not None and lists != nlist):
        raise walk.fail(f"ivf has {lists:,} lists; the manifest says {nlist}")
    walk.skip(8, "ivf nprobe")
    walk.flat("ivf quantizer", dimension=dimension, count=lists)
    direct_map = walk.number("B", "ivf direct map type")
    if direct_map != NO_DIRECT_MAP:  # the store never keeps one (ids live in the lists)
        raise walk.fail(f"ivf direct map type is {direct_map}, expected {NO_DIRECT_MAP} (none)")
    walk.vector(8, "ivf direct map", expected=0)
    code_bytes = dimension * 4
    if pq_m is not None:
        code_bytes = _check_pq(walk, dimension=dimension, m=pq_m)
    walk.fourcc("ilar", "ivf inverted lists type")
    if walk.number("Q", "inverted lists nlist") != lists:
        raise walk.fail("the inverted lists and the ivf header disagree on the number of lists")
    code_size = walk.number("Q", "inverted lists code_size")
    if code_size != code_bytes:
        raise walk.fail(f"inverted lists code_size is {code_size}, expected {code_bytes}")
    list_type = walk.take(4, "inverted lists sizes type")
    sizes_at = walk.pos
    if list_type == b"full":
        walk.vector(8, "inverted lists sizes", expected=lists)
        raw = walk.read_at(sizes_at + 8, lists * 8)
        sizes = list(struct.unpack(f"<{lists}Q", raw))
    elif list_type == b"sprs":
        pairs = walk.vector(8, "inverted lists sparse sizes")
        if pairs % 2:
            raise walk.fail("inverted lists sparse sizes have an odd length")
        raw = walk.read_at(sizes_at + 8, pairs * 8)
        values = struct.unpack(f"<{pairs}Q", raw)
        if any(i >= lists for i in values[0::2]):
            raise walk.fail("inverted lists sparse sizes name a list that does not exist")
        sizes = list(values[1::2])
    else:
        raise walk.fail(f"inverted lists sizes type {list_type!r} is unknown")
    first = sizes_at + 8 + (8 if list_type == b"sprs" else 0)
    walk.layout.fields["inverted lists first size"] = (first, 8)
    if sum(sizes) != count:
        raise walk.fail(f"inverted lists hold {sum(sizes):,} vectors; the manifest says {count:,}")
    walk.skip(count * (code_size + 8), "inverted lists codes and ids")


def _check_pq(walk: _Walker, *, dimension: int, m: int) -> int:
    """IVF-PQ's own fields (``by_residual``, ``code_size``, the product quantizer's d, M,
    nbits and centroids) for ``m`` 8-bit codes; returns the code size (bytes per vector)."""
    walk.skip(1, "ivfpq by_residual")
    code_size = walk.number("Q", "ivfpq code_size")
    d, subs, nbits = (walk.number("Q", f"pq {what}") for what in ("d", "M", "nbits"))
    if (d, subs, nbits, code_size) != (dimension, m, 8, m):
        raise walk.fail(f"product quantizer is d={d} M={subs} nbits={nbits} code_size="
                        f"{code_size}; the manifest says d={dimension} M={m} nbits=8")
    walk.vector(4, "pq centroids", expected=dimension * 256)
    return code_size
