"""A replica served by `mailmirror agent` on the far side of a byte stream (SSH, or a pipe).

It turns each Replica call into one request frame carrying the whole batch, so a sync costs a
number of round trips bounded by its batches, never one per message. Every reply is checked
before use (names, folders, counts, sizes): a broken or hostile agent gives a ReplicaError, and
no name it sends reaches a local path unvalidated.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol, TypeVar

from mailmirror.errors import ReplicaError, printable
from mailmirror.maildir.folders import InvalidFolder, check_folder
from mailmirror.maildir.names import (
    MESSAGE_SUBDIRS,
    InvalidName,
    from_raw,
    is_listable,
    split_names,
    to_raw,
)
from mailmirror.replica.base import (
    Delivery,
    Message,
    Outcome,
    Ref,
    Rename,
    Result,
    Stamp,
)
from mailmirror.sync.model import Entry
from mailmirror.transport.protocol import (
    VERSION,
    Frame,
    ProtocolError,
    TruncatedFrame,
    frame_pieces,
    is_mtime,
    read_frame,
    split_data,
)

MAX_LISTED = 10_000_000
LIST_AHEAD = 2  # listing requests in flight (listings())
TOMBSTONE_SLICE = 5000  # keys per tombstones request
OUTCOMES = frozenset(o.value for o in Outcome)
NOT_READ = frozenset((Outcome.GONE.value, Outcome.FAILED.value))  # a read item's, but data
REFUSABLE = frozenset(("create_folder", "keywords", "add_keywords"))
"""Requests whose refusal (`kind: value`) is a ValueError, as LocalReplica raises: their
callers handle it. Any other request's error ends the run (ReplicaError)."""
T = TypeVar("T")


class WatchUnavailable(ReplicaError):
    """The agent cannot watch its maildir (the kernel's inotify limits): poll instead."""


class Channel(Protocol):
    """A two-way byte stream to an agent."""

    def send(self, pieces: Sequence[bytes]) -> None:
        """Write one frame given as pieces (not joined first: see SshChannel.send)."""
        ...

    def read_exactly(self, n: int) -> bytes: ...

    def answered(self) -> None:
        """The agent answered hello: from now on a reply may take as long as work does (a
        hello is bounded by the connect timeout: a remote command that never answers must
        not hang the sync)."""
        ...

    def close(self) -> None: ...


