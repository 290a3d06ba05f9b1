"""Files that survive crashes, and where irepa keeps them: one implementation of each, used everywhere.

* **Atomic writes.** Every file irepa writes goes to a hidden temp file next to its target, is
  fsynced, renamed over the target, and the folder is fsynced. A crash, a ``kill -9`` or a full disk
  leaves the previous file or the whole new one, never a torn file; an ``OSError`` names the target.
* **Verified files.** A file written with ``manifest=True`` gets ``<name>.manifest.json`` (its size
  and SHA-256), written atomically after it. :func:`check_file` finds truncation and bit damage;
  zip-based files (``.pt``, ``.npz``) without a manifest are checked against the CRC-32 of every
  zip member instead.
* **The cache home** ``$IREPA_HOME`` (default ``~/.cache/irepa``): weights, reference statistics,
  feature caches and downloads live below it.
* **Owned folders.** :func:`hold_folder` takes an OS lock (``flock``) on ``.irepa.lock`` in a run
  or output folder for as long as one process writes there; a second writer is refused at once,
  naming the holder. The kernel drops the lock when the holder exits, however it dies, so a killed
  run never leaves a stale lock behind.
* **Offline mode**: ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` or ``IREPA_OFFLINE`` set to a true
  value, and a quick reachability probe for the hub.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import urlparse

TMP_MARK = ".tmp-"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "irepa-manifest-v1"
ZIP_SUFFIXES = (".pt", ".pth", ".npz", ".zip")
_TRUE = ("1", "true", "yes", "on")
_CHUNK = 1 << 22

# ---------------------------------------------------------------------------------------------
# atomic writes

log = logging.getLogger(__name__)


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden temp name next to ``path`` that keeps its suffix (writers pick formats by suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")


def is_temp_file(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def is_temp_file_of(path: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Whether ``path`` is a temp file that a writer of ``target`` (a file name) made next to it."""
    name = Path(path).name
    return is_temp_file(path) and name.startswith(f".{Path(target).name}{TMP_MARK}")


def remove_stale_temps(folder: str | os.PathLike, of: list[str] | None = None) -> list[Path]:
    """Delete temp files left in ``folder`` by killed writers; returns what was removed.

    ``of`` limits this to the temp files of those target names (a folder that other programs also
    write into keeps theirs). Call it only where no other process writes these targets at the same time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        ours = is_temp_file(entry) if of is None else any(is_temp_file_of(entry, target) for target in of)
        if ours and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def underlying_error(err: BaseException) -> BaseException | None:
    """The Ctrl-C or OS error behind ``err``, when a writer wrapped it in its own exception.

    ``torch.save`` (and other writers in native code) report a failed ``write()`` of their Python
    file object as ``RuntimeError: ... unexpected pos``, with the real cause (a full disk, a
    ``KeyboardInterrupt``) only in ``__context__``; writers in Rust (safetensors) raise their own
    error whose message ends in ``(os error 28)``. Callers need the cause to react correctly.
    """
    seen: set[int] = set()
    cause = err.__cause__ or err.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, KeyboardInterrupt) or (isinstance(cause, OSError) and cause.errno is not None):
            return cause
        cause = cause.__cause__ or cause.__context__
    native = _NATIVE_OS_ERROR.search(str(err))
    if native is not None:
        code = int(native.group(1))
        return OSError(code, os.strerror(code))
    return None


_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; file systems that cannot fsync a folder are left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class FileDigest:
    """Size in bytes and SHA-256 (hex) of a file's contents."""

    size: int
    sha256: str


