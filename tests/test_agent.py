"""The agent protocol: a sync through a real `mailmirror agent` process, hostile agents and
hostile clients, and a fuzzed frame decoder."""

from __future__ import annotations

import io
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmirror.errors import ReplicaError
from mailmirror.maildir.folders import create_folder
from mailmirror.maildir.names import from_raw
from mailmirror.replica.base import Delivery, Outcome, Ref
from mailmirror.replica.local import open_local
from mailmirror.replica.remote import AgentReplica, PipeChannel
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
from mailmirror.transport.agent import DETAIL_MAX, serve
from mailmirror.transport.protocol import (
    SEND_CHUNK,
    VERSION,
    ProtocolError,
    encode_frame,
    read_frame,
    send_chunks,
)
from tests.test_crash import make_tree, published


def agent(root: Path) -> AgentReplica:
    return AgentReplica(PipeChannel([sys.executable, "-m", "mailmirror", "agent", str(root)]),
                        f"pipe:{root}")


def test_sync_through_the_agent_both_ways(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    contents = make_tree(a, 300, 2000)
    state = SyncState(open_store(tmp_path / "s.db"))
    remote = agent(b)
    try:
        assert sync(open_local(a), remote, state, SyncOptions()).counts["copy a->b"] == 300
        (b / "new" / "1800000000.M1P1.far,S=5").write_bytes(b"hello")
        first = sorted(os.listdir(a / "cur"))[0]
        os.rename(a / "cur" / first, a / "cur" / (first.split(":2,")[0] + ":2,FRS"))
        report = sync(open_local(a), remote, state, SyncOptions())
        assert report.counts == {"copy b->a": 1, "move b": 1}
        assert not sync(open_local(a), remote, state, SyncOptions()).counts
    finally:
        remote.close()
    assert published(a) == published(b) == {**contents, "1800000000.M1P1.far,S=5": b"hello"}


def test_a_listing_through_the_agent_is_the_local_one(tmp_path):
    """Names as the disk has them, non-ASCII and odd bytes included; dot files left out."""
    root = tmp_path / "m"
    make_tree(root, 30, 100)
    create_folder(root, "Empty")
    odd = ["1700000001.M1P1.h\u00e9,S=3:2,S", "1700000002.M1P1.h\udcff,S=3", ".hidden", "x y"]
    for name in odd:
        (root / "cur" / name).write_bytes(b"abc")
    remote = agent(root)
    try:
        listed = remote.list(["INBOX", "Empty"])
        local = open_local(root).list(["INBOX", "Empty"])
        # the name that is not UTF-8 travels apart, after the others
        assert {f: sorted(n) for f, n in listed.items()} == {f: sorted(n) for f, n in local.items()}
        assert {f"cur/{n}" for n in odd if n != ".hidden"} <= set(listed["INBOX"])
        assert "cur/.hidden" not in listed["INBOX"] and listed["Empty"] == []
        assert remote.list(["INBOX"], ("new",))["INBOX"] == [
            n for n in listed["INBOX"] if n.startswith("new/")]
    finally:
        remote.close()


def test_a_file_name_with_a_newline_or_control_byte_is_skipped_as_in_a_local_maildir(
        tmp_path):
    """The agent sends such a name apart from its blocks (in a block the client would refuse
    it as hostile and stop every sync of the maildir): the listing holds it as the local one
    does, and the sync skips and reports it."""
    a, b = tmp_path / "a", tmp_path / "b"
    contents = make_tree(b, 3, 100)
    (b / "cur" / "a\nb").write_bytes(b"abc")
    (b / "new" / "c\nd:2,S").write_bytes(b"abc")
    (b / "cur" / "evil\x1b]0;title\x07:2,S").write_bytes(b"abc")
    remote = agent(b)
    try:
        local = open_local(b).list(["INBOX"])["INBOX"]
        assert sorted(remote.list(["INBOX"])["INBOX"]) == sorted(local)
        assert {"cur/a\nb", "new/c\nd:2,S", "cur/evil\x1b]0;title\x07:2,S"} <= set(local)
        assert remote.list(["INBOX"], ("new",))["INBOX"] == [n for n in local
                                                             if n.startswith("new/")]
        state = SyncState(open_store(tmp_path / "s.db"))
        report = sync(open_local(a), remote, state, SyncOptions())
    finally:
        remote.close()
    assert len(report.skipped) == 3
    assert all(line.startswith(f"pipe:{b}: INBOX/") and "control byte" in line
               for line in report.skipped)
    assert published(a) == contents


def test_listings_fetched_ahead_stay_in_step_with_other_calls(tmp_path):
    """Listing replies wait while later requests (keywords, another listing) are answered."""
    root = tmp_path / "m"
    make_tree(root, 40, 100)
    folders = []
    for n in range(6):
        create_folder(root, f"F{n}")
        (root / f".F{n}" / "cur" / f"17000000{n:02}.M1P1.h,S=3:2,S").write_bytes(b"abc")
        (root / f".F{n}" / "dovecot-keywords").write_text(f"0 $Label{n}\n")
        folders.append(f"F{n}")
    folders.append("INBOX")
    remote = agent(root)
    try:
        expected = remote.list(folders)
        seen = {}
        for folder, names in remote.listings([(f, ("cur", "new")) for f in folders]):
            seen[folder] = list(map(from_raw, names))
            assert remote.keywords(folder) == ({"a": f"$Label{folder[1]}"}
                                               if folder != "INBOX" else {})
            assert remote.list([folder]) == {folder: seen[folder]}
        assert seen == expected
        only_new = {f: list(map(from_raw, names))
                    for f, names in remote.listings([(f, ("new",)) for f in folders])}
        assert only_new == {f: [n for n in expected[f] if n.startswith("new/")]
                            for f in folders}
        listings = remote.listings([(f, ("cur", "new")) for f in folders])
        next(listings)  # abandoned with replies still on their way: later calls still work
        assert remote.list(["F3"]) == {"F3": expected["F3"]}
        assert set(folders) <= remote.stamps().keys()
    finally:
        remote.close()


def test_deliveries_collected_later_stay_in_step_with_other_calls(tmp_path):
    """The engine sends batch n+1 before it reads batch n's results, and looks keywords up
    in between: each batch still gets its own outcomes, in order."""
    root = tmp_path / "m"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    create_folder(root, "Work")
    (root / ".Work" / "new" / "1700000000.M1P1.h").write_bytes(b"taken")
    remote = agent(root)
    try:
        first = remote.deliver_later(
            [Delivery(Ref("INBOX", f"new/17000000{n:02}.M1P1.a"), b"a%d" % n) for n in range(5)])
        assert remote.add_keywords("Work", ["$Later"]) == {"a": "$Later"}
        second = remote.deliver_later(
            [Delivery(Ref("Work", "new/1700000000.M1P1.h"), b"clash"),
             Delivery(Ref("Work", "cur/1700000001.M1P1.h:2,a"), b"kw")])
        assert remote.list(["Work"]) == {"Work": ["cur/1700000001.M1P1.h:2,a",
                                                  "new/1700000000.M1P1.h"]}
        assert [r.outcome for r in second()] == [Outcome.EXISTS, Outcome.OK]
        assert [r.outcome for r in first()] == [Outcome.OK] * 5
    finally:
        remote.close()
    assert (root / ".Work" / "new" / "1700000000.M1P1.h").read_bytes() == b"taken"
    assert len(os.listdir(root / "new")) == 5


def test_replies_left_unread_never_stall_the_next_requests(tmp_path):
    """The engine reads a batch's replies only after it sent the next batch. Batches whose
    every delivery fails give long replies; sending must not wait for them to be read."""
    root = tmp_path / "m"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    work = "Work" * 50  # long names make long failure details: the agent shortens them
    create_folder(root, work)
    (root / f".{work}" / "tmp").rmdir()
    (root / f".{work}" / "tmp").write_bytes(b"")  # every delivery into it fails
    host = "h" * 100
    reason = open_local(root).deliver([Delivery(Ref(work, f"new/1.M1P1.{host}"), b"x")])[0]
    reason_text = reason.detail.rpartition(": ")[2]
    remote = agent(root)
    results: list = []

    def hand_over() -> None:
        waits = [remote.deliver_later([Delivery(Ref(work, f"new/17{b}{n:08}.M1P1.{host}"), b"x")
                                       for n in range(1000)]) for b in range(4)]
        results.extend(r for wait in waits for r in wait())

    worker = threading.Thread(target=hand_over, daemon=True)
    worker.start()
    worker.join(60)
    try:
        assert not worker.is_alive(), "sending waited for replies nobody read"
        assert len(results) == 4000
        assert all(r.outcome is Outcome.FAILED for r in results)
        assert reason_text and all(len(r.detail) == DETAIL_MAX
                                   and r.detail.endswith(f": {reason_text}") for r in results)
    finally:
        remote.channel.proc.kill()
        remote.close()


FAKE = textwrap.dedent("""
    import json, struct, sys
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    def send(h, data=b""):
        raw = json.dumps(h).encode()
        out.write(struct.pack(">IQ", len(raw), len(data)) + raw + data); out.flush()
    while True:
        prefix = inp.read(12)
        if len(prefix) < 12: break
        hl, dl = struct.unpack(">IQ", prefix)
        req = json.loads(inp.read(hl)); inp.read(dl)
        op = req["op"]
        if op == "hello":
            send({"id": req["id"], "ok": True, "result": {"version": PROTOCOL_VERSION}})
        elif op == "id":
            send({"id": req["id"], "ok": True, "result": "evil-replica"})
        elif op == "clock":
            send({"id": req["id"], "ok": True, "result": 0})
        elif op == "stamps":
            send({"id": req["id"], "ok": True, "result": STAMPS})
        elif op == "list":
            # per folder one block of names for each subdir asked (docs/protocol.md)
            blocks = [NAMES.get(s, "").encode("utf-8", "surrogateescape")
                      for s in (["cur", "new"] if "all" in NAMES else req["subdirs"])]
            sizes = [len(b) + NAMES.get("lie", 0) for b in blocks]
            send({"id": req["id"], "ok": True, "result": {f: sizes for f in req["folders"]}},
                 b"".join(blocks) * len(req["folders"]))
        elif op == "read":
            send({"id": req["id"], "ok": True, "result": [10**12] * len(req["refs"])}, b"x")
        else:
            send({"id": req["id"], "ok": True, "result": None})
""")


@pytest.mark.parametrize("stamps,names,complaint", [
    ({"INBOX": [1, 1], "../../etc": [1, 1]}, {}, "folder name"),
    ({"INBOX": [1, 1]}, {"cur": "../../../evil:2,S"}, "message name"),
    ({"INBOX": [1, 1]}, {"cur": "a/b"}, "message name"),
    ({"INBOX": [1, 1]}, {"cur": "nul\u0000byte"}, "message name"),
    ({"INBOX": [1, 1]}, {"new": "1.M1P1.x\n\n2.M2P2.x"}, "message name"),  # an empty name
    ({"INBOX": [1, 1]}, {"cur": "1.M1P1.x:2,S\n.."}, "message name"),
    ({"INBOX": [1, 1]}, {"cur": "1.M1P1.x:2,S", "lie": 1}, "listing"),  # lengths past the data
    ({"INBOX": [1, 1]}, {"cur": "1.M1P1.x,S=5:2,S"}, "read reply"),  # huge announced size
])
def test_hostile_agent_is_refused_and_nothing_is_written_outside(tmp_path, stamps, names,
                                                                 complaint):
    script = tmp_path / "fake_agent.py"
    script.write_text(f"STAMPS = {stamps!r}\nNAMES = {names!r}\nPROTOCOL_VERSION = {VERSION}\n"
                      + FAKE)
    a = tmp_path / "a"
    create_folder(a, "INBOX")
    before = sorted(p for p in tmp_path.rglob("*"))
    remote = AgentReplica(PipeChannel([sys.executable, str(script)]), "fake")
    state = SyncState(open_store(tmp_path / "s.db"))
    with pytest.raises(ReplicaError, match=f"invalid {complaint}"):
        sync(open_local(a), remote, state, SyncOptions())
    remote.channel.close()
    after = sorted(p for p in tmp_path.rglob("*") if not p.name.startswith(("s.db", "mailmirror")))
    assert [p for p in after if p not in before and "a/" not in str(p)] == []
    assert not (tmp_path.parent / "evil:2,S").exists()


def test_a_listing_outside_the_subdir_asked_for_is_refused(tmp_path):
    """Asked for new/ only, an agent that answers with cur/ names would make the scan take
    unchanged messages for new ones: a block for each subdir asked, no more."""
    script = tmp_path / "fake_agent.py"
    script.write_text(f"STAMPS = {{}}\nNAMES = {{'cur': '1.M1P1.x:2,S', 'all': 1}}\n"
                      f"PROTOCOL_VERSION = {VERSION}\n" + FAKE)
    remote = AgentReplica(PipeChannel([sys.executable, str(script)]), "fake")
    try:
        assert remote.list(["INBOX"]) == {"INBOX": ["cur/1.M1P1.x:2,S"]}
        with pytest.raises(ReplicaError, match="invalid listing"):
            remote.list(["INBOX"], ("new",))
    finally:
        remote.channel.close()


def _serve(root: Path, frames: list[bytes]) -> list[dict]:
    out = io.BytesIO()
    serve(str(root), io.BytesIO(b"".join(frames)), out)
    out.seek(0)
    replies = []
    while (frame := read_frame(out.read)) is not None:
        replies.append(frame.header)
    return replies


def test_agent_refuses_hostile_requests(tmp_path):
    root = tmp_path / "m"
    hello = encode_frame({"id": 1, "op": "hello", "version": VERSION})
    deliver = encode_frame({"id": 2, "op": "deliver",
                            "refs": [["INBOX", "cur/../../escape"], ["../x", "cur/y"],
                                     ["INBOX", "new/ok"]],
                            "lengths": [1, 1, 1]}, b"abc")
    replies = _serve(root, [hello, deliver])
    assert replies[0]["ok"] and replies[1]["ok"]
    outcomes = [r[0] for r in replies[1]["result"]]
    assert outcomes == [Outcome.FAILED.value, Outcome.FAILED.value, Outcome.OK.value]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()
    assert (root / "new" / "ok").read_bytes() == b"c"
    bad_version = _serve(root, [encode_frame({"id": 1, "op": "hello", "version": 99})])
    assert not bad_version[0]["ok"] and "version" in bad_version[0]["error"]
    before_hello = _serve(root, [encode_frame({"id": 1, "op": "stamps"})])
    assert not before_hello[0]["ok"]


def test_agent_ends_cleanly_on_a_truncated_frame(tmp_path):
    frame = encode_frame({"id": 1, "op": "hello", "version": VERSION})
    replies = _serve(tmp_path / "m", [frame[:-3]])
    assert replies and replies[-1]["ok"] is False and replies[-1]["fatal"]


def test_missing_agent_is_one_clear_error(tmp_path):
    with pytest.raises(ReplicaError, match="closed the connection"):
        AgentReplica(PipeChannel(["true"]), "nowhere")


@given(st.binary(max_size=200))
def test_frame_decoder_never_crashes(blob):
    stream = io.BytesIO(blob)
    try:
        while read_frame(stream.read) is not None:
            pass
    except ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20), max_size=5),
       st.binary(max_size=100))
