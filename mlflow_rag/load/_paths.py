"""Turn a file / folder / glob source into the files to read, refusing the unsafe ones.

Every candidate is checked before it is opened: a path that escapes the source root (through
``..`` or a symlink), a name with a NUL byte, a broken symlink or something that is not a
regular file becomes a LoadFailure and is never read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Collection, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlflow_rag.load._common import regular_file_problem
from mlflow_rag.types import LoadFailure

_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class FoundFile:
    """A file cleared for reading.

    ``real_path`` is the resolved path that is opened (symlinks followed and checked);
    ``source_path`` is what the user recognises (their root joined with ``doc_id``);
    ``doc_id`` is the posix path relative to the root: the stable document id.
    """

    real_path: Path
    source_path: str
    doc_id: str


def has_glob_magic(source: str) -> bool:
    return any(c in _MAGIC for c in source)


def glob_root(pattern: str) -> str:
    """The directory part of ``pattern`` before its first component with a wildcard."""
    parts = Path(pattern).parts
    literal: list[str] = []
    for part in parts[:-1]:
        if has_glob_magic(part):
            break
        literal.append(part)
    return str(Path(*literal)) if literal else "."


def _printable(path: str) -> str:
    return path.replace("\x00", "\\x00")


def _is_within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_candidate(candidate: str, root: str, root_real: str) -> FoundFile | LoadFailure:
    """Check one path found under ``root`` (as given) whose real root is ``root_real``."""
    rel = os.path.relpath(candidate, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return LoadFailure(candidate, f"path escapes the source root {root!r}; not read")
    real = os.path.realpath(candidate)
    if not _is_within(real, root_real):
        kind = "symlink points" if os.path.islink(candidate) else "path resolves"
        return LoadFailure(candidate, f"{kind} outside the source folder {root!r} (to {real!r}); not read")
    if os.path.islink(candidate) and not os.path.exists(real):
        return LoadFailure(candidate, "broken symlink; not read")
    problem = regular_file_problem(Path(real))
    if problem is not None:
        return LoadFailure(candidate, problem)
    return FoundFile(Path(real), candidate, PurePosixPath(*Path(rel).parts).as_posix())


NO_EXTENSION = "(no extension)"


def _count_skipped(skipped: MutableMapping[str, int] | None, name: str) -> None:
    if skipped is not None:
        key = Path(name).suffix.lower() or NO_EXTENSION
        skipped[key] = skipped.get(key, 0) + 1


def iter_source_files(
    source: str, *, extensions: Collection[str], skipped: MutableMapping[str, int] | None = None,
) -> Iterator[FoundFile | LoadFailure]:
    """Files of ``source`` in a stable order (walk order, names sorted per folder).

    - a file: that file, whatever its extension (the caller named it); id = its name;
    - a folder: every file below it whose lower-cased suffix is in ``extensions``, recursively,
      skipping hidden names (``.git``, ``.DS_Store``) and not following symlinked folders
      (a symlinked folder pointing outside the root is reported);
    - a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): matches with a listed suffix;
      ids are relative to the pattern's literal directory prefix.

    Files of a folder or glob left out for their extension are counted in ``skipped`` (by
    lower-cased extension), so the caller can say what it did not load; hidden ones are not.
    """
    if "\x00" in source:
        yield LoadFailure(_printable(source), "path contains a NUL byte; not read")
        return
    if has_glob_magic(source):
        yield from _iter_glob(source, extensions, skipped)
        return
    path = Path(source)
    if path.is_dir():
        yield from _iter_folder(source, extensions, skipped)
        return
    if not path.exists() and not path.is_symlink():
        yield LoadFailure(source, "no such file or directory")
        return
    if path.is_symlink() and not path.exists():
        yield LoadFailure(source, "broken symlink; not read")
        return
    problem = regular_file_problem(path)
    if problem is not None:
        yield LoadFailure(source, problem)
        return
    yield FoundFile(Path(os.path.realpath(source)), source, path.name)


def _iter_glob(
    pattern: str, extensions: Collection[str], skipped: MutableMapping[str, int] | None = None,
) -> Iterator[FoundFile | LoadFailure]:
    root = glob_root(pattern)
    if not os.path.isdir(root):
        yield LoadFailure(pattern, f"no such folder {root!r} for the pattern")
        return
    root_real = os.path.realpath(root)
    # The match list holds only names (small), sorted so ids come out in a stable order.
    matches = sorted(glob.iglob(pattern, recursive=True))
    for match in matches:
        if os.path.isdir(match):
            continue
        if Path(match).suffix.lower() not in extensions:
            _count_skipped(skipped, match)
            continue
        yield _check_candidate(match, root, root_real)


def _iter_folder(
    root: str, extensions: Collection[str], skipped: MutableMapping[str, int] | None = None,
) -> Iterator[FoundFile | LoadFailure]:
    root_real = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        kept = []
        for name in dirnames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                # Not followed: inside the root it is reachable by its real path (and following
                # could loop); outside the root it is exactly what must not be read.
                if not _is_within(os.path.realpath(full), root_real):
                    yield LoadFailure(
                        full,
                        f"symlinked folder points outside the source folder {root!r}; not read",
                    )
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() not in extensions:
                _count_skipped(skipped, name)
                continue
            yield _check_candidate(os.path.join(dirpath, name), root, root_real)