class AtomicFile:
    """A temp file next to ``path`` that becomes ``path`` on :meth:`commit` and vanishes on :meth:`discard`.

    For writers that stream over a long time (e.g. an ``.npz`` written chunk by chunk); most code
    uses :func:`atomic_path` or :func:`atomic_open` instead.
    """

    def __init__(self, path: str | os.PathLike, *, manifest: bool = False):
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.manifest = manifest
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def named(self, err: OSError) -> OSError:
        """The same kind of error, naming the target instead of the temp file (or of no file: a full
        disk during write or fsync names none). Errors about other files pass unchanged."""
        if err.errno is None or err.filename not in (None, str(self.tmp)):
            return err
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(self.path))

    def raise_named(self, err: OSError) -> NoReturn:
        """Raise ``err`` (called in its ``except`` block), renamed by :meth:`named` where that applies."""
        named = self.named(err)
        if named is err:
            raise err
        raise named from err

    def raise_cause(self, err: BaseException) -> None:
        """After a writer failed with ``err`` (not an ``OSError``): raise the Ctrl-C or the named OS error
        behind it (see :func:`underlying_error`); return when there is none."""
        cause = underlying_error(err)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        if isinstance(cause, OSError):
            named = self.named(cause)
            raise (OSError(named.errno, named.strerror, named.filename) if named is cause else named) from err

    def commit(self, digest: FileDigest | None = None, synced: bool = False) -> Path:
        """fsync the temp file (unless ``synced``) and rename it over ``path``, then record its digest.

        The old manifest is moved aside first: a crash between the steps leaves a file without a
        manifest (checked by other means), never a new file next to the old file's checksum; a
        failed rename puts it back.
        """
        manifest = manifest_path(self.path)
        stash = temp_path(manifest) if manifest.exists() else None
        try:
            if not synced:
                _fsync_file(self.tmp)
            if self.manifest and digest is None:
                digest = file_digest(self.tmp)
            if stash is not None:
                os.replace(manifest, stash)
            try:
                os.replace(self.tmp, self.path)
            except OSError:
                if stash is not None:
                    os.replace(stash, manifest)
                raise
            if stash is not None:
                stash.unlink()
            _fsync_folder(self.path.parent)
        except OSError as err:
            self.discard()
            self.raise_named(err)
        if self.manifest:
            record = {"format": MANIFEST_FORMAT, "file": self.path.name, "size": digest.size, "sha256": digest.sha256}
            atomic_write_json(manifest, record)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, manifest: bool = False) -> Iterator[Path]:
    """Yield a temp path next to ``path`` for any writer that wants a file name; on success the
    temp file is fsynced and replaces ``path`` in one step. On any error it is removed and
    ``path`` is untouched. ``manifest=True`` also records the new file's size and SHA-256."""
    target = AtomicFile(path, manifest=manifest)
    try:
        yield target.tmp
    except OSError as err:
        target.raise_named(err)
    except BaseException as err:
        target.discard()
        target.raise_cause(err)
        raise
    else:
        target.commit()
    finally:
        target.discard()


class _HashingWriter:
    """A binary file wrapper that hashes what passes through it (no second read of big files)."""

    def __init__(self, fh: IO[bytes]):
        self._fh, self._sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.size += view.nbytes
        return self._fh.write(view)

    def flush(self) -> None:
        self._fh.flush()

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._sha.hexdigest())


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, manifest: bool = False) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once the ``with`` block succeeds.

    Write-only, sequential use (``"wb"`` or ``"w"``); ``manifest=True`` needs ``"wb"`` and hashes
    the bytes as they are written.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes new files only (mode 'wb' or 'w'), got {mode!r}")
    if manifest and mode != "wb":
        raise ValueError("a manifest needs binary mode 'wb'")
    target = AtomicFile(path, manifest=manifest)
    try:
        with open(target.tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            writer = _HashingWriter(fh) if manifest else fh
            yield writer
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        target.discard()
        target.raise_named(err)
    except BaseException as err:
        target.discard()
        target.raise_cause(err)  # a full disk or Ctrl-C inside a native writer's write()
        raise
    target.commit(writer.digest() if manifest else None, synced=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, manifest: bool = False) -> None:
    """Replace ``path`` with ``data`` all at once: readers see the old file or the whole new one."""
    with atomic_open(path, "wb", manifest=manifest) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, manifest: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), manifest=manifest)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, manifest: bool = False, default: Any = None, sort_keys: bool = True
) -> None:
    """Atomically write ``obj`` as indented JSON, keys sorted by default (stable bytes for equal content)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), manifest=manifest)


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, manifest: bool = False) -> None:
    """``torch.save`` that never leaves a torn file; ``manifest=True`` records size and SHA-256."""
    import torch

    with atomic_open(path, "wb", manifest=manifest) as fh:
        torch.save(obj, fh)


# ---------------------------------------------------------------------------------------------
# verified files


def read_json(path: str | os.PathLike, what: str, fix: str, error: type[Exception] | None = None) -> Any:
    """The parsed JSON file ``path``. A truncated or garbled file raises one error naming it (``what``
    says what the file is) and ``fix``: :class:`~irepa.errors.DamagedFileError` by default, or
    ``error(message, fix=fix)`` (e.g. ``DataError`` for an input). A missing file raises as ``open`` does."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        from irepa.errors import DamagedFileError

        reason = f"not valid JSON: {err}"
        if error is None:
            raise DamagedFileError(path, reason, fix=fix, what=what) from err
        raise error(f"{what} {path} is damaged ({reason})", fix=fix) from err


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def file_digest(path: str | os.PathLike) -> FileDigest:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return FileDigest(size, sha.hexdigest())


