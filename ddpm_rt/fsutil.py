"""Files, once: the cache root, file hashing, atomic writes, locks and stale-temp cleanup.

Every writer in ddpm-rt writes beside its target and renames, so a reader never sees half
a file or half a directory; every cache is keyed by content (sha256 of files, never of
rebuilt modules); writers of one cache entry serialise on a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ddpm_rt.errors import ConfigError

CACHE_ENV = "DDPM_RT_CACHE"
TMP_SUFFIX = ".tmp"  # every temporary file or directory ends with this (and starts with '.')
STALE_AFTER_S = 600.0  # a temp older than this whose writer is gone is removed on the next run
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256, per process
LogFn = Callable[[str], None]


def cache_root() -> Path:
    """$DDPM_RT_CACHE, else ~/.cache/ddpm-rt."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ddpm-rt"


def sha256_of(path: Path) -> str:
    """sha256 of a file, read now (for checksums that must see every byte as it is on disk)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per process on (path, mtime, size): content keys hash once per run."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if memo not in _HASHES:
        _HASHES[memo] = sha256_of(path)
    return _HASHES[memo]


def json_key(fields: Any, length: int = 24) -> str:
    """The cache key of a JSON-able description: sha256 of its sorted JSON (non-JSON values as
    str), hex, cut to `length` (64 = the whole digest). Every cache and content key uses this."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def writable_dir(path: Path) -> bool:
    """True when `path` exists (or can be created) and this process may write in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _check_writable_dir(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {what} {directory}: {e.strerror}; choose a writable path") from None
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"{what} {directory} is not writable; choose a writable path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    # the writer's pid is part of the name, so a later run can tell whether it is still alive
    return f".{name}.{os.getpid()}."


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "output directory") -> Path:
    """Call ``write(tmp_path)`` then rename tmp_path to `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    _check_writable_dir(path.parent, what)
    clean_stale_temps(path.parent, prefix=f".{path.name}.")  # left by an earlier writer that was killed
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=TMP_SUFFIX + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes, what: str = "output directory") -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data), what)


def atomic_write_text(path: Path, text: str, what: str = "output directory") -> Path:
    return atomic_write(path, lambda p: p.write_text(text), what)


@contextlib.contextmanager
def atomic_directory(path: Path, what: str = "output directory") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` whole, on error it is removed.

    A reader that opened files of the old directory keeps them (POSIX), and one that looks
    up `path` sees either the old or the new directory, never a mixture: the old one is
    first renamed aside, then the new one renamed into place.
    """
    path = Path(path)
    _check_writable_dir(path.parent, what)
    clean_stale_temps(path.parent, prefix=f".{path.name}.")
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir() and not path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name) + "old.", suffix=TMP_SUFFIX,
                                        dir=path.parent))
            os.replace(path, old / "d")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists() or path.is_symlink():
                path.unlink()  # a file (or link) where the directory belongs: damaged, replace it
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path, log: LogFn | None = None, what: str = "") -> Iterator[None]:
    """Hold an exclusive fcntl.flock on `path` (created if missing) for the `with` body."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another process {what or 'holding ' + str(path)}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(name: str) -> int | None:
    """The pid in a temp name made by `_temp_prefix` (".<target>.<pid>.<random>.tmp...")."""
    parts = name.split(".")
    for part in reversed(parts[:-1]):
        if part.isdigit():
            return int(part)
    return None


def clean_stale_temps(directory: Path, max_age_s: float = STALE_AFTER_S, prefix: str = ".") -> list[Path]:
    """Remove temp files/directories in `directory` left by writers that died (kill -9, power loss).

    A temp names its writer's pid: it is removed when that process no longer exists, kept
    while it runs, whatever its age. One without a pid in its name is removed by age
    (`max_age_s`). Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix) or TMP_SUFFIX not in entry.name:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        pid = _writer_pid(entry.name)
        # no pid in the name: judged by age only; else stale once its writer is gone for good
        stale = age > max_age_s if pid is None else pid != os.getpid() and not _pid_alive(pid)
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the body is done (a multi-file write that must not be cut in two)."""
    import signal

    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