def test_frames_round_trip(header, data):
    frame = read_frame(io.BytesIO(encode_frame(header, data)).read)
    assert frame is not None and frame.header == header and frame.data == data


@given(st.lists(st.sampled_from([1, 1000, SEND_CHUNK // 3, SEND_CHUNK - 1, SEND_CHUNK,
                                  SEND_CHUNK * 3]), max_size=12))
def test_send_chunks_keep_the_bytes_and_never_copy_a_large_piece(sizes):
    pieces = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    chunks = list(send_chunks(pieces))
    assert b"".join(chunks) == b"".join(pieces)
    large = [piece for piece in pieces if len(piece) >= SEND_CHUNK]
    assert [chunk for chunk in chunks if any(chunk is piece for piece in large)] == large
    # small pieces still travel together: no chunk but the last of a run is short
    runs = [chunk for chunk in chunks if not any(chunk is piece for piece in large)]
    assert sum(len(chunk) < SEND_CHUNK for chunk in runs) <= len(large) + 1


def test_deliver_through_agent_is_durable_and_no_clobber(tmp_path):
    remote = agent(tmp_path / "m")
    try:
        first = remote.deliver([Delivery(Ref("INBOX", "new/1.M1P1.x"), b"one")])
        second = remote.deliver([Delivery(Ref("INBOX", "new/1.M1P1.x"), b"two")])
    finally:
        remote.close()
    assert first[0].ok and second[0].outcome is Outcome.EXISTS
    assert (tmp_path / "m" / "new" / "1.M1P1.x").read_bytes() == b"one"
    assert os.listdir(tmp_path / "m" / "tmp") == []


