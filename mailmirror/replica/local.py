"""A replica that is a Maildir tree on this machine.

It implements the contract in replica/base.py with plain system calls: listing by names only
(os.listdir, no stat per message), tmp/ -> one syncfs barrier -> no-clobber rename for
deliveries, and renameat2(RENAME_NOREPLACE) for flag changes and moves. The remote agent serves
its side through this same class, so both ends share one implementation of the safety rules.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from mailmirror import crashpoint
from mailmirror.errors import ReplicaError
from mailmirror.maildir import keywords as kw
from mailmirror.maildir import quarantine
from mailmirror.maildir.folders import (
    INBOX,
    MAILDIRPP,
    create_folder,
    folder_dir,
    list_folders,
)
from mailmirror.maildir.fsops import (
    fsync_dir,
    is_process_alive,
    rename_noreplace,
    sync_filesystem,
)
from mailmirror.maildir.names import MESSAGE_SUBDIRS, split_relname
from mailmirror.maildir.tombstones import (
    TOMBSTONES_FILE,
    format_deletions,
    parse_tombstones,
    prune_tombstones,
)
from mailmirror.replica.base import (
    OK,
    Delivery,
    Message,
    Outcome,
    Ref,
    Rename,
    Result,
    Stamp,
    delivered_now,
)
from mailmirror.sync.model import Entry

ID_FILE = "mailmirror-id"
_DOT = ord(".")  # a name's first byte, compared without slicing: half the cost per name
_RAW_IS_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) == (
    "utf-8", "surrogateescape")
"""Whether file names as bytes are already raw names (names.to_raw): everywhere but under a
legacy locale, where listings take the slow way through str."""
TMP_SUFFIX = ".mmtmp"
MAX_MESSAGE = 1 << 30
TOMBSTONE_REWRITE_BYTES = 8 << 20


class LocalReplica:
    """A local Maildir root. Construct with open_local(); see replica/base.py for the contract."""

    remote = False

    def __init__(self, root: Path, layout: str = MAILDIRPP, sep: str = ":",
                 readonly: bool = False) -> None:
        self.root = root
        self.readonly = readonly
        self.layout = layout
        self.sep = sep
        self.label = str(root)
        self._id: str | None = None
        self._host = os.uname().nodename.replace("/", "_").replace(":", "_")
        self._counter = itertools.count()
        self._tmp_dirs: dict[str, str] = {}  # folder -> its tmp/, cleaned of our stale files
        self._tmp_tail = f"P{os.getpid()}.{self._host}{TMP_SUFFIX}"
        self._dirs: dict[str, str] = {}
        self._modes: dict[str, int] = {}

    @property
    def id(self) -> str:
        """The replica id, read from (or, on first use, written to) the root's id file."""
        if self._id is None:
            self._id = _read_or_create_id(self.root, self.readonly)
        return self._id

    def stored_id(self) -> str | None:
        return self._id if self._id is not None else _read_id(self.root / ID_FILE)

    def clock_ns(self) -> int:
        return time.time_ns()

    def stamps(self) -> dict[str, Stamp]:
        result: dict[str, Stamp] = {}
        if self.readonly and not self.root.exists():
            return result
        try:
            folders = list_folders(self.root, self.layout)
        except OSError as exc:
            raise ReplicaError(f"cannot list folders of {self.root}: {exc.strerror}") from exc
        for folder in folders:
            base = folder_dir(self.root, folder, self.layout)
            result[folder] = Stamp(_mtime(base / "cur"), _mtime(base / "new"))
        return result

    def list(self, folders: Sequence[str],
             subdirs: Sequence[str] = MESSAGE_SUBDIRS) -> dict[str, list[str]]:
        listing = {}
        for folder in folders:
            names: list[str] = []
            for sub, entries in zip(subdirs, self.names(folder, subdirs), strict=True):
                names += (f"{sub}/{os.fsdecode(n)}" for n in entries)
            listing[folder] = names
        return listing

    def names(self, folder: str, subdirs: Sequence[str]) -> list[list[bytes]]:
        """The file names in each of a folder's `subdirs` as the file system has them (bytes),
        dot files left out: what the agent joins into its blocks (docs/protocol.md)."""
        return [[n for n in entries if n[0] != _DOT] for entries in self._entries(folder, subdirs)]

    def _entries(self, folder: str, subdirs: Sequence[str]) -> list[list[bytes]]:
        base = folder_dir(self.root, folder, self.layout)
        link = _link_in(self.root, base)
        if link is not None:
            # listing through it would read mail from elsewhere; skipping it would read
            # as the folder emptied: stop instead
            raise ReplicaError(f"{link} is a symbolic link: mailmirror never follows one "
                               "inside a maildir; replace it with a directory")
        out = []
        for sub in subdirs:
            if sub not in MESSAGE_SUBDIRS:
                raise ValueError(f"not a message subdirectory: {sub!r}")
            try:
                # as bytes: a third faster than as str, and what the scan compares anyway
                out.append(os.listdir(os.fsencode(base / sub)))
            except FileNotFoundError:
                out.append([])
        return out

    def listings(self, folders: Sequence[tuple[str, Sequence[str]]]
                 ) -> Iterator[tuple[str, list[bytes]]]:
        for folder, subdirs in folders:
            relnames: list[bytes] = []
            for sub, entries in zip(subdirs, self.names(folder, subdirs), strict=True):
                prefix = sub.encode() + b"/"
                if _RAW_IS_FS:
                    relnames += (prefix + n for n in entries)
                else:
                    relnames += (prefix + _raw_of(n) for n in entries)
            yield folder, relnames

    def sizes(self, refs: Sequence[Ref]) -> list[int | None]:
        out: list[int | None] = []
        for ref in refs:
            try:
                out.append(os.lstat(self._path(ref)).st_size)
            except (FileNotFoundError, ValueError):
                out.append(None)
        return out

    def keywords(self, folder: str) -> dict[str, str]:
        return kw.read_keywords(Path(self._dir(folder)))

    def add_keywords(self, folder: str, names: Iterable[str]) -> dict[str, str]:
        return kw.add_keywords(Path(self._dir(folder)), set(names))

    def create_folder(self, folder: str) -> None:
        self._dir(folder)  # refuses a symbolic link in the way
        create_folder(self.root, folder, self.layout)

    def tombstones(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        try:
            text = (self.root / TOMBSTONES_FILE).read_text("utf-8", "replace")
        except FileNotFoundError:
            return {}
        found = parse_tombstones(text)
        return {k: Entry(found[k][1], found[k][2], found[k][3]) for k in keys if k in found}

    def add_tombstones(self, items: Sequence[tuple[str, Entry]]) -> None:
        if not items or self.readonly:
            return
        now = int(time.time())
        lines = format_deletions(now, ((k, e.folder, e.subdir, e.flags) for k, e in items))
        path = self.root / TOMBSTONES_FILE
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        crashpoint.after("append tombstones")
        if size > TOMBSTONE_REWRITE_BYTES:
            self._prune_tombstones(path, now)

    def _prune_tombstones(self, path: Path, now: int) -> None:
        """Rewrite the file without lines past the retention (temp file, then rename)."""
        kept = prune_tombstones(path.read_text("utf-8", "replace"), now)
        tmp = self.root / "tmp" / f"{TOMBSTONES_FILE}.{os.getpid()}"
        _write_new(str(tmp), kept.encode(), durable=True)
        os.replace(tmp, path)

    def remove_folder(self, folder: str) -> bool:
        if folder == INBOX:
            return False
        path = folder_dir(self.root, folder, self.layout)
        if _link_in(self.root, path) is not None:
            return False  # what it leads to is outside the maildir, or may be
        try:
            # a run killed between writing a copy and publishing it left its temp file here
            _remove_stale_tmp(str(path / "tmp"), self._host)
            if any(os.listdir(path / sub) for sub in ("cur", "new", "tmp")):
                return False
            for sub in ("cur", "new", "tmp"):
                os.rmdir(path / sub)
                crashpoint.after("rmdir")
            for name in os.listdir(path):
                if name == "maildirfolder" or name.startswith(("dovecot", "courierimap",
                                                              "maildirsize")):
                    os.unlink(path / name)
            os.rmdir(path)
            crashpoint.after("rmdir")
        except OSError:
            return False
        return True

    def read(self, refs: Sequence[Ref]) -> list[Message | Result]:
        out: list[Message | Result] = []
        for ref in refs:
            try:
                out.append(self._read_one(self._path(ref)))
            except FileNotFoundError:
                out.append(Result(Outcome.GONE))
            except (OSError, ValueError) as exc:
                out.append(Result(Outcome.FAILED, f"cannot read {ref.folder}/{ref.relname}: {exc}"))
        return out

    def _read_one(self, path: str) -> Message:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if st.st_size > MAX_MESSAGE:
                raise ValueError(f"larger than {MAX_MESSAGE} bytes")
            # one read of the whole file (no chunks to join: half the memory of a large one);
            # a file that grew since fstat is read on to its end
            data = os.read(fd, st.st_size + 1)
            if len(data) > st.st_size:
                chunks = [data]
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
            return Message(data, st.st_mtime_ns)
        finally:
            os.close(fd)

    def deliver_later(self, items: Sequence[Delivery]) -> Callable[[], list[Result]]:
        return delivered_now(self, items)

    def deliver(self, items: Sequence[Delivery]) -> list[Result]:
        results: list[Result] = [OK] * len(items)
        staged: list[tuple[int, str, str]] = []
        for i, item in enumerate(items):
            try:
                target = self._path(item.target)
                tmp = self._tmp_path(item.target.folder)
                _write_new(tmp, item.data, mode=self._file_mode(item.target.folder),
                           mtime_ns=item.mtime_ns)
                staged.append((i, tmp, target))
            except (OSError, ValueError) as exc:
                results[i] = Result(Outcome.FAILED, _describe(exc, item.target))
        if not staged:
            return results
        try:
            self._flush()
            crashpoint.after("syncfs")
        except OSError as exc:
            for i, tmp, _ in staged:
                _unlink_quietly(tmp)
                results[i] = Result(Outcome.FAILED, f"flushing {self.root} failed: {exc}")
            return results
        touched = set()
        for i, tmp, target in staged:
            try:
                rename_noreplace(tmp, target)
                crashpoint.after("publish")
                touched.add(target.rpartition("/")[0])
            except FileExistsError:
                _unlink_quietly(tmp)
                results[i] = Result(Outcome.EXISTS)
            except OSError as exc:
                _unlink_quietly(tmp)
                results[i] = Result(Outcome.FAILED, _describe(exc, items[i].target))
        self._sync_dirs(touched, results)
        return results

    def rename(self, items: Sequence[Rename]) -> list[Result]:
        results: list[Result] = []
        touched = set()
        for item in items:
            try:
                source, target = self._path(item.source), self._path(item.target)
                rename_noreplace(source, target)
                crashpoint.after("rename")
                touched.update((os.path.dirname(source), os.path.dirname(target)))
                results.append(OK)
            except FileNotFoundError:
                results.append(Result(Outcome.GONE))
            except FileExistsError:
                results.append(Result(Outcome.EXISTS))
            except (OSError, ValueError) as exc:
                results.append(Result(Outcome.FAILED, _describe(exc, item.source)))
        self._sync_dirs(touched, results)
        return results

    def delete(self, refs: Sequence[Ref]) -> list[Result]:
        results: list[Result] = []
        touched = set()
        for ref in refs:
            try:
                path = self._path(ref)
                kept = quarantine.quarantine(self.root, self.layout, path, ref.folder,
                                             ref.relname, time.time())
                crashpoint.after("quarantine")
                touched.update((os.path.dirname(path), kept))
                results.append(OK)
            except FileNotFoundError:
                results.append(Result(Outcome.GONE))
            except FileExistsError:
                results.append(Result(Outcome.FAILED, f"{ref.folder}/{ref.relname}: a message "
                                      "of that name was already quarantined today"))
            except (OSError, ValueError) as exc:
                results.append(Result(Outcome.FAILED, _describe(exc, ref)))
        self._sync_dirs(touched, results)
        return results

    def prune_quarantine(self, keep_days: int) -> int:
        if self.readonly:
            return 0
        return quarantine.prune(self.root, self.layout, keep_days, time.time())

    def close(self) -> None:
        pass

    def _dir(self, folder: str) -> str:
        """The folder's directory, validated once per run (hot path: once per message).

        ValueError for a symbolic link on the way (the folder, a parent below the root, or its
        cur/ new/ tmp/): it could lead out of the root. Known race: a link made after this
        check is followed; only the maildir's owner can make one.
        """
        path = self._dirs.get(folder)
        if path is None:
            base = folder_dir(self.root, folder, self.layout)
            link = _link_in(self.root, base)
            if link is not None:
                raise ValueError(f"{link} is a symbolic link: mailmirror never follows one "
                                 "inside a maildir")
            path = self._dirs[folder] = str(base)
        return path

    def _file_mode(self, folder: str) -> int:
        """New files get their folder's permissions without x bits, as Dovecot does."""
        mode = self._modes.get(folder)
        if mode is None:
            try:
                mode = os.stat(self._dir(folder)).st_mode & 0o666 or 0o600
            except OSError:
                mode = 0o600
            self._modes[folder] = mode
        return mode

    def _path(self, ref: Ref) -> str:
        sub, name = split_relname(ref.relname)
        return f"{self._dir(ref.folder)}/{sub}/{name}"

    def _tmp_path(self, folder: str) -> str:
        tmp_dir = self._tmp_dirs.get(folder)
        if tmp_dir is None:
            tmp_dir = f"{self._dir(folder)}/tmp"
            if os.path.isdir(self._dir(folder)):  # half made by another tool or a crash
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(f"{self._dir(folder)}/{sub}", mode=0o700, exist_ok=True)
            _remove_stale_tmp(tmp_dir, self._host)
            self._tmp_dirs[folder] = tmp_dir
        return f"{tmp_dir}/{time.time_ns()}.M{next(self._counter)}{self._tmp_tail}"

    def _flush(self) -> None:
        """The one durability barrier of a batch of deliveries (tests make it fail)."""
        sync_filesystem(str(self.root))

    def _fsync_dir(self, path: str) -> None:
        """Make the names just changed in directory `path` durable (tests make it fail)."""
        fsync_dir(path)

    def _sync_dirs(self, dirs: set[str], results: list[Result]) -> None:
        for path in dirs:
            try:
                self._fsync_dir(path)
                crashpoint.after("fsync dir")
            except OSError as exc:
                # the renames happened but may not survive a power cut: say so, keep going
                for i, result in enumerate(results):
                    if result.ok:
                        results[i] = Result(Outcome.FAILED, f"fsync of {path} failed: {exc}")
                return


def check_local(path: str | Path, layout: str = MAILDIRPP) -> Path:
    """Validate a local maildir path without changing anything; return it absolute.

    Raises ReplicaError naming the path and the fix when it is not (or cannot become) a maildir.
    Run it on both sides before opening either, so a bad second path leaves the first untouched.
    """
    root = Path(path).expanduser().absolute()
    if not root.exists():
        if not root.parent.is_dir():
            raise ReplicaError(f"{root.parent} does not exist: create it first, or check the path")
        return root
    if not root.is_dir():
        raise ReplicaError(f"{root} is not a directory: give the path of a maildir")
    present = {sub: (root / sub).is_dir() for sub in ("cur", "new", "tmp")}
    if all(present.values()):
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            raise ReplicaError(f"{root} is not readable and writable by this user: "
                               "fix its owner or permissions")
        return root
    if any(present.values()):
        absent = [str(root / sub) for sub, ok in present.items() if not ok]
        raise ReplicaError(f"{root} is not a complete maildir: create the missing "
                           f"directories with: mkdir {' '.join(absent)}")
    try:
        entries = [e for e in os.listdir(root) if e != ID_FILE]
    except OSError as exc:
        raise ReplicaError(f"cannot read {root}: {exc.strerror}") from exc
    if entries and layout == MAILDIRPP:
        raise ReplicaError(f"{root} is not a maildir (no cur/ new/ tmp/) and not empty: "
                           "check the path")
    return root


def _raw_of(name: bytes) -> bytes:
    """Under a legacy locale, the raw name (names.to_raw) of what os.fsdecode makes of `name`.
    A name that is not text in that encoding gets one that from_raw reads back as not
    UTF-8 either, so the scan skips and reports it, as it must: every other call would fail
    on its str."""
    text = os.fsdecode(name)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def open_local(path: str | Path, layout: str = MAILDIRPP, sep: str = ":",
               readonly: bool = False) -> LocalReplica:
    """Open a local maildir root, creating an empty one when it does not exist yet.

    `readonly` (for --dry-run) creates nothing: a missing root reads as an empty maildir.
    Raises ReplicaError as check_local does, or when the maildir cannot be created.
    """
    root = check_local(path, layout)
    if readonly:
        return LocalReplica(root, layout, sep, readonly=True)
    if not (root / "cur").is_dir():
        try:
            create_folder(root, INBOX, layout)
        except OSError as exc:
            raise ReplicaError(f"cannot create maildir {root}: {exc.strerror}") from exc
    return LocalReplica(root, layout, sep)


def _read_id(path: Path) -> str | None:
    try:
        return path.read_text("ascii").strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplicaError(f"cannot read replica id {path}: {exc}") from exc


def _read_or_create_id(root: Path, readonly: bool = False) -> str:
    path = root / ID_FILE
    found = _read_id(path)
    if found:
        return found
    new_id = uuid.uuid4().hex
    if readonly or not root.exists():
        return f"unsaved-{new_id}"  # a dry run invents an id rather than writing one
    tmp = root / "tmp" / f"{ID_FILE}.{os.getpid()}"
    try:
        _write_new(str(tmp), (new_id + "\n").encode(), durable=True)
        rename_noreplace(str(tmp), str(path))
        crashpoint.after("rename id")
        fsync_dir(str(root))
    except FileExistsError:
        os.unlink(tmp)
        return path.read_text("ascii").strip()
    except OSError as exc:
        raise ReplicaError(f"cannot create replica id {path}: {exc.strerror}") from exc
    return new_id


def _write_new(path: str, data: bytes, durable: bool = False, mode: int = 0o600,
               mtime_ns: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        crashpoint.after("create")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        crashpoint.after("write")
        if durable:
            os.fsync(fd)
            crashpoint.after("fsync")
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _remove_stale_tmp(tmp_dir: str, host: str) -> None:
    """Remove our own temp files left by a killed run (same host, process gone)."""
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return
    for name in names:
        if not name.endswith(f".{host}{TMP_SUFFIX}"):
            continue
        pid = name.split("P", 1)[-1].split(".", 1)[0]
        if pid.isdigit() and not is_process_alive(int(pid)):
            _unlink_quietly(os.path.join(tmp_dir, name))


def _link_in(root: Path, base: Path) -> Path | None:
    """The first symbolic link among base's components below root and base's subdirs."""
    steps = [root.joinpath(*base.relative_to(root).parts[:n])
             for n in range(1, len(base.relative_to(root).parts) + 1)]
    for path in [*steps, *(base / sub for sub in ("cur", "new", "tmp"))]:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return path
        except OSError:
            continue  # not there (yet): nothing to follow
    return None


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _describe(exc: Exception, ref: Ref) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left writing {ref.folder}/{ref.relname}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{ref.folder}/{ref.relname}: {reason}"
