"""Atomic file and folder writes: a reader sees the old content or the new, never a half-written one.

Temporary names are hidden siblings that carry the writer's host and pid (``.NAME~HOST~PID~XXXX.tmp``
for files, ``.NAME~HOST~PID~XXXX`` for folders), so a later run can remove the leftovers of a killed writer without
touching those of a writer still alive (``clean_leftovers``)."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import OutputError

STALE_SECONDS = 24 * 3600
"""Leftovers of another host's writer are removed only after this long (its pid cannot be checked)."""


def _host() -> str:
    return socket.gethostname().replace("~", "_")


def _prefix(path: Path) -> str:
    return f".{path.name}~{_host()}~{os.getpid()}~"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_dir(path: str | Path, write) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then swap it into ``path``. An existing
    folder is exchanged with the new one in a single rename where the OS allows (so a concurrent
    reader never finds ``path`` missing), else moved aside first; an interrupted write leaves the old
    folder intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path)))
    try:
        write(tmp)
        if path.is_dir() and not path.is_symlink():
            if not _exchange(tmp, path):
                aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path)))
                os.replace(path, aside / "old")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(aside / "old", path)  # the old folder back in place before anything else
                    shutil.rmtree(aside, ignore_errors=True)
                    raise
                tmp = aside
            shutil.rmtree(tmp, ignore_errors=True)  # now the old content
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _writer_gone(host: str, pid: str, age: float) -> bool:
    """Whether the writer of a temporary name has exited (on another host: whether it is old)."""
    if host != _host():
        return age > STALE_SECONDS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OverflowError):
        return False
    return False


def clean_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders of this module's writers in ``folder`` whose writer has
    exited (killed mid-write); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        parts = p.name.rsplit("~", 3)
        if not p.name.startswith(".") or len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            age = time.time() - p.lstat().st_mtime
        except OSError:
            continue
        if _writer_gone(parts[1], parts[2], age):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITE_FAILURES = ("i/o error", "file write failed", "unexpected pos", "no space left", "file too large",
                  "disk quota")
"""How writers that do not raise OSError (safetensors, torch.save's zip writer) say a write failed."""


def write_failure(exc: BaseException, path: Path) -> str | None:
    """Why writing ``path`` failed, in words, if ``exc`` is a failed write (else None): disk full,
    file size limit, read-only, permission, or another library's I/O error."""
    if isinstance(exc, OSError):
        if exc.errno == errno.EFBIG:
            return "file too large: the disk or a file-size limit is full"
        return "no space left on the device" if exc.errno in NO_SPACE else (exc.strerror or str(exc))
    if not isinstance(exc, Exception):
        return None
    text = str(exc).lower()
    code = re.search(r"\(os error (\d+)\)", text)  # Rust's io::Error (safetensors) carries the errno
    if code:
        return write_failure(OSError(int(code.group(1)), os.strerror(int(code.group(1)))), path)
    if not any(w in text for w in WRITE_FAILURES):
        return None
    if "no space left" in text or _free_bytes(path) < 2**26:  # no errno given (torch's zip writer): best guess
        return "no space left on the device"
    if "file too large" in text or _file_size_limited():
        return "file too large: the disk or a file-size limit is full"
    detail = str(exc).strip().splitlines()[0].split("]")[-1].strip(" .")[:120]  # torch: "[enforce fail at ...] . why"
    return f"the write failed: {detail}"


def _file_size_limited() -> bool:
    """Whether this process runs under a file-size limit (``ulimit -f``)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        return soft != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):
        return False


def _free_bytes(path: Path) -> int:
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return 2**62
    return 2**62


class reporting_write_errors:
    """Turns a failed write of ``path`` (disk full, file size limit, read-only, permission; raised
    by Python, safetensors or torch) into one line naming the path and, through ``after()``, what is
    still intact and how to go on."""

    def __init__(self, path: Path, after: Callable[[], str] | None = None):
        self.path, self.after = path, after

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        why = None if exc is None or isinstance(exc, OutputError) else write_failure(exc, self.path)
        if why is None:
            return False
        more = f"; {self.after()}" if self.after is not None else ""
        raise OutputError(f"could not write {str(self.path)!r} ({why}){more}") from None
