"""`mailmirror agent ROOT`: serve one local maildir to a remote client over stdin/stdout.

Like `rsync --server` or `unison -server`: started by the client over an SSH exec channel, it
answers protocol requests (docs/protocol.md) with the LocalReplica of ROOT, so every safety rule
(tmp -> flush -> no-clobber publish, name validation, confinement to ROOT) is enforced here, on
the machine that owns the files. It trusts nothing in a request: bad names give per-item errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from mailmirror import __version__
from mailmirror.errors import MailmirrorError
from mailmirror.maildir.folders import check_folder
from mailmirror.maildir.names import MESSAGE_SUBDIRS, check_name, is_listable, is_plain_block
from mailmirror.maildir.quarantine import MAX_KEEP_DAYS
from mailmirror.replica.base import Delivery, Outcome, Ref, Rename, Result
from mailmirror.replica.local import LocalReplica, open_local
from mailmirror.sync.model import Entry
from mailmirror.transport.privilege import drop_to_owner
from mailmirror.transport.protocol import (
    VERSION,
    ProtocolError,
    encode_frame,
    exact_reader,
    is_mtime,
    read_frame,
    split_data,
)

DETAIL_MAX = 300  # characters of an item's failure detail sent back (see _results)
READ_BUDGET = 256 << 20  # bytes of messages in one read reply, about (see Agent._read)


def _refs(items: object) -> list[Ref]:
    if not isinstance(items, list):
        raise ProtocolError("refs must be a list")
    out = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, str) for x in item)):
            raise ProtocolError("a ref is [folder, relname]")
        out.append(Ref(item[0], item[1]))
    return out


def _tomb_items(items: object) -> list[tuple[str, Entry]]:
    if not isinstance(items, list):
        raise ProtocolError("items must be a list")
    out = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 4
                or not all(isinstance(x, str) for x in item[:3])
                or not isinstance(item[3], list)
                or not all(isinstance(f, str) and f and " " not in f for f in item[3])):
            raise ProtocolError("a tombstone is [key, folder, subdir, [flags]]")
        key, folder, subdir, flags = item
        try:
            check_name(key)
            check_folder(folder)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if subdir not in ("new", "cur"):
            raise ProtocolError("a tombstone's subdir is new or cur")
        out.append((key, Entry(folder, subdir, frozenset(flags))))
    return out


def _text(header: dict, key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _results(results: list[Result]) -> list[list[str]]:
    # details cut short: a batch whose every item failed stays a small reply (the client
    # reads a batch's replies only after it sent the next one, and the SSH channel buffers
    # 2 MiB of unread replies before the agent must wait)
    return [[r.outcome.value, _short(r.detail)] for r in results]


def _short(detail: str) -> str:
    """At most DETAIL_MAX characters, keeping the end: the reason follows the path."""
    if len(detail) <= DETAIL_MAX:
        return detail
    head = detail[:100] + "..."
    return head + detail[len(head) - DETAIL_MAX:]


def _list_reply(replica: LocalReplica, header: dict) -> tuple[dict, bytes]:
    """The `list` reply: each subdir's names joined by newlines, one block after another in
    data, their byte lengths in the result (docs/protocol.md), and the names that are not
    valid (a newline or control byte in them, not UTF-8: see is_listable) apart, in
    `unlisted`. As JSON, 100,000 names cost this side 76 ms to encode and the client 24 ms
    to decode; joined as the file system gives them (bytes) and checked, about 28 ms and
    33 ms."""
    folders = header.get("folders")
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise ProtocolError("list needs folders")
    subdirs = header.get("subdirs", list(MESSAGE_SUBDIRS))
    if not isinstance(subdirs, list) or not all(isinstance(s, str) for s in subdirs):
        raise ProtocolError("list subdirs must be a list of names")
    lengths: dict[str, list[int]] = {}
    unlisted: dict[str, dict[str, list[str]]] = {}
    blocks = []
    for folder in folders:
        sizes = lengths[folder] = []
        for sub, raw in zip(subdirs, replica.names(folder, subdirs), strict=True):
            block = b"\n".join(raw)
            if not (is_plain_block(block) and block.count(b"\n") == len(raw) - 1):
                # printable ASCII reads the same in any file system encoding; other names
                # go through str, as the client holds them (UTF-8 on the wire)
                names = list(map(os.fsdecode, raw))
                listable = list(filter(is_listable, names))
                if len(listable) < len(names):
                    # the client skips and reports them, as it does such a name in a local
                    # maildir: one odd file must not stop every sync of the maildir
                    unlisted.setdefault(folder, {})[sub] = [n for n in names
                                                            if not is_listable(n)]
                block = "\n".join(listable).encode("utf-8")
            sizes.append(len(block))
            blocks.append(block)
    return {"result": lengths, **({"unlisted": unlisted} if unlisted else {})}, b"".join(blocks)


class Agent:
    """Dispatches decoded requests to a LocalReplica; one instance per connection."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.replica: LocalReplica | None = None

    def handle(self, op: str, header: dict, data: bytes) -> tuple[dict, bytes]:
        """The reply's fields but id and ok, and its data."""
        if op == "hello":
            return {"result": self._hello(header)}, b""
        replica = self.replica
        if replica is None:
            raise ProtocolError("the first request must be hello")
        if op == "list":
            return _list_reply(replica, header)
        result, out = self._answer(replica, op, header, data)
        return {"result": result}, out

    def _answer(self, replica: LocalReplica, op: str, header: dict,
                data: bytes) -> tuple[object, bytes]:
        if op == "id":
            return (replica.id if header.get("create", True) else replica.stored_id()), b""
        if op == "clock":
            return replica.clock_ns(), b""
        if op == "stamps":
            return {f: [s.cur, s.new] for f, s in replica.stamps().items()}, b""
        if op == "sizes":
            return replica.sizes(_refs(header.get("refs"))), b""
        if op == "keywords":
            return replica.keywords(_text(header, "folder")), b""
        if op == "add_keywords":
            names = header.get("names")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ProtocolError("add_keywords needs names")
            return replica.add_keywords(_text(header, "folder"), names), b""
        if op == "tombstones":
            keys = header.get("keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ProtocolError("tombstones needs keys")
            return {k: [e.folder, e.subdir, sorted(e.flags)]
                    for k, e in replica.tombstones(keys).items()}, b""
        if op == "add_tombstones":
            replica.add_tombstones(_tomb_items(header.get("items")))
            return True, b""
        if op == "create_folder":
            replica.create_folder(_text(header, "folder"))
            return True, b""
        if op == "remove_folder":
            return replica.remove_folder(_text(header, "folder")), b""
        if op == "read":
            return self._read(replica, _refs(header.get("refs")))
        if op == "deliver":
            refs = _refs(header.get("refs"))
            pieces = split_data(data, header.get("lengths") or [])
            if len(pieces) != len(refs):
                raise ProtocolError("deliver: one length per ref")
            mtimes = header.get("mtimes") or [None] * len(refs)
            if len(mtimes) != len(refs) or not all(m is None or is_mtime(m) for m in mtimes):
                raise ProtocolError("deliver: one mtime (or null) per ref")
            items = [Delivery(ref, piece, mtime)
                     for ref, piece, mtime in zip(refs, pieces, mtimes, strict=True)]
            return _results(replica.deliver(items)), b""
        if op == "rename":
            sources, targets = _refs(header.get("sources")), _refs(header.get("targets"))
            if len(sources) != len(targets):
                raise ProtocolError("rename: one target per source")
            items = [Rename(s, t) for s, t in zip(sources, targets, strict=True)]
            return _results(replica.rename(items)), b""
        if op == "delete":
            return _results(replica.delete(_refs(header.get("refs")))), b""
        if op == "prune_quarantine":
            days = header.get("days")
            if (not isinstance(days, int) or isinstance(days, bool)
                    or not 0 <= days <= MAX_KEEP_DAYS):
                raise ProtocolError(f"prune_quarantine needs days (0 to {MAX_KEEP_DAYS})")
            return replica.prune_quarantine(days), b""
        raise ProtocolError(f"unknown request {op!r}")

    def _hello(self, header: dict) -> dict:
        if header.get("version") != VERSION:
            raise ProtocolError(f"protocol version {header.get('version')} is not supported: "
                                f"this agent speaks {VERSION} (mailmirror {__version__})")
        readonly = bool(header.get("readonly"))
        self.replica = open_local(self.root, str(header.get("layout", "maildir++")),
                                  str(header.get("sep", ":")), readonly=readonly)
        return {"version": VERSION, "label": str(self.replica.root),
                "clock_ns": self.replica.clock_ns(), "software": f"mailmirror {__version__}"}

    def _read(self, replica: LocalReplica, refs: list[Ref]) -> tuple[object, bytes]:
        """Messages one by one, until the reply holds READ_BUDGET bytes: the rest are
        answered as failed (retried next run), so a reply stays below what a frame may
        hold (READ_BUDGET and one message of at most MAX_MESSAGE), whatever was asked."""
        pieces, meta, total = [], [], 0
        for ref in refs:
            if total >= READ_BUDGET:
                meta.append([Outcome.FAILED.value, "not sent: the reply was full; "
                             "retried next run"])
                continue
            item = replica.read([ref])[0]
            if isinstance(item, Result):
                meta.append([item.outcome.value, item.detail])
            else:
                meta.append([len(item.data), item.mtime_ns])
                pieces.append(item.data)
                total += len(item.data)
        return meta, b"".join(pieces)


def serve(root: str, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests until the client closes the stream; the exit status of the agent."""
    agent = Agent(root)
    read_exactly: Callable[[int], bytes] = exact_reader(stdin)
    while True:
        try:
            frame = read_frame(read_exactly)
        except ProtocolError as exc:
            _send(stdout, {"ok": False, "error": f"protocol error: {exc}", "fatal": True})
            return 2
        if frame is None:
            return 0
        rid = frame.header.get("id")
        op = frame.header.get("op")
        if op == "bye":
            _send(stdout, {"id": rid, "ok": True, "result": None})
            return 0
        if op == "watch" and agent.replica is not None:
            # the connection becomes a stream of change notifications (live mode)
            from mailmirror.watch.stream import HEARTBEAT, stream_changes

            _send(stdout, {"id": rid, "ok": True, "result": {"heartbeat": HEARTBEAT}})
            return stream_changes(agent.replica, rid, stdin, stdout)
        try:
            fields, data = agent.handle(str(op), frame.header, frame.data)
            _send(stdout, {"id": rid, "ok": True, **fields}, data)
        except ProtocolError as exc:
            _send(stdout, {"id": rid, "ok": False, "error": f"protocol error: {exc}",
                           "fatal": True})
            return 2
        except (MailmirrorError, OSError, ValueError) as exc:
            _send(stdout, {"id": rid, "ok": False, "error": str(exc),
                           "kind": "value" if isinstance(exc, ValueError) else "replica",
                           "fatal": isinstance(exc, MailmirrorError)})


def _send(stdout: BinaryIO, header: dict, data: bytes = b"") -> None:
    stdout.write(encode_frame(header, data))
    stdout.flush()


def main(root: str, allow_root: bool = False) -> int:
    """Entry point of `mailmirror agent`: binary stdio, nothing else printed to stdout.

    Started as root, it first becomes the owner of ROOT (transport/privilege.py); when that
    is refused, one line on stderr (the client shows it) and exit status 3.
    """
    try:
        drop_to_owner(Path(root).absolute(), allow_root)
    except MailmirrorError as exc:
        print(f"mailmirror: {exc}", file=sys.stderr)
        return exc.exit_code
    stdout = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    stdin = os.fdopen(sys.stdin.fileno(), "rb", closefd=False)
    return serve(root, stdin, stdout)
