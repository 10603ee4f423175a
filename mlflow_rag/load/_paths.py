"""Turn a file / folder / glob source into the files to read, refusing the unsafe ones.

Every candidate is checked before it is opened: a path that escapes the source root (through
``..`` or a symlink), a name with a NUL byte, a broken symlink or something that is not a
regular file becomes a LoadFailure and is never read.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
from collections.abc import Collection, Iterator, MutableMapping, Sequence
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
      ids are relative to the pattern's literal directory prefix. Symlinked folders are not
      followed (they can loop: ``a -> .``); those outside the root are reported.

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
    parts = Path(pattern).parts
    if os.pardir not in parts:
        found = list(_walk_matches(pattern, root, root_real))
        matches = sorted(m for m in found if isinstance(m, str))
        yield from (m for m in found if isinstance(m, LoadFailure))
    elif "**" in parts:
        yield LoadFailure(pattern, "a pattern with both '**' and '..' is not supported; not read")
        return
    else:  # '..' needs glob itself; a fixed depth, so following links cannot loop
        matches = sorted(glob.iglob(pattern))
    for match in matches:
        if os.path.isdir(match):
            continue
        if Path(match).suffix.lower() not in extensions:
            _count_skipped(skipped, match)
            continue
        yield _check_candidate(match, root, root_real)


def _walk_matches(pattern: str, root: str, root_real: str) -> Iterator[str | LoadFailure]:
    """Paths matching ``pattern``, as glob.glob spells them, found by a walk that does not
    follow symlinked folders (glob follows them: ``a -> .`` makes ``**`` run forever, and
    ``*/`` finds a file again through every link to its folder).

    Matching is glob's: ``*``, ``?`` and ``[...]`` within a name, ``**`` any number of folders,
    and names starting with a dot only when the pattern's part does.
    """
    all_parts = Path(pattern).parts
    literal = len(Path(root).parts) if root != "." else 0
    prefix, pats = all_parts[:literal], tuple(all_parts[literal:])
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        here: tuple[str, ...] = () if rel == os.curdir else tuple(Path(rel).parts)
        kept = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                if _may_lead_to_match((*here, name), pats) and not _is_within(
                        os.path.realpath(full), root_real):
                    yield LoadFailure(
                        full, f"symlinked folder points outside the source folder {root!r}; not read"
                    )
                continue
            if _may_lead_to_match((*here, name), pats):
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if _matches((*here, name), pats):
                yield os.path.join(*prefix, *here, name)


def _name_matches(name: str, pat: str) -> bool:
    if name.startswith(".") and not pat.startswith("."):
        return False  # glob's rule: wildcards do not match hidden names
    return fnmatch.fnmatchcase(name, pat)


@functools.lru_cache(maxsize=4096)
def _matches(parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    """Whether the path ``parts`` matches the pattern ``pats`` (``**``: zero or more names)."""
    if not pats:
        return not parts
    if pats[0] == "**":
        if _matches(parts, pats[1:]):
            return True
        return bool(parts) and not parts[0].startswith(".") and _matches(parts[1:], pats)
    return bool(parts) and _name_matches(parts[0], pats[0]) and _matches(parts[1:], pats[1:])


def _may_lead_to_match(parts: Sequence[str], pats: tuple[str, ...]) -> bool:
    """Whether a file below the folder ``parts`` could match ``pats`` (prunes the walk)."""
    for i, part in enumerate(parts):
        if i >= len(pats):
            return False
        if pats[i] == "**":
            return not any(p.startswith(".") for p in parts[i:]) or any(
                _may_lead_to_match(parts[j:], pats[i + 1:]) for j in range(i, len(parts))
            )
        if not _name_matches(part, pats[i]):
            return False
    return len(parts) < len(pats)


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