class AgentReplica:
    """The client side of the agent protocol; see the module docstring."""

    remote = True

    def __init__(self, channel: Channel, label: str, layout: str = "maildir++",
                 sep: str = ":", readonly: bool = False) -> None:
        self.channel = channel
        self.label = label
        self.layout = layout
        self.sep = sep
        self._ids = itertools.count(1)
        self._sent: dict[int, str] = {}  # request id -> op, while its reply is not claimed
        self._early: dict[int, Frame] = {}
        self._broken = False  # the stream failed once: see _guard
        try:
            hello = self._call("hello", version=VERSION, layout=layout, sep=sep,
                               readonly=readonly)
        except ReplicaError as exc:
            if "version" in str(exc):
                raise ReplicaError(f"{exc}: install the same mailmirror version on both "
                                   "sides") from None
            raise
        if not isinstance(hello, dict) or hello.get("version") != VERSION:
            theirs = _said(hello.get("version") if isinstance(hello, dict) else "?")
            raise ReplicaError(f"{label}: the agent speaks protocol version {theirs}, "
                               f"this client {VERSION}: install the same mailmirror version there")
        self.channel.answered()
        self.remote_root = _said(hello.get("label", ""))
        self._id: str | None = None
        self._watching = False

    @property
    def id(self) -> str:
        """The replica id; the agent creates the id file on first use, as LocalReplica does."""
        if self._id is None:
            self._id = self._valid_id(self._call("id"))
        return self._id

    def _valid_id(self, rid: object) -> str:
        if not isinstance(rid, str) or not 0 < len(rid) <= 100 or not rid.isprintable():
            raise ReplicaError(f"{self.label}: the agent sent an invalid replica id")
        return rid

    def stored_id(self) -> str | None:
        if self._id is not None:
            return self._id
        rid = self._call("id", create=False)
        return None if rid is None else self._valid_id(rid)

    # -- plumbing ------------------------------------------------------------------------
    def _exchange(self, op: str, data: Sequence[bytes] = (),
                  **fields: object) -> tuple[object, bytes]:
        return self._receive(self._send(op, data, **fields))

    def _send(self, op: str, data: Sequence[bytes] = (), **fields: object) -> int:
        """Send one request; its reply is read by _receive, replies come in request order."""
        rid = next(self._ids)
        self._sent[rid] = op
        self._guard(lambda: self.channel.send(frame_pieces({"id": rid, "op": op, **fields},
                                                           *data)))
        return rid

    def _receive(self, rid: int) -> tuple[object, bytes]:
        header, data = self._reply(rid)
        return header.get("result"), data

    def _reply(self, rid: int) -> tuple[dict, bytes]:
        """The reply to request `rid`: its header and data. Replies come in request order;
        those of earlier requests not claimed yet (listings fetched ahead) wait in
        self._early."""
        frame = self._early.pop(rid, None)
        while frame is None:
            frame = self._guard(lambda: read_frame(self.channel.read_exactly))
            if frame is None:
                raise ReplicaError(f"{self.label}: the agent closed the connection: is "
                                   "mailmirror installed there (see --remote-command), and can "
                                   "it read the maildir?")
            early = frame.header.get("id")
            if isinstance(early, int) and early < rid and early in self._sent:
                self._early[early] = frame
                frame = None
        op = self._sent.pop(rid, "")
        header = frame.header
        if not header.get("ok"):
            message = f"{self.label}: {_said(header.get('error', 'agent error'))}"
            if header.get("kind") == "value" and op in REFUSABLE:
                raise ValueError(message)  # a refused name or folder, as LocalReplica raises
            raise ReplicaError(message)
        if header.get("id") != rid:
            raise ReplicaError(f"{self.label}: the agent answered out of order")
        return header, frame.data

    def _guard(self, io: Callable[[], T]) -> T | None:
        """Run one send or receive, turning a broken stream into a ReplicaError (None: the
        stream was closed under a send, which the receive then reports). After a failure
        the stream is not trusted again: close() says no bye (an agent that stopped
        answering would hold the run for another I/O timeout)."""
        try:
            return io()
        except TruncatedFrame:
            self._broken = True
            raise ReplicaError(f"{self.label}: connection lost in the middle of a reply; "
                               "nothing half-written was published: run the sync again") from None
        except ProtocolError as exc:
            self._broken = True
            raise ReplicaError(f"{self.label}: the agent sent an invalid reply ({exc}): "
                               "is `mailmirror agent` the same version there?") from None
        except (BrokenPipeError, ConnectionResetError):
            self._broken = True
            return None
        except OSError as exc:
            self._broken = True
            raise ReplicaError(f"{self.label}: connection lost ({exc})") from None
        except ReplicaError:  # the channel's own: a timeout, a lost connection
            self._broken = True
            raise

    def _call(self, op: str, **fields: object) -> object:
        return self._exchange(op, **fields)[0]

    def _bad(self, what: str) -> ReplicaError:
        return ReplicaError(f"{self.label}: the agent sent an invalid {what}; refusing to "
                            "continue (nothing was written for it)")

    def _results(self, raw: object, count: int,
                 allowed: frozenset[str] = OUTCOMES) -> list[Result]:
        if not isinstance(raw, list) or len(raw) != count:
            raise self._bad("list of results")
        out = []
        for item in raw:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or item[0] not in allowed or not isinstance(item[1], str)):
                raise self._bad("result")
            out.append(Result(Outcome(item[0]), _said(item[1], 1000)))
        return out

    # -- the Replica contract ------------------------------------------------------------
    def clock_ns(self) -> int:
        value = self._call("clock")
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad("clock")
        return value

    def stamps(self) -> dict[str, Stamp]:
        raw = self._call("stamps")
        if not isinstance(raw, dict):
            raise self._bad("folder list")
        out = {}
        for folder, pair in raw.items():
            self._check_folder(folder)
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
                raise self._bad("folder stamp")
            out[folder] = Stamp(pair[0], pair[1])
        return out

    def list(self, folders: Sequence[str],
             subdirs: Sequence[str] = MESSAGE_SUBDIRS) -> dict[str, list[str]]:
        header, data = self._reply(self._send("list", folders=list(folders),
                                              subdirs=list(subdirs)))
        return {folder: list(map(from_raw, names))
                for folder, names in self._listing(header, data, folders, subdirs).items()}

    def listings(self, folders: Sequence[tuple[str, Sequence[str]]]
                 ) -> Iterator[tuple[str, list[bytes]]]:
        # LIST_AHEAD requests in flight: the agent lists the next folders while the caller
        # works on this one (strict request/reply left each side idle half the time)
        waiting: deque[tuple[str, Sequence[str], int]] = deque()
        todo = iter(folders)

        def ask(folder: str, subdirs: Sequence[str]) -> None:
            rid = self._send("list", folders=[folder], subdirs=list(subdirs))
            waiting.append((folder, subdirs, rid))

        for folder, subdirs in itertools.islice(todo, LIST_AHEAD):
            ask(folder, subdirs)
        while waiting:
            folder, subdirs, rid = waiting.popleft()
            if (following := next(todo, None)) is not None:
                ask(*following)
            header, data = self._reply(rid)
            yield folder, self._listing(header, data, [folder], subdirs)[folder]

    def _listing(self, header: dict, data: bytes, folders: Sequence[str],
                 subdirs: Sequence[str]) -> dict[str, list[bytes]]:
        """The raw relnames (names.to_raw) of a `list` reply: per folder, one block of names
        for each subdir asked, their lengths in the result (docs/protocol.md). The prefixes
        are ours, so a name can only claim a subdir the client asked for. Names a block
        cannot carry (a newline, not UTF-8) come apart (`unlisted`); they are listed too, for
        the scan to skip and report as invalid, as it does in a local maildir."""
        meta = header.get("result")
        if (not isinstance(meta, dict) or set(meta) != set(folders)
                or not all(isinstance(sizes, list) and len(sizes) == len(subdirs)
                           and all(type(n) is int and n >= 0 for n in sizes)
                           for sizes in meta.values())
                or sum(map(sum, meta.values())) != len(data)):
            raise self._bad("listing")
        unlisted = header.get("unlisted", {})
        if not isinstance(unlisted, dict) or not all(
                folder in meta and isinstance(by_sub, dict) and set(by_sub) <= set(subdirs)
                and all(isinstance(names, list) and all(
                    isinstance(n, str) and not is_listable(n) for n in names)
                    for names in by_sub.values())
                for folder, by_sub in unlisted.items()):
            raise self._bad("listing (names apart)")
        listing: dict[str, list[bytes]] = {}
        at = total = 0
        for folder in dict.fromkeys(folders):  # blocks come in the order asked
            names: list[bytes] = []
            for sub, size in zip(subdirs, meta[folder], strict=True):
                try:
                    names += split_names(data[at:at + size], sub)
                except InvalidName as exc:
                    raise self._bad(f"message name ({exc})") from None
                at += size
                names += [to_raw(f"{sub}/{name}")
                          for name in unlisted.get(folder, {}).get(sub, ())]
            total += len(names)
            if total > MAX_LISTED:
                raise self._bad("listing (too many names)")
            listing[folder] = names
        return listing

    def sizes(self, refs: Sequence[Ref]) -> list[int | None]:
        raw = self._call("sizes", refs=[[r.folder, r.relname] for r in refs])
        if not isinstance(raw, list) or len(raw) != len(refs) or not all(
                x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 0)
                for x in raw):
            raise self._bad("list of sizes")
        return raw

    def keywords(self, folder: str) -> dict[str, str]:
        return self._keyword_map(self._call("keywords", folder=folder))

    def add_keywords(self, folder: str, names: Iterable[str]) -> dict[str, str]:
        return self._keyword_map(self._call("add_keywords", folder=folder, names=sorted(names)))

    def tombstones(self, keys: Sequence[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        # in slices: a first sync asks about every message, and one frame of 100,000 keys
        # cost 18 MB of memory on each side
        for start in range(0, len(keys), TOMBSTONE_SLICE):
            out.update(self._tombstones(keys[start:start + TOMBSTONE_SLICE]))
        return out

    def _tombstones(self, keys: Sequence[str]) -> dict[str, Entry]:
        raw = self._call("tombstones", keys=list(keys))
        if not isinstance(raw, dict) or not set(raw) <= set(keys):
            raise self._bad("tombstone list")
        out = {}
        for key, value in raw.items():
            if (not isinstance(value, list) or len(value) != 3 or value[1] not in ("new", "cur")
                    or not isinstance(value[2], list)
                    or not all(isinstance(f, str) and f for f in value[2])):
                raise self._bad("tombstone")
            self._check_folder(value[0])
            out[key] = Entry(value[0], value[1], frozenset(value[2]))
        return out

    def add_tombstones(self, items: Sequence[tuple[str, Entry]]) -> None:
        if items:
            self._call("add_tombstones", items=[[k, e.folder, e.subdir, sorted(e.flags)]
                                                for k, e in items])

    def create_folder(self, folder: str) -> None:
        self._call("create_folder", folder=folder)

    def remove_folder(self, folder: str) -> bool:
        return bool(self._call("remove_folder", folder=folder))

    def read(self, refs: Sequence[Ref]) -> list[Message | Result]:
        meta, data = self._exchange("read", refs=[[r.folder, r.relname] for r in refs])
        if not isinstance(meta, list) or len(meta) != len(refs):
            raise self._bad("read reply")
        # [length, mtime] for a message read, [outcome, detail] for one that was not
        read = [isinstance(m, list) and len(m) == 2 and type(m[0]) is int and is_mtime(m[1])
                for m in meta]
        try:
            pieces = iter(split_data(data, [m[0] for m, ok in zip(meta, read, strict=True) if ok]))
        except ProtocolError:
            raise self._bad("read reply (sizes do not match the data)") from None
        out: list[Message | Result] = []
        for item, ok in zip(meta, read, strict=True):
            if ok:
                out.append(Message(next(pieces), item[1]))
            else:
                out.extend(self._results([item], 1, NOT_READ))
        return out

    def deliver(self, items: Sequence[Delivery]) -> list[Result]:
        return self.deliver_later(items)()

    def deliver_later(self, items: Sequence[Delivery]) -> Callable[[], list[Result]]:
        # Sent in two requests: the agent writes the first half while the second half is
        # still being encrypted and sent (strict request/reply left one side idle). The
        # replies are read by the call returned, after the caller sent its next batch.
        sent = [(self._send("deliver", [i.data for i in part],
                            refs=[[i.target.folder, i.target.relname] for i in part],
                            lengths=[len(i.data) for i in part],
                            mtimes=[i.mtime_ns for i in part]), len(part))
                for part in _halves(items)]

        def results() -> list[Result]:
            out: list[Result] = []
            refused: ValueError | None = None
            for rid, count in sent:
                try:  # every reply is read, so the stream stays in step for the next request
                    out.extend(self._results(self._receive(rid)[0], count))
                except ValueError as exc:
                    refused = refused or exc
            if refused is not None:
                raise refused
            return out

        return results

    def rename(self, items: Sequence[Rename]) -> list[Result]:
        raw = self._call("rename",
                         sources=[[i.source.folder, i.source.relname] for i in items],
                         targets=[[i.target.folder, i.target.relname] for i in items])
        return self._results(raw, len(items))

    def delete(self, refs: Sequence[Ref]) -> list[Result]:
        raw = self._call("delete", refs=[[r.folder, r.relname] for r in refs])
        return self._results(raw, len(refs))

    def prune_quarantine(self, keep_days: int) -> int:
        removed = self._call("prune_quarantine", days=keep_days)
        if not isinstance(removed, int) or isinstance(removed, bool) or removed < 0:
            raise self._bad("prune count")
        return removed

    def watch(self) -> Iterator[set[str] | None]:
        """Turn this connection into the agent's change notifications (live mode).

        Yields the set of folders that changed, or None when the agent's kernel dropped events
        (sync everything). Blocks between events; the agent sends a heartbeat (an empty set)
        every few seconds of quiet. Raises WatchUnavailable when the agent cannot watch, and
        ReplicaError when the connection ends; after watch() the replica serves nothing else.
        """
        self._call("watch")
        self._watching = True
        while True:
            try:
                frame = read_frame(self.channel.read_exactly)
            except TruncatedFrame:
                frame = None
            except ProtocolError as exc:
                raise self._bad(f"notification ({exc})") from None
            if frame is None:
                raise ReplicaError(f"{self.label}: the agent's watch connection ended")
            header = frame.header
            if not header.get("ok"):
                raise ReplicaError(f"{self.label}: {_said(header.get('error', 'agent error'))}")
            event = header.get("event")
            if event == "overflow":
                yield None
            elif event == "alive":
                yield set()
            elif event == "unavailable":
                raise WatchUnavailable(f"{self.label}: {_said(header.get('error'))}")
            elif event == "changed" and isinstance(header.get("folders"), list):
                for folder in header["folders"]:
                    self._check_folder(folder)
                yield set(header["folders"])
            else:
                raise self._bad("notification")

    def close(self) -> None:
        if not (self._watching or self._broken):  # a watching agent's bye is EOF
            try:
                self._call("bye")
            except ReplicaError:
                pass
        self.channel.close()

    # -- checks on what the agent sends --------------------------------------------------
    def _check_folder(self, folder: object) -> None:
        try:
            if not isinstance(folder, str):
                raise InvalidFolder(repr(folder))
            check_folder(folder, self.layout)
        except InvalidFolder:
            raise self._bad(f"folder name {folder!r}") from None

    def _keyword_map(self, raw: object) -> dict[str, str]:
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and len(k) == 1 and "a" <= k <= "z" and isinstance(v, str)
                and v and v.isprintable() and " " not in v for k, v in raw.items()):
            raise self._bad("keyword map")
        return raw


def _said(text: object, limit: int = 300) -> str:
    """Text from the agent, as one printable line of at most `limit` characters."""
    return printable(text, limit)


def _halves(items: Sequence[Delivery]) -> list[Sequence[Delivery]]:
    """The deliveries cut in two of about equal bytes (one part for a single message)."""
    left = sum(len(i.data) for i in items)
    for n, item in enumerate(items[:-1], 1):
        left -= 2 * len(item.data)
        if left <= 0:
            return [items[:n], items[n:]]
    return [items[:-1], items[-1:]] if len(items) > 1 else [items]


class PipeChannel:
    """A Channel over a subprocess's stdin/stdout (tests, and `ssh` run as a program).

    Replies are read as they come, by a thread of their own, as asyncssh reads an SSH
    channel: the client reads a batch's replies only after it sent the next batch, and with
    the OS pipe alone (64 KiB) an agent whose replies nobody read would stop reading its
    requests while the client still wrote one.
    """

    def __init__(self, argv: Sequence[str], stderr: int | None = None) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._received = bytearray()
        self._ended = False
        self._arrived = threading.Condition()
        threading.Thread(target=self._receive, args=(self.proc.stdout,), daemon=True,
                         name="mailmirror-pipe").start()

    def _receive(self, stdout: BinaryIO) -> None:
        try:
            while chunk := stdout.read1(1 << 16):
                with self._arrived:
                    self._received += chunk
                    self._arrived.notify_all()
        except (OSError, ValueError):  # closed under us: the end of the stream
            pass
        with self._arrived:
            self._ended = True
            self._arrived.notify_all()

    def read_exactly(self, n: int) -> bytes:
        """n bytes, fewer only at the end of the stream."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._received) >= n or self._ended)
            data = bytes(self._received[:n])
            del self._received[:n]
        return data

    def send(self, pieces: Sequence[bytes]) -> None:
        self._stdin.writelines(pieces)
        self._stdin.flush()

    def answered(self) -> None:
        """A local process: nothing to time out."""

    def close(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
