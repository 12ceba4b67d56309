"""A replica reached over SFTP (asyncssh client, stock OpenSSH server): the fallback when the
remote has no mailmirror. It implements replica/base.py with the same rules as LocalReplica.

Every name and folder is validated on this side before it becomes a remote path. Each batch
runs as concurrent SFTP requests (bounded), never one round trip after another per message.
It must not clobber: publishing uses plain SSH_FXP_RENAME, never posix-rename (see _publish).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any, TypeVar, cast

from mailmirror.errors import ReplicaError
from mailmirror.maildir import keywords as kw
from mailmirror.maildir import quarantine
from mailmirror.maildir.folders import FS, INBOX, MAILDIRPP, SUBDIRS, InvalidFolder, check_folder
from mailmirror.maildir.folders import folder_dir as _folder_dir
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
    one_by_one,
)
from mailmirror.replica.local import ID_FILE, MAX_MESSAGE, TOMBSTONE_REWRITE_BYTES
from mailmirror.sync.model import Entry
from mailmirror.transport.loop import run_on
from mailmirror.transport.sshlib import asyncssh

T = TypeVar("T")
CONCURRENCY = 64  # requests in flight per batch: enough to hide latency, bounded memory
TMP_SUFFIX = ".mmsftp"  # distinct from LocalReplica's, so neither cleans up the other's files
STALE_TMP_SECONDS = 36 * 3600  # the Maildir spec's age for abandoned tmp/ files
_WRITE_NEW = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
_MODE_FILE = asyncssh.SFTPAttrs(permissions=0o600)
_MODE_DIR = asyncssh.SFTPAttrs(permissions=0o700)
_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)


class SftpReplica:
    """A Maildir root on an SFTP server; see replica/base.py for the contract.

    `sftp` must live on `loop`, which runs in another thread (transport/loop.py): every method
    blocks this thread until its requests finish. The replica does not own the client (several
    replicas may share one): the caller closes it.

    Granularity: SFTP v3 (OpenSSH) gives mtimes in whole seconds, so stamps and clock_ns() are
    multiples of 1e9. The engine trusts a stamp only when it is older than its 2 s margin by
    this same clock, so a change made in the second of a recorded stamp cannot hide.
    """

    remote = True

    def __init__(self, sftp: asyncssh.SFTPClient, loop: asyncio.AbstractEventLoop, root: str,
                 layout: str = MAILDIRPP, sep: str = ":", readonly: bool = False,
                 label: str | None = None) -> None:
        self.sftp = sftp
        self.loop = loop
        self.root = PurePosixPath(root)
        self.layout = layout
        self.sep = sep
        self.readonly = readonly
        self.label = label or f"sftp:{root}"
        self._id: str | None = None
        self._host = os.uname().nodename.replace("/", "_").replace(":", "_")
        self._serial = 0
        self._cleaned: set[str] = set()
        self._checked: dict[str, PurePosixPath] = {}  # folders found free of symbolic links
        self._offset_s: float | None = None  # remote clock minus ours, from the last clock_ns

    # -- the Replica protocol ------------------------------------------------------------
    @property
    def id(self) -> str:
        """The replica id, read from (or, on first use, written to) the root's id file."""
        if self._id is None:
            self._id = self._run(self._read_or_create_id())
        return self._id

    def stored_id(self) -> str | None:
        return self._id if self._id is not None else self._run(self._read_id())

    def clock_ns(self) -> int:
        """The remote clock: the mtime of a file freshly created in the root's tmp/.

        The server's clock is the one its mtimes come from; ours may be off by minutes. A
        read-only replica (dry run) may not write, so it uses this machine's clock instead.
        """
        if self.readonly:
            return time.time_ns()
        return self._run(self._remote_clock_ns())

    def stamps(self) -> dict[str, Stamp]:
        return self._run(self._stamps())

    def list(self, folders: Sequence[str],
             subdirs: Sequence[str] = MESSAGE_SUBDIRS) -> dict[str, list[str]]:
        if not set(subdirs) <= set(MESSAGE_SUBDIRS):
            raise ValueError(f"not message subdirectories: {subdirs!r}")
        return self._run(self._list(folders, subdirs))

    def listings(self, folders: Sequence[tuple[str, Sequence[str]]]
                 ) -> Iterator[tuple[str, list[bytes]]]:
        return one_by_one(self, folders)

    def sizes(self, refs: Sequence[Ref]) -> list[int | None]:
        return self._run(self._gather(self._size(ref) for ref in refs))

    def keywords(self, folder: str) -> dict[str, str]:
        async def read() -> dict[str, str]:
            return await self._keywords(await self._checked_dir(folder))

        return self._run(read())

    def add_keywords(self, folder: str, names: Iterable[str]) -> dict[str, str]:
        async def add() -> dict[str, str]:
            return await self._add_keywords(await self._checked_dir(folder), set(names))

        return self._run(add())

    def tombstones(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        found = self._run(self._read_tombstones())
        return {k: Entry(found[k][1], found[k][2], found[k][3]) for k in keys if k in found}

    def add_tombstones(self, items: Sequence[tuple[str, Entry]]) -> None:
        if items and not self.readonly:
            self._run(self._add_tombstones(items))

    def create_folder(self, folder: str) -> None:
        self._run(self._create_folder(folder))

    def remove_folder(self, folder: str) -> bool:
        if folder == INBOX:
            return False
        return self._run(self._remove_folder(folder))

    def read(self, refs: Sequence[Ref]) -> list[Message | Result]:
        return self._run(self._gather(self._read(ref) for ref in refs))

    def deliver_later(self, items: Sequence[Delivery]) -> Callable[[], list[Result]]:
        return delivered_now(self, items)

    def deliver(self, items: Sequence[Delivery]) -> list[Result]:
        return self._run(self._deliver(items))

    def rename(self, items: Sequence[Rename]) -> list[Result]:
        """Items of one batch run concurrently: the engine never chains names within a batch."""
        return self._run(self._rename_all(items))

    def delete(self, refs: Sequence[Ref]) -> list[Result]:
        return self._run(self._delete_all(refs))

    def prune_quarantine(self, keep_days: int) -> int:
        if self.readonly:
            return 0
        return self._run(self._prune_quarantine(keep_days))

    def close(self) -> None:
        """Nothing to release: the SFTP client belongs to whoever started it."""

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the loop; whole-replica failures (connection, root) become ReplicaError."""
        try:
            return run_on(self.loop, coro)
        except _LOST as exc:
            raise ReplicaError(f"{self.label}: SFTP connection lost ({exc.reason})") from None
        except asyncssh.SFTPError as exc:
            raise ReplicaError(f"{self.label}: {exc.reason}") from None
        except asyncssh.Error as exc:
            raise ReplicaError(f"{self.label}: connection lost ({exc.reason})") from None
        except OSError as exc:
            raise ReplicaError(f"{self.label}: connection lost ({exc.strerror or exc})") from None

    async def _gather(self, coros: Iterable[Awaitable[T]]) -> list[T]:
        """Await all, at most CONCURRENCY at a time, in order; the first exception is raised
        after every coroutine has finished (none is left running behind the caller's back)."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(coro: Awaitable[T]) -> T:
            async with gate:
                return await coro

        done = await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
        for item in done:
            if isinstance(item, BaseException):
                raise item
        return cast("list[T]", done)

    def _dir(self, folder: str) -> PurePosixPath:
        # folder_dir only joins (it touches no disk): give it our POSIX path as a Path
        return _folder_dir(self.root, folder, self.layout)

    async def _checked_dir(self, folder: str) -> PurePosixPath:
        """The folder's directory, validated once per run, as LocalReplica._dir does.

        ValueError for a symbolic link on the way (the folder, a parent below the root, or its
        cur/ new/ tmp/): sftp-server follows links, which could lead out of the root. Known
        race: a link made after this check is followed; only the maildir's owner can make one.
        """
        path = self._checked.get(folder)
        if path is None:
            base = self._dir(folder)
            parts = base.relative_to(self.root).parts
            steps = [self.root.joinpath(*parts[:n]) for n in range(1, len(parts) + 1)]
            steps += [base / sub for sub in SUBDIRS]
            found = await self._gather(self._stat(step, follow=False) for step in steps)
            for step, attrs in zip(steps, found, strict=True):
                if attrs is not None and attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                    raise ValueError(f"{step} is a symbolic link: mailmirror never follows one "
                                     "inside a maildir")
            path = self._checked[folder] = base
        return path

    async def _path(self, ref: Ref) -> bytes:
        sub, name = split_relname(ref.relname)
        return _b(await self._checked_dir(ref.folder) / sub / name)


    async def _exists(self, path: bytes) -> bool:
        try:
            await self.sftp.lstat(path)
        except asyncssh.SFTPNoSuchFile:
            return False
        return True

    async def _stat(self, path: PurePosixPath, follow: bool = True) -> asyncssh.SFTPAttrs | None:
        try:
            return await (self.sftp.stat if follow else self.sftp.lstat)(_b(path))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied):
            return None

    async def _remove_quietly(self, path: bytes) -> None:
        try:
            await self.sftp.remove(path)
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)

    async def _write_new(self, path: bytes, data: bytes, mtime_ns: int | None = None) -> None:
        """Create `path` (never an existing file), write, fsync; remove it again on failure."""
        handle = await self.sftp.open(path, _WRITE_NEW, _MODE_FILE, encoding=None)
        try:
            await handle.write(data, 0)
            if mtime_ns is not None:
                seconds = mtime_ns // 1_000_000_000
                await handle.setstat(asyncssh.SFTPAttrs(atime=seconds, mtime=seconds))
            await handle.fsync()
        except BaseException:
            await handle.close()
            await self._remove_quietly(path)
            raise
        await handle.close()

    async def _fsync_dir(self, path: str) -> None:
        # OpenSSH opens a directory read-only like a file; fsync@openssh.com then flushes it,
        # so a published name survives a power cut.
        handle = await self.sftp.open(path.encode("utf-8", "surrogateescape"), "rb",
                                      encoding=None)
        try:
            await handle.fsync()
        finally:
            await handle.close()

    async def _sync_dirs(self, dirs: set[str], results: list[Result]) -> None:
        try:
            await self._gather(self._fsync_dir(d) for d in dirs)
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            for i, result in enumerate(results):
                if result.ok:  # done, but perhaps not durable: say so, as LocalReplica does
                    results[i] = Result(Outcome.FAILED, f"directory fsync failed: {exc.reason}")

    # -- identity and clock --------------------------------------------------------------
    async def _read_id(self) -> str | None:
        try:
            text = (await self._read_small(_b(self.root / ID_FILE))).decode("ascii").strip()
        except asyncssh.SFTPNoSuchFile:
            return None
        except UnicodeDecodeError as exc:
            raise ReplicaError(f"{self.label}: cannot read replica id {ID_FILE}: {exc}") from None
        return text or None

    async def _read_or_create_id(self) -> str:
        path = _b(self.root / ID_FILE)
        found = await self._read_id()
        if found:
            return found
        new_id = uuid.uuid4().hex
        if self.readonly or await self._stat(self.root) is None:
            return f"unsaved-{new_id}"  # a dry run invents an id rather than writing one
        tmp = _b(self.root / "tmp" / f"{ID_FILE}.{secrets.token_hex(8)}")
        await self._write_new(tmp, (new_id + "\n").encode())
        outcome = await self._publish(tmp, path)
        if outcome.outcome is Outcome.EXISTS:  # another run created it first: use theirs
            return (await self._read_small(path)).decode("ascii").strip()
        if not outcome.ok:
            raise ReplicaError(f"{self.label}: cannot create replica id {ID_FILE}: "
                               f"{outcome.detail}")
        await self._fsync_dir(str(self.root))
        return new_id

    async def _same_file(self, one: bytes, other: bytes) -> bool:
        """Whether both files exist and hold the same bytes (read whole: a rare check)."""
        try:
            sizes = [(await self.sftp.lstat(path)).size for path in (one, other)]
            if sizes[0] != sizes[1]:
                return False
            contents = []
            for path in (one, other):
                async with await self.sftp.open(path, "rb", encoding=None) as handle:
                    contents.append(await handle.read())
        except asyncssh.SFTPError:
            return False
        return contents[0] == contents[1]

    async def _read_small(self, path: bytes) -> bytes:
        async with await self.sftp.open(path, "rb", encoding=None) as handle:
            return await handle.read(1 << 16)

    async def _remote_clock_ns(self) -> int:
        path = _b(self.root / "tmp" / f"mailmirror-clock.{secrets.token_hex(8)}{TMP_SUFFIX}")
        handle = await self.sftp.open(path, _WRITE_NEW, _MODE_FILE, encoding=None)
        try:
            attrs = await handle.stat()
        finally:
            await handle.close()
            await self._remove_quietly(path)
        now = _mtime_ns(attrs)
        self._offset_s = now / 1e9 - time.time()
        return now

    # -- folders -------------------------------------------------------------------------
    async def _stamps(self) -> dict[str, Stamp]:
        if self.readonly and await self._stat(self.root) is None:
            return {}
        candidates = [(INBOX, self.root)]
        if self.layout == MAILDIRPP:
            for entry in await self.sftp.readdir(_b(self.root)):
                name = _s(entry.filename)
                if not name.startswith(".") or name in (".", ".."):
                    continue
                if entry.attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
                    continue  # readdir attrs come from lstat: a symlink is not followed
                folder = name[1:].replace(".", "/")
                if _is_valid(folder, self.layout):
                    candidates.append((folder, self.root / name))
        else:
            candidates.extend(await self._walk_fs(self.root, ""))
        subs = await self._gather(self._stat(path / sub) for _, path in candidates
                                  for sub in MESSAGE_SUBDIRS)
        result = {}
        for i, (folder, _) in enumerate(candidates):
            cur, new = subs[2 * i], subs[2 * i + 1]
            if cur is not None and cur.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                result[folder] = Stamp(_mtime_ns(cur), _mtime_ns(new) if new else 0)
        return result

    async def _walk_fs(self, path: PurePosixPath, prefix: str) -> list[tuple[str, PurePosixPath]]:
        """Every directory below `path` (not cur/new/tmp, no dot names, no symlinks)."""
        found: list[tuple[str, PurePosixPath]] = []
        for entry in await self.sftp.readdir(_b(path)):
            name = _s(entry.filename)
            if (name.startswith(".") or (name in SUBDIRS)
                    or entry.attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY):
                continue
            folder = prefix + name
            if _is_valid(folder, self.layout):
                found.append((folder, path / name))
        deeper = await self._gather(self._walk_fs(p, f + "/") for f, p in found)
        return found + [item for level in deeper for item in level]

    async def _list(self, folders: Sequence[str], subdirs: Sequence[str]) -> dict[str, list[str]]:
        for folder in folders:
            self._dir(folder)  # an invalid name stays a ValueError
        try:
            dirs = await self._gather(self._checked_dir(folder) for folder in folders)
        except ValueError as exc:
            # listing through it would read mail from elsewhere; skipping it would read as
            # the folder emptied: stop instead
            raise ReplicaError(f"{self.label}: {exc}; replace it with a directory") from None
        paths = [(folder, sub, path / sub) for folder, path in zip(folders, dirs, strict=True)
                 for sub in subdirs]
        names = await self._gather(self._listdir(p) for _, _, p in paths)
        listing: dict[str, list[str]] = {folder: [] for folder in folders}
        for (folder, sub, _), entries in zip(paths, names, strict=True):
            listing[folder].extend(f"{sub}/{n}" for n in entries if n[0] != ".")
        return listing

    async def _listdir(self, path: PurePosixPath) -> list[str]:
        try:
            return [_s(n) for n in await self.sftp.listdir(_b(path))]
        except asyncssh.SFTPNoSuchFile:
            return []

    async def _create_folder(self, folder: str) -> None:
        path = await self._checked_dir(folder)  # refuses a symbolic link in the way
        if self.layout == FS and folder != INBOX:
            parts = folder.split("/")
            for depth in range(1, len(parts)):
                await self._mkdir(self.root.joinpath(*parts[:depth]))
        await self._mkdir(path)
        await self._gather(self._mkdir(path / sub) for sub in SUBDIRS)
        if folder != INBOX:
            marker = _b(path / "maildirfolder")
            flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
            async with await self.sftp.open(marker, flags, _MODE_FILE, encoding=None):
                pass

    async def _mkdir(self, path: PurePosixPath) -> None:
        try:
            await self.sftp.mkdir(_b(path), _MODE_DIR)
        except asyncssh.SFTPError as exc:  # OpenSSH says only "Failure" for EEXIST: look
            _reraise_lost(exc)
            attrs = await self._stat(path)
            if attrs is None or attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
                raise

    async def _remove_folder(self, folder: str) -> bool:
        try:
            path = await self._checked_dir(folder)
        except ValueError:
            return False  # what a link leads to is outside the maildir, or may be
        try:
            listed = await self._gather(self.sftp.listdir(_b(path / sub)) for sub in SUBDIRS)
            if any(n not in (b".", b"..") for names in listed for n in names):
                return False
            await self._gather(self.sftp.rmdir(_b(path / sub)) for sub in SUBDIRS)
            for name in map(_s, await self.sftp.listdir(_b(path))):
                if name == "maildirfolder" or name.startswith(("dovecot", "courierimap",
                                                              "maildirsize")):
                    await self.sftp.remove(_b(path / name))
            await self.sftp.rmdir(_b(path))
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            return False
        return True

    # -- keywords ------------------------------------------------------------------------
    async def _keywords(self, path: PurePosixPath) -> dict[str, str]:
        try:
            data = await self._read_small(_b(path / kw.KEYWORDS_FILE))
        except asyncssh.SFTPNoSuchFile:
            return {}
        return kw.parse_keywords(data.decode("utf-8", "replace"))

    async def _add_keywords(self, path: PurePosixPath, names: set[str]) -> dict[str, str]:
        """As keywords.add_keywords: under the dot-lock, write the lock file, rename it over."""
        lock = _b(path / (kw.KEYWORDS_FILE + kw.LOCK_SUFFIX))
        handle = await self._take_lock(lock)
        published = False
        try:
            mapping = await self._keywords(path)
            if names <= set(mapping.values()):
                return mapping
            mapping = kw.assign_letters(mapping, names)
            await handle.write(kw.format_keywords(mapping).encode(), 0)
            await handle.fsync()
            await handle.close()
            target = _b(path / kw.KEYWORDS_FILE)
            try:
                await self.sftp.posix_rename(lock, target)  # replacing is the point here
            except asyncssh.SFTPOpUnsupported:
                # no atomic replace on this server: readers may briefly see no file at all
                await self._remove_quietly(target)
                await self.sftp.rename(lock, target)
            published = True
            return mapping
        finally:
            await handle.close()
            if not published:
                await self._remove_quietly(lock)

    async def _take_lock(self, lock: bytes) -> asyncssh.SFTPClientFile:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await self.sftp.open(lock, _WRITE_NEW, _MODE_FILE, encoding=None)
            except asyncssh.SFTPFailure:
                pass  # OpenSSH reports EEXIST as a plain failure
            try:
                age = await self._remote_now() - (await self.sftp.lstat(lock)).mtime
                if age > kw.STALE_LOCK_SECONDS:
                    await self._remove_quietly(lock)
                    continue
            except asyncssh.SFTPNoSuchFile:
                continue
            if time.monotonic() > deadline:
                raise ReplicaError(f"{self.label}: {_s(lock)} is held by another program: "
                                   "retry later, or remove it if nothing is running")
            await asyncio.sleep(0.05)

    async def _remote_now(self) -> float:
        if self._offset_s is None:
            await self._remote_clock_ns()
        return time.time() + cast(float, self._offset_s)

    # -- tombstones (see maildir/tombstones.py) -----------------------------------------
    async def _tombstone_text(self) -> str:
        try:
            async with await self.sftp.open(_b(self.root / TOMBSTONES_FILE), "rb",
                                            encoding=None) as handle:
                return (await handle.read()).decode("utf-8", "replace")
        except asyncssh.SFTPNoSuchFile:
            return ""

    async def _read_tombstones(self) -> dict[str, tuple[int, str, str, frozenset[str]]]:
        return parse_tombstones(await self._tombstone_text())

    async def _add_tombstones(self, items: Sequence[tuple[str, Entry]]) -> None:
        """Append durably (the server opens with O_APPEND, so concurrent writers interleave
        whole writes); past TOMBSTONE_REWRITE_BYTES, rewrite without expired lines."""
        now = int(await self._remote_now())
        lines = format_deletions(now, ((k, e.folder, e.subdir, e.flags)
                                       for k, e in items)).encode()
        path = _b(self.root / TOMBSTONES_FILE)
        async with await self.sftp.open(path, "ab", _MODE_FILE, encoding=None) as handle:
            await handle.write(lines)
            await handle.fsync()
            size = (await handle.stat()).size or 0
        if size <= TOMBSTONE_REWRITE_BYTES:
            return
        kept = prune_tombstones(await self._tombstone_text(), now)
        tmp = _b(self.root / "tmp" / f"{TOMBSTONES_FILE}.{secrets.token_hex(8)}{TMP_SUFFIX}")
        await self._write_new(tmp, kept.encode())
        await self.sftp.posix_rename(tmp, path)  # replacing is the point here

    # -- messages ------------------------------------------------------------------------
    async def _size(self, ref: Ref) -> int | None:
        try:
            return (await self.sftp.lstat(await self._path(ref))).size
        except ValueError:
            return None
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            return None

    async def _read(self, ref: Ref) -> Message | Result:
        try:
            path = await self._path(ref)
            # lstat first: sftp-server would block on opening a FIFO and follows symlinks
            attrs = await self.sftp.lstat(path)
            if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                raise ValueError("not a regular file")
            size = attrs.size or 0
            if size > MAX_MESSAGE:
                raise ValueError(f"larger than {MAX_MESSAGE} bytes")
            async with await self.sftp.open(path, "rb", encoding=None) as handle:
                data = await handle.read(size, 0) if size else b""
            if len(data) != size:
                raise ValueError("it changed while being read")
            return Message(data, _mtime_ns(attrs))
        except asyncssh.SFTPNoSuchFile:
            return Result(Outcome.GONE)
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            return Result(Outcome.FAILED, _describe(exc, ref))
        except ValueError as exc:
            return Result(Outcome.FAILED, _describe(exc, ref))

    async def _deliver(self, items: Sequence[Delivery]) -> list[Result]:
        for folder in {item.target.folder for item in items} - self._cleaned:
            self._cleaned.add(folder)
            try:
                await self._remove_stale_tmp(await self._checked_dir(folder) / "tmp")
            except asyncssh.SFTPError as exc:
                _reraise_lost(exc)  # an unreadable tmp/ fails each delivery below
            except ValueError:
                pass  # an invalid folder: each delivery into it fails below
        done = await self._gather(self._deliver_one(item) for item in items)
        results = [result for result, _ in done]
        await self._sync_dirs({d for _, d in done if d is not None}, results)
        return results

    async def _deliver_one(self, item: Delivery) -> tuple[Result, str | None]:
        """Write one message into tmp/ and fsync it, then publish it: its data is on disk
        before its name appears. Returns the result and the directory that got the name."""
        try:
            target = await self._path(item.target)
            tmp = self._tmp_path(item.target.folder)
            await self._write_new(tmp, item.data, item.mtime_ns)
        except asyncssh.SFTPOpUnsupported:
            return Result(Outcome.FAILED, "the server cannot fsync (no fsync@openssh.com): "
                          "mail would not be durable, so none is delivered"), None
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            return Result(Outcome.FAILED, _describe(exc, item.target)), None
        except ValueError as exc:
            return Result(Outcome.FAILED, _describe(exc, item.target)), None
        result = await self._publish(tmp, target)
        if result.ok:
            return result, posixpath.dirname(_s(target))
        if result.outcome is Outcome.FAILED:
            result = Result(Outcome.FAILED, f"{_ref_text(item.target)}: {result.detail}")
        return result, None

    async def _publish(self, tmp: bytes, target: bytes) -> Result:
        """Give a written tmp/ file its name without clobbering; the tmp name is gone after.

        Plain SSH_FXP_RENAME: OpenSSH implements it as link() + unlink(), and link() refuses
        an existing target. posix-rename@openssh.com would silently replace it.
        """
        try:
            await self.sftp.rename(tmp, target)
            return OK
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            await self._remove_quietly(tmp)
            if await self._exists(target):
                return Result(Outcome.EXISTS)
            return Result(Outcome.FAILED, exc.reason)

    async def _rename_all(self, items: Sequence[Rename]) -> list[Result]:
        results = await self._gather(self._rename(item) for item in items)
        touched = set()
        for item, result in zip(items, results, strict=True):
            if result.ok:
                touched.add(str(self._dir(item.source.folder) / item.source.relname.split("/")[0]))
                touched.add(str(self._dir(item.target.folder) / item.target.relname.split("/")[0]))
        await self._sync_dirs(touched, results)
        return results

    async def _rename(self, item: Rename) -> Result:
        try:
            source, target = await self._path(item.source), await self._path(item.target)
            await self.sftp.rename(source, target)  # no clobber: see _publish
            return OK
        except ValueError as exc:
            return Result(Outcome.FAILED, _describe(exc, item.source))
        except asyncssh.SFTPError as exc:
            _reraise_lost(exc)
            # the status alone is ambiguous (OpenSSH: "no such file" also for a missing
            # target folder, "failure" for an existing target): look at both names
            if not await self._exists(source):
                return Result(Outcome.GONE)
            if await self._exists(target):
                return Result(Outcome.EXISTS)
            return Result(Outcome.FAILED, _describe(exc, item.target))

    async def _delete_all(self, refs: Sequence[Ref]) -> list[Result]:
        """Move each message into the quarantine (maildir/quarantine.py), never remove it."""
        day = quarantine.day_name(await self._remote_now())
        qdir = quarantine.quarantine_dir(self.root, self.layout)
        made: dict[PurePosixPath, asyncio.Task[None]] = {}

        async def one(ref: Ref) -> tuple[Result, PurePosixPath | None]:
            try:
                source = await self._path(ref)
                target = quarantine.entry_path(qdir, day, ref.folder, ref.relname)
                if not await self._exists(source):
                    return Result(Outcome.GONE), None
                if target.parent not in made:  # one mkdir chain per directory, shared
                    made[target.parent] = asyncio.ensure_future(self._makedirs(target.parent))
                await made[target.parent]
                await self.sftp.rename(source, _b(target))  # no clobber: see _publish
                return OK, target.parent
            except ValueError as exc:
                return Result(Outcome.FAILED, _describe(exc, ref)), None
            except asyncssh.SFTPError as exc:
                _reraise_lost(exc)
                if not await self._exists(source):
                    return Result(Outcome.GONE), None
                if await self._same_file(source, _b(target)):
                    # quarantined twice today, the same message: it is there already
                    await self.sftp.remove(source)
                    return OK, target.parent
                return Result(Outcome.FAILED, _describe(exc, ref)), None

        done = await self._gather(one(ref) for ref in refs)
        results = [result for result, _ in done]
        touched = {str(self._dir(ref.folder) / ref.relname.split("/")[0])
                   for ref, result in zip(refs, results, strict=True) if result.ok}
        touched.update(str(d) for _, d in done if d is not None)
        await self._sync_dirs(touched, results)
        return results

    async def _makedirs(self, path: PurePosixPath) -> None:
        """mkdir -p below the root (the root itself exists)."""
        missing = []
        while path != self.root and await self._stat(path) is None:
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            await self._mkdir(directory)

    async def _prune_quarantine(self, keep_days: int) -> int:
        qdir = quarantine.quarantine_dir(self.root, self.layout)
        if await self._stat(qdir) is None:
            return 0
        names = [_s(n) for n in await self.sftp.listdir(_b(qdir))]
        days = quarantine.expired_days(names, await self._remote_now(), keep_days)
        counts = await self._gather(self._remove_tree(qdir / day) for day in days)
        return sum(counts)

    async def _remove_tree(self, path: PurePosixPath) -> int:
        """Remove a directory tree without following symlinks; the number of files removed."""
        removed = 0
        for entry in await self.sftp.readdir(_b(path)):
            name = _s(entry.filename)
            if name in (".", ".."):
                continue
            if entry.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                removed += await self._remove_tree(path / name)
            else:
                await self._remove_quietly(_b(path / name))
                removed += 1
        await self.sftp.rmdir(_b(path))
        return removed

    async def _check_root(self) -> None:
        """open_sftp's checks, as local.check_local makes them; creates INBOX when allowed."""
        root, label = self.root, self.label
        attrs = await self._stat(root)
        if attrs is None:
            if await self._stat(root.parent) is None:
                raise ReplicaError(f"{label}: {root.parent} does not exist there: create it first, "
                                   "or check the path")
            if not self.readonly:
                await self._create_folder(INBOX)
            return
        if attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise ReplicaError(f"{label}: {root} is not a directory: give the path of a maildir")
        subs = await self._gather(self._stat(root / sub) for sub in SUBDIRS)
        present = [s is not None and s.type == asyncssh.FILEXFER_TYPE_DIRECTORY for s in subs]
        if all(present):
            return
        if any(present):
            absent = [str(root / sub) for sub, ok in zip(SUBDIRS, present, strict=True) if not ok]
            raise ReplicaError(f"{label}: {root} is not a complete maildir: create the missing "
                               f"directories with: mkdir {' '.join(absent)}")
        names = map(_s, await self.sftp.listdir(_b(root)))
        entries = [n for n in names if n not in (".", "..", ID_FILE)]
        if entries and self.layout == MAILDIRPP:
            raise ReplicaError(f"{label}: {root} is not a maildir (no cur/ new/ tmp/) and not "
                               "empty: check the path")
        if not self.readonly:
            await self._create_folder(INBOX)

    def _tmp_path(self, folder: str) -> bytes:
        self._serial += 1
        name = (f"{time.time_ns()}.M{self._serial}R{secrets.token_hex(4)}.{self._host}"
                f"{TMP_SUFFIX}")
        return _b(self._dir(folder) / "tmp" / name)

    async def _remove_stale_tmp(self, tmp_dir: PurePosixPath) -> None:
        """Remove our temp files left by a killed run, once they are older than 36 hours:
        a live run of another client may still be writing younger ones."""
        limit = await self._remote_now() - STALE_TMP_SECONDS
        entries = await self.sftp.readdir(_b(tmp_dir))
        stale = [e.filename for e in entries
                 if _s(e.filename).endswith(TMP_SUFFIX) and (e.attrs.mtime or 0) < limit]
        await self._gather(self._remove_quietly(_b(tmp_dir / _s(n))) for n in stale)


