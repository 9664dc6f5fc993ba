"""Atomic writes: a reader sees the old content or the new content, never a mix.

New content goes to a hidden sibling of the target (same directory, hence same filesystem), is
flushed and fsync'ed, and is then renamed over the target; the parent directory is fsync'ed so the
rename itself survives a power cut. A directory is built the same way and swapped in whole with one
atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``); where that is unavailable it falls back to
two renames, and a crash between them leaves the previous directory under a ``.nxold.`` name that
the next save to the same target renames back.

Temporary names look like ``.<name>.nxtmp.<host>.<pid>.<random>``. An exception removes them; a
killed process leaves one behind, which the next atomic write to the same target removes once that
process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "as_path",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "host_tag",
    "interrupted_save_hint",
    "process_alive",
    "remove_path",
]

_TMP = ".nxtmp."
_OLD = ".nxold."


def as_path(value: object, name: str) -> Path:
    """``value`` as a ``Path``, or a ``TypeError`` naming the argument."""
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if str(path) == "":
            raise ValueError(f"{name} must be a non-empty path, got {value!r}")
        return path
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (the old file stays until the new one is complete)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"data must be bytes, bytearray or memoryview, got {type(data).__name__}; "
            "use atomic_write_text for str"
        )
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``."""
    if not isinstance(text, str):
        raise TypeError(
            f"text must be a str, got {type(text).__name__}; use atomic_write_bytes for bytes"
        )
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it goes.

    The body creates a file (or a directory) at the yielded path. When the body returns, every
    file under it is fsync'ed and it is renamed into place; an existing directory is swapped
    atomically. If the body raises, the temporary path is removed and ``path`` is untouched.
    Missing parent directories are created. A symlink at ``path`` is followed.
    """
    target = _resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    tmp = _sibling(target, _TMP)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(
                f"nothing was written to the temporary path {tmp} for {target}; write the new "
                "content to the path that atomic_path yields"
            )
        _fsync_tree(tmp)
        _commit(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, keep: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces directory ``path`` whole on success.

    Entries of the existing ``path`` for which ``keep(name)`` is true are carried into the new
    directory first (hard links where possible, copies otherwise), so files that the writer does
    not own survive the replacement.
    """
    target = _resolve_target(path)
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(
            f"{target} exists and is not a directory; refusing to replace a file with a "
            "checkpoint directory. Move or delete it, or choose another path"
        )
    with atomic_path(target) as tmp:
        tmp.mkdir()
        if keep is not None and target.is_dir():
            for entry in os.scandir(target):
                if keep(entry.name):
                    _carry(Path(entry.path), tmp / entry.name)
        yield tmp


def interrupted_save_hint(path: str | os.PathLike) -> str:
    """A sentence pointing at a previous checkpoint that an interrupted swap left aside, or ''."""
    target = _resolve_target(path)
    try:
        prefix = _prefix(target, _OLD)
        names = [e.name for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return ""
    if not names:
        return ""
    return (
        f"; an interrupted save left the previous content at {target.parent / sorted(names)[-1]}: "
        f"rename it back to {target.name}"
    )


# --- internals -----------------------------------------------------------------------------------

def _resolve_target(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(as_path(path, "path")))


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def _prefix(target: Path, tag: str) -> str:
    return f".{target.name}{tag}"


def _sibling(target: Path, tag: str) -> Path:
    name = f"{_prefix(target, tag)}{host_tag()}.{os.getpid()}.{secrets.token_hex(4)}"
    return target.with_name(name)


def _owner(name: str, prefix: str) -> tuple[str, int] | None:
    parts = name[len(prefix):].split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _sweep_stale(target: Path) -> None:
    """Best effort: remove what killed saves to ``target`` left behind, restore a set-aside one."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for tag in (_OLD, _TMP):  # restore an old directory before deleting temporary ones
        prefix = _prefix(target, tag)
        for entry in entries:
            owner = _owner(entry.name, prefix) if entry.name.startswith(prefix) else None
            if owner is None or owner[0] != host_tag() or owner[1] == os.getpid() or process_alive(owner[1]):
                continue
            path = Path(entry.path)
            try:
                if tag == _OLD and not os.path.lexists(target):
                    os.rename(path, target)
                    fsync_dir(target.parent)
                else:
                    remove_path(path)
            except OSError:
                pass


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_fd_of(path: Path | str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        _fsync_fd_of(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if not path.is_dir():
        _fsync_fd_of(path, os.O_RDONLY)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                _fsync_fd_of(file, os.O_RDONLY)
        fsync_dir(root)


def _commit(tmp: Path, target: Path) -> None:
    tmp_is_dir = tmp.is_dir() and not tmp.is_symlink()
    if target.is_dir():
        if not tmp_is_dir:
            raise ValueError(
                f"{target} is a directory; refusing to replace it with a file. Move or delete it, "
                "or choose another path"
            )
        old = _swap_directories(tmp, target)
        fsync_dir(target.parent)
        remove_path(old)
        return
    if tmp_is_dir and os.path.lexists(target):
        raise ValueError(
            f"{target} exists and is not a directory; refusing to replace a file with a directory. "
            "Move or delete it, or choose another path"
        )
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _swap_directories(new: Path, target: Path) -> Path:
    """Put directory ``new`` at ``target``; return where the previous directory now is."""
    if _exchange(new, target):
        return new
    aside = _sibling(target, _OLD)
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths; ``False`` where the OS or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _carry(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
