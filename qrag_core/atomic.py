"""Guarded, atomic writes of everything qrag saves: models, indexes, retrievers, checkpoints, index shards.

Every directory qrag saves goes through :func:`atomic_directory`: the new copy is written into a
temporary directory beside the target and synced to disk, then swapped in with two renames (the old
copy is moved aside, the new one moved into place) and only then is the old copy removed. A crash or a
full disk at any moment leaves the old or the new copy complete, never a mixture; a full disk raises
:class:`~qrag_core.errors.StorageError` ("no space left on device at PATH") and keeps the old copy.

A save replaces only what qrag itself wrote. The target must be absent, empty, or hold qrag's output of
the same kind, described by a :class:`Layout` (a marker file, e.g. ``index.json``, and nothing but names
qrag writes there); any other directory is refused with an error that names it, and so is a path that
is the working directory, the home directory or one of their parents (``/`` included), or that holds data
the caller is reading. ``overwrite=False`` also refuses qrag's own earlier output.

Leftovers of a killed save never block the next one: :func:`recover` (run by every save and by
resuming a training run) removes orphan temporary directories and either restores the old copy (a kill
between the two renames) or removes it (a kill after them). A save's temporary directory is named with
its host and process id, so a save running at the same time in another process keeps its own. Every
loader reads through :func:`readable`, which restores that old copy too, so a save killed between its
renames never makes a model, index or retriever look missing.

Saves, :func:`recover` and :func:`readable` of targets in one directory take turns on an advisory lock
of that directory (``flock`` on the directory itself, so no lock file is ever written): a save holds it
across its renames, and a load or save that finds the old copy aside waits for it before deciding to
restore that copy, so it never takes a save running in another process for a killed one. The lock dies
with its process, so a killed save blocks no one; where a directory cannot be locked (some network file
systems, Windows), everything goes on without the lock.

A killed single-file write (:func:`atomic_file`) leaves a temporary file named with its host and process
id; the next write of that file removes it once that process has ended (:func:`remove_stale`, which the
ONNX export uses for its work directories too). Leftovers of older qrag versions, named without a process
id, are removed by name (:func:`remove_unnamed`): at once beside a save's target, and from the ONNX
export cache once nothing in them has changed for a day.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

try:
    import fcntl
except ImportError:  # Windows: saves and loads go on without the directory lock
    fcntl = None  # type: ignore[assignment]

from qrag_core.errors import QRAGError, StorageError, UnsafeOutputError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Names of temporary files and directories start with this, then the target's name and a dash."""
ASIDE_SUFFIX = ".old"
"""``.tmp-NAME.old``: the previous copy of NAME while the new one is moved into place."""
_RANDOM_PART = r"[a-z0-9_]{8}"  # what tempfile appends to the prefix
_TEMPORARY = re.compile(re.escape(TMP_PREFIX) + r".+-" + _RANDOM_PART)