def test_a_read_reply_stops_at_its_budget_and_the_rest_come_next_run(tmp_path, monkeypatch):
    """Whatever a client asks in one read, the reply stays below what a frame may hold: past
    READ_BUDGET bytes the rest are answered as failed, and a later run copies them."""
    from mailmirror.transport import agent as agent_module

    monkeypatch.setattr(agent_module, "READ_BUDGET", 10)
    root = tmp_path / "m"
    open_local(root)
    for i in range(4):
        (root / "cur" / f"170000000{i}.M1P1.x:2,S").write_bytes(b"8 bytes\n")
    refs = [["INBOX", f"cur/170000000{i}.M1P1.x:2,S"] for i in range(4)]
    stream = (encode_frame({"id": 0, "op": "hello", "version": VERSION})
              + encode_frame({"id": 1, "op": "read", "refs": refs}))
    out = io.BytesIO()
    assert serve(str(root), io.BytesIO(stream), out) == 0
    out.seek(0)
    read_frame(out.read)
    reply = read_frame(out.read)
    assert [m[0] for m in reply.header["result"]] == [8, 8, "failed", "failed"]
    assert "retried next run" in reply.header["result"][2][1]
    assert reply.data == b"8 bytes\n" * 2


class _StallingChannel:
    """Answers hello, then every read stalls (as a channel to a SIGSTOPped agent does)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.pending = io.BytesIO(encode_frame(
            {"id": 1, "ok": True, "result": {"version": VERSION, "label": "/m"}}))
        self.greeted = False
        self.closed = False

    def send(self, pieces: list[bytes]) -> None:
        self.sent.append(b"".join(pieces))

    def read_exactly(self, n: int) -> bytes:
        if not self.greeted:
            return self.pending.read(n)
        raise ReplicaError("far: no answer for 300 s: the connection stalled (check the network)")

    def answered(self) -> None:
        self.greeted = True

    def close(self) -> None:
        self.closed = True


def test_after_a_stall_close_says_no_bye() -> None:
    """Found by the chaos review: an agent that stopped answering held the run for the I/O
    timeout, then for another one while close() waited for the answer to its bye."""
    channel = _StallingChannel()
    remote = AgentReplica(channel, "far:/m")
    with pytest.raises(ReplicaError, match="stalled"):
        remote.stamps()
    sent = len(channel.sent)
    remote.close()
    assert len(channel.sent) == sent and channel.closed