def read_manifest(path: str | os.PathLike) -> FileDigest | None:
    """The recorded digest of ``path``; None without a manifest. A damaged manifest raises ValueError."""
    mpath = manifest_path(path)
    try:
        record = json.loads(mpath.read_text())
        return FileDigest(int(record["size"]), str(record["sha256"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"its manifest {mpath.name} is unreadable ({err})") from err


def _zip_damage(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"not a complete zip archive ({err}); the file is truncated or overwritten"
    except zipfile.LargeZipFile as err:  # pragma: no cover - zip64 is on by default
        return str(err)
    if bad is not None:
        return f"member {bad} fails its CRC check (bit damage)"
    return None


_checked: dict[tuple, str | None] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    mpath = manifest_path(path)
    mst = mpath.stat() if mpath.exists() else None
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, mst and (mst.st_ino, mst.st_mtime_ns))


def check_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is damaged, or None when it is intact as far as can be told.

    With a manifest: size, then SHA-256. Without one: the zip CRCs of ``.pt``/``.npz`` files;
    other files pass. Results are remembered per (file, size, mtime), so checking twice is free.
    """
    path = Path(path)
    if not path.is_file():
        return "the file does not exist"
    key = _stat_key(path)
    if key in _checked:
        return _checked[key]
    try:
        expected = read_manifest(path)
    except ValueError as err:
        expected, reason = None, str(err)
    else:
        reason = None
    if expected is not None:
        size = path.stat().st_size
        if size < expected.size:
            reason = f"truncated: {size} of {expected.size} bytes"
        elif size > expected.size:
            reason = f"{size} bytes where {expected.size} were written"
        elif file_digest(path).sha256 != expected.sha256:
            reason = "its contents do not match the recorded SHA-256 (bit damage)"
    elif path.suffix in ZIP_SUFFIXES:
        damage = _zip_damage(path)
        reason = damage if damage else None
    _checked[key] = reason
    return reason


# ---------------------------------------------------------------------------------------------
# where things live, and whether the network may be used


def usable_file(path: str | os.PathLike, what: str = "cache file") -> bool:
    """Whether ``path`` exists and passes :func:`check_file`; a damaged file is named in a warning
    (callers then make it again)."""
    path = Path(path)
    if not path.is_file():
        return False
    damage = check_file(path)
    if damage is not None:
        log.warning("%s %s is damaged (%s): making it again", what, path, damage)
        return False
    return True


def cache_home() -> Path:
    """``$IREPA_HOME``, or ``~/.cache/irepa``: the root of every irepa cache and download."""
    return Path(os.environ.get("IREPA_HOME") or "~/.cache/irepa").expanduser()


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` or ``IREPA_OFFLINE`` is set to 1/true/yes/on."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IREPA_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def offline_reason() -> str:
    """Which variable makes the session offline (for messages), or an empty string."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IREPA_OFFLINE")
    found = [name for name in names if os.environ.get(name, "").strip().lower() in _TRUE]
    return f"{found[0]} is set" if found else ""


def reachable(host: str, port: int = 443, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds, DNS included
    (the probe runs in a thread, so a hanging resolver cannot stall the caller)."""
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0]


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether the Hugging Face endpoint (``$HF_ENDPOINT``) answers; False at once when offline."""
    if is_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return reachable(endpoint.hostname or "huggingface.co", port, timeout)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


__all__ = [
    "AtomicFile",
    "FileDigest",
    "atomic_open",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_home",
    "check_file",
    "file_digest",
    "hub_reachable",
    "is_disk_full",
    "is_offline",
    "is_temp_file",
    "is_temp_file_of",
    "manifest_path",
    "offline_reason",
    "reachable",
    "read_manifest",
    "read_json",
    "remove_stale_temps",
    "temp_path",
    "underlying_error",
]


# ---------------------------------------------------------------------------------------------
# one writer per folder

LOCK_FILE = ".irepa.lock"
_held_locks: set[int] = set()  # descriptors of the folders this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a data-loader worker): close the inherited lock descriptors, so the lock ends
    with the process that took it, not with the last of its children."""
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextmanager
def hold_folder(folder: str | os.PathLike, what: str, fix: str) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the block: an exclusive ``flock`` on its lock file.

    ``what`` names the holder's job in the refusal another process gets (``irepa train``), ``fix``
    what that process should do instead. The lock file records the holder's pid and host for that
    message; it stays in place when released (removing it would let two processes lock two files).
    Forked children (data-loader workers) close their inherited copy, so the lock ends with its holder.
    Where ``fcntl`` does not exist (Windows) the folder is not locked.
    """
    from irepa.errors import FolderInUseError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield folder
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split()
            who = "another process"
            if holder:
                who = f"pid {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "")
            raise FolderInUseError(f"{folder} is in use by {what} ({who}); nothing was written", fix=fix) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _held_locks.add(fd)
        yield folder
    finally:
        _held_locks.discard(fd)
        os.close(fd)  # releases the lock