def open_sftp(sftp: asyncssh.SFTPClient, loop: asyncio.AbstractEventLoop, root: str,
              layout: str = MAILDIRPP, sep: str = ":", readonly: bool = False,
              label: str | None = None) -> SftpReplica:
    """Open a remote maildir root over SFTP, creating an empty one when it does not exist yet.

    The same checks as replica/local.py's open_local, made remotely. `readonly` (--dry-run)
    creates nothing. Raises ReplicaError naming the path and the fix, or when the connection
    fails.
    """
    replica = SftpReplica(sftp, loop, root, layout, sep, readonly, label)
    replica._run(replica._check_root())
    return replica


def _reraise_lost(exc: asyncssh.SFTPError) -> None:
    """A lost connection is never an item's failure: let it reach _run as a ReplicaError."""
    if isinstance(exc, _LOST):
        raise exc


def _is_valid(folder: str, layout: str) -> bool:
    try:
        check_folder(folder, layout)
    except InvalidFolder:
        return False
    return True


def _mtime_ns(attrs: asyncssh.SFTPAttrs) -> int:
    if attrs.mtime_ns is not None:
        return attrs.mtime_ns
    return (attrs.mtime or 0) * 1_000_000_000


def _b(path: PurePosixPath) -> bytes:
    """Remote paths travel as bytes: names that are not UTF-8 survive the round trip."""
    return str(path).encode("utf-8", "surrogateescape")


def _s(name: bytes | str) -> str:
    return name if isinstance(name, str) else name.decode("utf-8", "surrogateescape")


def _ref_text(ref: Ref) -> str:
    return f"{ref.folder}/{ref.relname}"


def _describe(exc: Exception, ref: Ref) -> str:
    reason = exc.reason if isinstance(exc, asyncssh.SFTPError) else str(exc)
    if isinstance(exc, asyncssh.SFTPFailure):
        # OpenSSH's sftp-server answers a full disk (and most else) with a bare "Failure"
        reason += " (the server says no more: a full disk or a quota there, most often)"
    return f"{_ref_text(ref)}: {reason}"