@dataclass(frozen=True)
class Layout:
    """What one kind of qrag output directory holds, so that a save can tell it from a user's directory."""

    what: str
    """The kind, as error messages name it (e.g. "model")."""
    markers: tuple[str, ...]
    """Files that identify the kind; a directory holding one of them (and nothing foreign) is qrag's."""
    entries: tuple[str, ...]
    """Glob patterns of every top-level name qrag writes into such a directory (the markers included)."""
    recognise: Callable[[Path], bool] | None = None
    """Extra test of a marker file (e.g. ``config.json`` has a "qrag" key); None: its presence suffices."""
    listed: Callable[[Path], Iterable[str]] | None = None
    """Further names a directory's own marker lists as written with it (e.g. an adapter's files)."""

    def foreign_entries(self, directory: Path) -> list[str]:
        """Names in ``directory`` that qrag does not write into this kind of directory."""
        listed = set(self.listed(directory)) if self.listed is not None else set()
        return sorted(
            p.name
            for p in directory.iterdir()
            if p.name not in listed and not any(fnmatch(p.name, e) for e in self.entries)
        )

    def is_own(self, directory: Path) -> bool:
        """Whether ``directory`` holds qrag's output of this kind and nothing else."""
        marked = any(
            (directory / m).is_file() and (self.recognise is None or self.recognise(directory / m))
            for m in self.markers
        )
        return marked and not self.foreign_entries(directory)


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute, with ``~`` and symbolic links resolved (a link's target is what gets replaced);
    UnsafeOutputError if it is no usable path (a NUL byte, ``~unknown-user``, a symbolic link loop)."""
    try:
        return Path(path).expanduser().resolve()
    except (ValueError, RuntimeError, OSError) as err:
        raise UnsafeOutputError(f"{os.fspath(path)!r} is not a usable path: {err}") from err


def refuse_guarded(path: Path, protect: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Raise UnsafeOutputError if ``path`` (resolved) is the working or home directory, one of their
    parents, or equal to or a parent of a ``protect`` path (an input the caller reads)."""
    guarded = [(Path.cwd().resolve(), "the current directory")]
    with contextlib.suppress(RuntimeError):  # no home directory can be determined: nothing to guard
        guarded.append((Path.home().resolve(), "your home directory"))
    guarded += [(resolved(p), f"the input {resolved(p)}") for p in protect]
    for other, what in guarded:
        if path == other or path in other.parents:
            raise UnsafeOutputError(
                f"refusing to replace {path}: it {'is' if path == other else 'holds'} {what}; "
                "give the output a directory of its own"
            )


def check_replaceable(
    target: str | os.PathLike[str],
    layout: Layout,
    overwrite: bool = True,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """The resolved ``target`` if a save of ``layout`` may replace it; else UnsafeOutputError saying why.

    Allowed: an absent or empty directory, or (with ``overwrite``) qrag's own output of this kind.
    """
    path = resolved(target)
    refuse_guarded(path, protect)
    if not path.exists():
        return path
    if not path.is_dir():
        raise UnsafeOutputError(f"{path} is a file, not a directory; choose another path for the {layout.what}")
    if not any(path.iterdir()):
        return path
    if not layout.is_own(path):
        foreign = layout.foreign_entries(path)
        why = (
            f"it holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}, which qrag did not write"
            if foreign
            else f"it has no valid {' or '.join(layout.markers)}"
        )
        raise UnsafeOutputError(
            f"{path} is not empty and is not a qrag {layout.what} ({why}); it was left untouched: "
            "choose a new or empty directory, or move its contents away"
        )
    if not overwrite:
        raise UnsafeOutputError(
            f"{path} already holds a qrag {layout.what}; pass overwrite=True (--overwrite on the command line) "
            "to replace it, or choose another directory"
        )
    return path


def recover(target: str | os.PathLike[str]) -> None:
    """Clean up after a killed save of ``target``: remove its orphan temporary directories and files (never
    those of a save still running, :func:`remove_stale`), and restore the previous copy (killed between the
    two renames) or remove it (killed after them)."""
    path = resolved(target)
    if not path.parent.is_dir():
        return
    prefix = f"{TMP_PREFIX}{path.name}-"
    remove_stale(path.parent, prefix)
    remove_unnamed(path.parent, prefix)  # only once idle for a day: an older version may be saving it now
    aside = _aside(path)
    if not _real_directory(aside):
        return
    with _renames_locked(path.parent):  # a save between its renames finishes them first
        if not _real_directory(aside):
            return
        if path.exists():
            logger.info("removing %s, the previous copy of %s left by an interrupted save", aside, path)
            shutil.rmtree(aside)
        else:
            _restore(aside, path)


def readable(target: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Where to load the directory a save of ``target`` wrote: ``target`` itself, restored first if a
    save was killed between its two renames (only the old copy, moved aside, is left).

    The old copy is the one to restore: it was complete before that save began, and the next save
    restores it too (:func:`recover`), whereas a temporary directory beside it may as well be a save
    still running or one killed while writing. Loading never removes anything. If the old copy
    cannot be moved back (e.g. a read-only directory), it is read where it lies.
    """
    try:
        path = resolved(target)
    except UnsafeOutputError:  # not a usable path (maybe a model name): nothing to restore
        return target
    if not path.name or path.exists():
        return target
    aside = _aside(path)
    if not _real_directory(aside):
        return target
    with _renames_locked(path.parent):  # a save between its renames finishes them first
        if path.exists() or not _real_directory(aside):
            return target
        try:
            _restore(aside, path)
        except OSError as err:
            if path.exists():  # a save has just moved its new copy in (a directory that cannot be locked)
                return target
            logger.warning("reading %s where it lies: it cannot be moved back to %s (%s)", aside, path, err)
            return aside
    return target


def _real_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


@contextlib.contextmanager
def _renames_locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``directory`` itself, waiting for whoever holds it.

    Nothing is written: the lock lives on an open descriptor of the directory and is released when it is
    closed or its process ends. Where the directory cannot be opened or locked (no read permission, some
    network file systems, no ``fcntl``), the block runs unlocked.
    """
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException as err:
            if fd is not None:
                os.close(fd)
                fd = None
            if not isinstance(err, OSError):
                raise
            logger.debug("%s cannot be locked (%s); going on without the lock", directory, err)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _restore(aside: Path, path: Path) -> None:
    logger.warning("restoring %s from %s (a save was interrupted between its renames)", path, aside)
    os.replace(aside, path)


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike[str],
    layout: Layout,
    overwrite: bool = True,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield an empty temporary directory; once the block has filled it, it replaces ``target``.

    ``target`` must pass :func:`check_replaceable`. The block must write a marker of ``layout`` and only
    names the layout lists. Leftovers of earlier interrupted saves are cleaned up first.
    """
    path = resolved(target)
    refuse_guarded(path, protect)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    check_replaceable(path, layout, overwrite, protect)
    tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(f"{TMP_PREFIX}{path.name}-"), dir=path.parent))
    try:
        try:
            yield tmp
            _usual_permissions(tmp)
            if not _TEMPORARY.fullmatch(path.parent.name):  # else the enclosing save syncs everything
                _sync_tree(tmp)
        except Exception as err:
            if _disk_full(err):
                raise StorageError(f"no space left on device at {path}; the previous copy, if any, is kept") from err
            raise
        unlisted = layout.foreign_entries(tmp)
        if unlisted or not any((tmp / m).is_file() for m in layout.markers):
            raise QRAGError(f"qrag wrote {unlisted} without a marker into a {layout.what}; this is a qrag bug")
        _swap(tmp, path)
    finally:
        if tmp.exists():  # what a failed save wrote, or the old copy once the new one is in place
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the name of an empty temporary file beside ``path``; once the block has written it, it is
    synced and renamed over ``path``.

    A full disk (in the block or while syncing) raises StorageError and leaves the previous file as it
    was; the temporary file is removed whatever happens, and one a killed process left is removed by the
    next write of ``path`` (:func:`remove_stale`).
    """
    path = Path(path)
    remove_stale(path.parent, f"{TMP_PREFIX}{path.name}-")
    fd, name = tempfile.mkstemp(prefix=owned_prefix(f"{TMP_PREFIX}{path.name}-"), dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(name)
            _sync_file(name)
        except Exception as err:
            if _disk_full(err):
                raise StorageError(f"no space left on device at {path}; the previous copy, if any, is kept") from err
            raise
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def write_file(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write one file atomically with :func:`atomic_file` (a full disk: StorageError, the old file kept)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY), "wb") as f:
        f.write(payload)


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file of ``tensors`` (moved to the CPU), written with :func:`write_file`.

    Serialising in memory and writing with Python's file I/O makes a full disk an OSError, which the
    safetensors writer does not always report.
    """
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    write_file(path, safetensors_bytes(cpu, metadata))


def owned_prefix(prefix: str) -> str:
    """``prefix`` followed by this host's name and this process's id, then a dash: the start of the name of
    a temporary file or directory whose leftovers :func:`remove_stale` can tell from a live writer's."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-"


def remove_stale(directory: Path, prefix: str) -> None:
    """Remove what killed processes left in ``directory``: the temporary files and directories named by
    ``tempfile`` with :func:`owned_prefix` of ``prefix`` whose process no longer runs.

    Those of a live process (this one included) are kept, and so are those of other hosts sharing the
    directory, whose processes cannot be checked from here. A process id is reused only after its
    process ended, so a leftover is at worst kept too long, never removed early. On Windows, where a
    process cannot be probed without signalling it, nothing is removed.
    """
    if os.name == "nt" or not directory.is_dir():
        return
    stale = re.compile(re.escape(f"{prefix}{socket.gethostname()}-") + r"(\d{1,10})-" + _RANDOM_PART)
    for leftover in directory.iterdir():
        match = stale.fullmatch(leftover.name)
        if match and not leftover.is_symlink() and not _running(int(match[1])):
            logger.info("removing %s, left by a process that was killed", leftover)
            with contextlib.suppress(FileNotFoundError):  # another process removed it first
                _remove(leftover)


UNNAMED_IDLE_S = 24 * 3600.0
"""How long nothing must have changed in an unnamed leftover (:func:`remove_unnamed`) of a shared cache
before it counts as abandoned rather than the work of an older qrag version running now."""


def remove_unnamed(directory: Path, prefix: str, idle_s: float = UNNAMED_IDLE_S) -> None:
    """Remove what older qrag versions, which named temporary files and directories without a host or
    process id, left in ``directory``: names of ``prefix`` followed directly by ``tempfile``'s random part.

    No process can be checked for these, so ``idle_s`` says how long nothing in one (the file, or the
    directory and everything under it) must have changed before it is taken for abandoned (default
    :data:`UNNAMED_IDLE_S`, a day): an older version may be writing it at this moment, beside a save's
    target as in the ONNX export cache that environments with other qrag versions share.
    """
    if not directory.is_dir():
        return
    unnamed = re.compile(re.escape(prefix) + _RANDOM_PART)
    now = time.time()
    for leftover in directory.iterdir():
        if not unnamed.fullmatch(leftover.name) or leftover.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            if idle_s > 0 and now - _last_change(leftover) < idle_s:
                continue
            logger.info("removing %s, left by an older qrag version that was interrupted", leftover)
            _remove(leftover)


def _last_change(path: Path) -> float:
    """The latest modification time of ``path`` and, for a directory, of anything under it."""
    latest = path.lstat().st_mtime
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
    return latest


def _running(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this host (signal 0 only checks that it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; an id no process can have
        return True
    return True


def remove_leftover_files(directory: Path) -> None:
    """Remove the temporary files :func:`write_file` leaves in ``directory`` when killed."""
    for leftover in directory.iterdir():
        if leftover.is_file() and _TEMPORARY.fullmatch(leftover.name):
            logger.info("removing %s, left by an interrupted write", leftover)
            leftover.unlink()


def _aside(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}{ASIDE_SUFFIX}")


def _swap(tmp: Path, path: Path) -> None:
    """Move ``path`` aside, ``tmp`` into its place, then the old copy to ``tmp``'s name, for the caller to
    remove (a process killed while removing it leaves a directory :func:`remove_stale` knows).

    The directory's lock is held across the renames, so that no other process sees the target missing
    and the old copy aside, and none has to wait while the old copy is removed.
    """
    aside = _aside(path)
    with _renames_locked(path.parent):
        if path.exists():
            os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except BaseException:
            if aside.exists() and not path.exists():
                os.replace(aside, path)
            raise
        if aside.exists():
            os.replace(aside, tmp)
    _sync_directory(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _disk_full(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from, says the disk (or the user's quota) is full."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory``, so the renames publish data that is on disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            _sync_file(os.path.join(root, name))
        _sync_directory(Path(root))


def _sync_file(name: str | os.PathLike[str]) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot sync a directory; the data itself is synced
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _usual_permissions(directory: Path) -> None:
    """Give a directory made by ``mkdtemp`` (0700, files 0600) the permissions the umask gives new files."""
    umask = _umask()
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
