"""Hostile remotes and odd files: symlinks never lead a sync out of the root, FIFOs and devices
are never opened as messages, oversized messages are refused, hostile names from an agent are
refused, the agent survives any request a fuzzer sends it, and unknown info suffixes travel
verbatim. Each odd item is reported; nothing outside the root is read or written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmirror.errors import ReplicaError
from mailmirror.replica.local import MAX_MESSAGE, open_local
from mailmirror.replica.remote import AgentReplica, PipeChannel
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
from mailmirror.transport.agent import serve
from mailmirror.transport.protocol import VERSION, encode_frame, read_frame
from tests.e2e.sshkit import deliver, maildir, messages, view

KINDS = ("local", "agent")


def _open(root: Path, kind: str) -> object:
    if kind == "local":
        return open_local(root)
    return AgentReplica(PipeChannel([sys.executable, "-m", "mailmirror", "agent", "--allow-root",
                                     str(root)]), f"pipe:{root}")


def _state(tmp_path: Path) -> SyncState:
    return SyncState(open_store(tmp_path / "s.db"))


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "cur").mkdir(parents=True)
    (out / "cur" / "1600000000.M1P1.secret:2,S").write_bytes(b"Subject: not yours\n\n")
    return out


def _snapshot(root: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*")
                  if p.is_file())


@pytest.mark.parametrize("kind", KINDS)
def test_a_symlinked_subdir_is_never_followed(tmp_path: Path, kind: str) -> None:
    """A folder whose cur/ is a link (to a place outside the root) stops the run: listing
    through it would read mail that is not in the maildir, and treating it as empty would
    delete that folder's mail on the other side."""
    outside = _outside(tmp_path)
    a, b = maildir(tmp_path / "a", "Work"), maildir(tmp_path / "b", "Work")
    deliver(a, "1700000000.M1P1.mine", "Work", "cur", "S")
    state = _state(tmp_path)
    assert sync(open_local(a), open_local(b), state, SyncOptions()).counts == {"copy a->b": 1}
    shutil.rmtree(b / ".Work" / "cur")
    os.symlink(outside / "cur", b / ".Work" / "cur")
    before = _snapshot(outside)
    replica = _open(b, kind)
    with pytest.raises(ReplicaError, match="symbolic link"):
        sync(open_local(a), replica, state, SyncOptions())
    assert _snapshot(outside) == before
    assert "1600000000.M1P1.secret" not in messages(a) and view(a)


@pytest.mark.parametrize("kind", KINDS)
def test_a_symlinked_folder_is_never_written_through(tmp_path: Path, kind: str) -> None:
    outside = _outside(tmp_path)
    for sub in ("new", "tmp"):
        (outside / sub).mkdir()
    (outside / "dovecot-keywords").write_text("0 unrelated\n")
    a, b = maildir(tmp_path / "a", "Work"), maildir(tmp_path / "b")
    deliver(a, "1700000000.M1P1.inbox", "INBOX", "cur", "S")
    # a keyword: its letter on b would need b's Work/dovecot-keywords, behind the link
    (a / ".Work" / "dovecot-keywords").write_text("0 $Important\n")
    deliver(a, "1700000000.M2P1.work", "Work", "cur", "Sa")
    os.symlink(outside, b / ".Work")
    before = _snapshot(outside)
    report = sync(open_local(a), _open(b, kind), _state(tmp_path), SyncOptions())
    assert _snapshot(outside) == before, "a delivery went through the link"
    assert report.counts.get("copy a->b") == 1  # INBOX: the rest of the run proceeds
    assert any("symbolic link" in s for s in report.skipped), report.skipped
    assert "1700000000.M2P1.work" in messages(a)


@pytest.mark.parametrize("kind", KINDS)
def test_fifos_devices_and_oversized_files_are_refused(tmp_path: Path, kind: str) -> None:
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(b, "1700000000.M1P1.fine", "INBOX", "cur", "S")
    os.mkfifo(b / "cur" / "1700000000.M2P1.fifo:2,S")  # opening it for reading would block
    with open(b / "cur" / "1700000000.M3P1.huge:2,S", "wb") as f:
        f.truncate(MAX_MESSAGE + 1)  # sparse: costs no disk
    odd = {"1700000000.M2P1.fifo", "1700000000.M3P1.huge"}
    if os.geteuid() == 0:
        os.mknod(b / "cur" / "1700000000.M4P1.dev:2,S", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        odd.add("1700000000.M4P1.dev")
    report = sync(open_local(a), _open(b, kind), _state(tmp_path), SyncOptions())
    assert report.counts == {"copy b->a": 1}
    assert len(report.skipped) == len(odd), report.skipped
    assert all(any(k in s for s in report.skipped) for k in odd), report.skipped
    assert set(messages(a)) == {"1700000000.M1P1.fine"}
    assert odd <= set(os.listdir(b / "cur")) | {n.split(":")[0] for n in os.listdir(b / "cur")}


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_info_suffixes_are_copied_verbatim(tmp_path: Path, kind: str) -> None:
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    (a / "cur" / "1700000000.M1P1.x:1,experimental").write_bytes(b"one\n")
    (a / "cur" / "1700000000.M2P1.x:3,future=1").write_bytes(b"two\n")
    (a / "cur" / "1700000000.M3P1.x:2,S").write_bytes(b"three\n")
    state = _state(tmp_path)
    assert sync(open_local(a), _open(b, kind), state, SyncOptions()).counts == {"copy a->b": 3}
    assert sorted(os.listdir(b / "cur")) == sorted(os.listdir(a / "cur"))
    assert not sync(open_local(a), _open(b, kind), state, SyncOptions()).counts


@pytest.mark.parametrize("kind", KINDS)
def test_names_that_are_not_utf8_are_skipped_and_the_rest_recorded(tmp_path: Path,
                                                                   kind: str) -> None:
    """A message file or folder whose name is not UTF-8 cannot be recorded in the state store:
    it is reported and left alone, and the run records everything else (before, the run
    stopped after its copies, with no base written, so deletions were never applied)."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(b, "1700000000.M1P1.fine", "INBOX", "cur", "S")
    deliver(b, "1700000000.M2P1.gone", "INBOX", "cur", "S")
    odd = os.fsencode(b / "cur") + b"/1700000000.M3P1.h\xffst:2,S"
    with open(odd, "wb") as f:
        f.write(b"Subject: odd\n\n")
    odd_folder = os.fsencode(b) + b"/.Caf\xe9"
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(odd_folder + b"/" + sub)
    state = _state(tmp_path)
    report = sync(open_local(a), _open(b, kind), state, SyncOptions())
    assert report.counts == {"copy b->a": 2}, report.counts
    assert any("not UTF-8" in s for s in report.skipped), report.skipped
    os.unlink(a / "cur" / "1700000000.M2P1.gone:2,S")
    report = sync(open_local(a), _open(b, kind), state, SyncOptions())
    assert report.counts == {"delete b": 1}, report.counts
    assert os.path.exists(odd) and os.path.isdir(odd_folder)
    assert set(messages(a)) == {"1700000000.M1P1.fine"}


@pytest.mark.parametrize("raw_is_fs", [True, False])
def test_listings_in_bytes_or_through_str_find_the_same_names(tmp_path: Path, monkeypatch,
                                                              raw_is_fs: bool) -> None:
    """The scan compares raw names (bytes as listed); where the file system encoding is not
    UTF-8 with surrogateescape (a legacy locale), names go through str on their way: the
    same messages, the same skipped name, either way."""
    monkeypatch.setattr("mailmirror.replica.local._RAW_IS_FS", raw_is_fs)
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(b, "1700000000.M1P1.caf\u00e9", "INBOX", "cur", "S")
    deliver(b, "1700000000.M2P1.plain", "INBOX", "new", None)
    with open(os.fsencode(b / "cur") + b"/1700000000.M3P1.h\xffst:2,S", "wb") as f:
        f.write(b"Subject: odd\n\n")
    state = _state(tmp_path)
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"copy b->a": 2}, report.counts
    assert [s for s in report.skipped if "not UTF-8" in s], report.skipped
    assert set(messages(a)) == {"1700000000.M1P1.caf\u00e9", "1700000000.M2P1.plain"}
    os.rename(a / "cur" / "1700000000.M1P1.caf\u00e9:2,S",
              a / "cur" / "1700000000.M1P1.caf\u00e9:2,FS")
    os.utime(a / "cur", (1, 1))
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"move b": 1}, report.counts
    assert os.listdir(b / "cur").count("1700000000.M1P1.caf\u00e9:2,FS") == 1


_LEGACY_SYNC = """
import json, sys
from mailmirror.replica.local import open_local
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
a, b, db = sys.argv[1:4]
state = SyncState(open_store(db))
runs = [sync(open_local(a), open_local(b), state, SyncOptions()) for _ in range(2)]
print(json.dumps([sys.getfilesystemencoding()] + [[dict(r.counts), r.skipped] for r in runs]))
"""


def test_under_a_legacy_locale_a_name_that_is_not_ascii_is_skipped_not_failed(
        tmp_path: Path) -> None:
    """With an ASCII file system encoding, a UTF-8 name is not text: it must be skipped and
    reported as such on every run, as before the scan compared bytes, never turned into a
    copy that fails to read it, run after run (found by review)."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(a, "1700000000.M1P1.caf\u00e9", "INBOX", "cur", "S")
    deliver(a, "1700000000.M2P1.plain", "INBOX", "cur", "S")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env |= {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run([sys.executable, "-c", _LEGACY_SYNC, str(a), str(b),
                          str(tmp_path / "s.db")], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    encoding, first, second = json.loads(out)
    assert encoding == "ascii"
    assert first[0] == {"copy a->b": 1} and second[0] == {}
    for _, skipped in (first, second):
        assert len(skipped) == 1 and "not UTF-8" in skipped[0], skipped
    assert set(messages(b)) == {"1700000000.M2P1.plain"}


# ---------------------------------------------------------------------------------------------
# hostile agents: names the client must refuse


FAKE = r'''
import json, struct, sys
NAMES, FOLDERS = json.loads(sys.argv[1]), json.loads(sys.argv[2])
APART = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None  # the reply's "unlisted"
REPLIES = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}  # op -> [header fields, data]
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(h, data=b""):
    raw = json.dumps(h).encode()
    out.write(struct.pack(">IQ", len(raw), len(data)) + raw + data); out.flush()
while len(prefix := inp.read(12)) == 12:
    hl, dl = struct.unpack(">IQ", prefix)
    req = json.loads(inp.read(hl)); inp.read(dl)
    rid, op = req["id"], req["op"]
    if op in REPLIES:
        fields, data = REPLIES[op]
        if fields == "deep":  # a header nested past what a JSON decoder can follow
            raw = b'{"id": %d, "ok": true, "result": ' % rid + b"[" * 100_000 + b"]" * 100_000
            out.write(struct.pack(">IQ", len(raw) + 1, 0) + raw + b"}"); out.flush()
        else:
            send({"id": rid, **fields}, data.encode())
        continue
    result = {"hello": {"version": req.get("version")}, "id": "hostile-agent", "clock": 1,
              "stamps": {f: [1, 1] for f in FOLDERS}, "keywords": {}, "tombstones": {},
              "prune_quarantine": 0}.get(op)
    if op == "list":  # one block of names per folder and subdir asked
        blocks = [NAMES.get(s, "").encode() for s in req["subdirs"]]
        result = {f: [len(b) for b in blocks] for f in req["folders"]}
        send({"id": rid, "ok": True, "result": result, **({"unlisted": APART} if APART else {})},
             b"".join(blocks) * len(result))
        continue
    send({"id": rid, "ok": True, "result": result})
'''


@pytest.mark.parametrize("names,folders,apart", [
    ({"cur": "1.M1P1.x\x1b[31m:2,S"}, ["INBOX"], None),  # a control byte (terminal escape)
    ({"cur": "x" * 300}, ["INBOX"], None),  # longer than a file name can be
    ({"cur": ".."}, ["INBOX"], None),
    ({"new": "a\\..\\b"}, ["Evil\x07"], None),  # a control byte in a folder name
    ({}, ["INBOX", "a/../../b"], None),
    ({}, ["INBOX", "/etc"], None),
    # names apart from the blocks are only invalid ones (skipped, see below), where asked
    ({}, ["INBOX"], {"INBOX": {"cur": ["1.M1P1.x:2,S"]}}),
    ({}, ["INBOX"], {"INBOX": {"tmp": ["a\nb"]}}),
    ({}, ["INBOX"], {"Elsewhere": {"cur": ["a\nb"]}}),
    ({}, ["INBOX"], {"INBOX": ["a\nb"]}),
    ({}, ["INBOX"], {"INBOX": {"cur": [["a\nb"]]}}),
])
def test_hostile_names_from_an_agent_are_refused(tmp_path: Path, names: dict[str, str],
                                                 folders: list[str], apart: object) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    a = maildir(tmp_path / "a")
    before = sorted(tmp_path.rglob("*"))
    remote = AgentReplica(PipeChannel([sys.executable, str(script), json.dumps(names),
                                       json.dumps(folders), json.dumps(apart)]), "hostile")
    with pytest.raises(ReplicaError, match="invalid"):
        sync(open_local(a), remote, _state(tmp_path), SyncOptions())
    remote.channel.close()
    new = [p for p in sorted(tmp_path.rglob("*")) if p not in before]
    assert all(p.name.startswith(("s.db", "mailmirror-")) or p.parent.name == "locks"
               for p in new), new


def test_names_apart_from_an_agent_are_only_ever_skipped(tmp_path: Path) -> None:
    """A name the agent sends apart (it is not valid) is reported and skipped, never made a
    path: not even one that climbs out of the maildir."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    a = maildir(tmp_path / "a")
    before = sorted(tmp_path.rglob("*"))
    apart = {"INBOX": {"cur": ["../../x\n:2,S", "1.M1P1.h\n,S=3", "../../etc/passwd"]}}
    remote = AgentReplica(PipeChannel([sys.executable, str(script), json.dumps({}),
                                       json.dumps(["INBOX"]), json.dumps(apart)]), "hostile")
    report = sync(open_local(a), remote, _state(tmp_path), SyncOptions())
    remote.channel.close()
    assert len(report.skipped) == 3 and not report.counts
    assert all("hostile: INBOX/cur/" in line and "separator or control byte" in line
               for line in report.skipped)
    new = [p for p in sorted(tmp_path.rglob("*")) if p not in before]
    assert all(p.name.startswith(("s.db", "mailmirror-")) or p.parent.name == "locks"
               for p in new), new


MESSAGE = "1700000000.M1P1.x,S=5:2,S"  # its size in the name: no `sizes` request


@pytest.mark.parametrize("op,fields,data", [
    ("deliver", {"ok": True, "result": [[["ok"], ""]]}, ""),  # an outcome that is a list
    ("deliver", {"ok": True, "result": [["ok", {"a": 1}]]}, ""),  # a detail that is no text
    ("read", {"ok": True, "result": [[5, 10**30]]}, "hello"),  # an mtime no file can have
    ("read", {"ok": True, "result": [["ok", ""]]}, ""),  # "read" without data
    ("read", "deep", ""),
    ("stamps", {"ok": False, "error": "refused", "kind": "value"}, ""),  # not a refusable op
    ("stamps", {"ok": False, "error": "\x1b[2J\x1b[Hall good\nsecond line\r"}, ""),
])
def test_hostile_replies_from_an_agent_end_the_run_in_one_line(
        tmp_path: Path, op: str, fields: object, data: str) -> None:
    """Whatever the agent answers, the run ends with a ReplicaError (exit 3, one line of
    printable text), never another exception (a traceback), and writes nothing."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    a = maildir(tmp_path / "a")
    if op == "deliver":
        deliver(a, "1700000000.M2P1.mine", "INBOX", "cur", "S")  # for the fake to be sent
    before = view(a)
    names = {"cur": MESSAGE} if op == "read" else {}
    remote = AgentReplica(PipeChannel([sys.executable, str(script), json.dumps(names),
                                       json.dumps(["INBOX"]), json.dumps(None),
                                       json.dumps({op: [fields, data]})]), "hostile")
    with pytest.raises(ReplicaError) as stop:
        sync(open_local(a), remote, _state(tmp_path), SyncOptions())
    remote.channel.close()
    assert str(stop.value).isprintable(), str(stop.value)
    assert view(a) == before and not os.listdir(a / "tmp")


# ---------------------------------------------------------------------------------------------
# a hostile client: whatever it sends, the agent answers or ends cleanly

FIELDS = {"hello": ["version", "layout", "sep", "readonly"], "id": [], "clock": [],
          "stamps": [], "list": ["folders"], "sizes": ["refs"], "keywords": ["folder"],
          "add_keywords": ["folder", "names"], "tombstones": ["keys"], "add_tombstones": ["items"],
          "create_folder": ["folder"], "remove_folder": ["folder"], "read": ["refs"],
          "deliver": ["refs", "lengths", "mtimes"], "rename": ["sources", "targets"],
          "delete": ["refs"], "bogus": ["folder"]}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
NAME = st.sampled_from(["INBOX", "Work", "../x", "a/../../b", "", ".", "x\x00y", "cur/a",
                        "new/b", "tmp/c", "cur/../../e", "cur/" + "n" * 300, "new/\x1b", "/etc",
                        "maildir++", "fs", ":", "/"])
VALUE = (NAME | st.lists(NAME, max_size=3) | st.lists(st.integers(-2, 9), max_size=3)
         | st.lists(st.lists(NAME, min_size=2, max_size=2), max_size=3)
         | st.lists(st.lists(NAME | st.lists(NAME, max_size=2), min_size=4, max_size=4),
                    max_size=2)
         | JSON)
REQUEST = st.sampled_from(sorted(FIELDS)).flatmap(lambda op: st.fixed_dictionaries(
    {"id": st.integers(0, 9), "op": st.just(op)},
    optional={f: st.sampled_from([VERSION, 1, 99, "x"]) if f == "version" else VALUE
              for f in FIELDS[op]}))


@settings(max_examples=150)
@given(st.lists(st.tuples(REQUEST, st.binary(max_size=8)), min_size=1, max_size=6),
       st.integers(0, 40))
def test_agent_survives_any_request(tmp_path_factory: pytest.TempPathFactory,
                                    requests: list[tuple[dict, bytes]], cut: int) -> None:
    top = tmp_path_factory.mktemp("fuzz")
    root = top / "m"
    hello = encode_frame({"id": 0, "op": "hello", "version": VERSION, "layout": "maildir++"})
    stream = hello + b"".join(encode_frame(h, d) for h, d in requests)
    if cut:
        stream = stream[:-cut]  # and sometimes a frame cut short
    out = io.BytesIO()
    status = serve(str(root), io.BytesIO(stream), out)
    assert status in (0, 2)
    out.seek(0)
    while (frame := read_frame(out.read)) is not None:
        assert isinstance(frame.header.get("ok"), bool)
    assert {p.name for p in top.iterdir()} <= {"m"}, "something was written outside"


@pytest.mark.parametrize("request_frame", [
    encode_frame({"id": 1, "op": "deliver", "refs": [["INBOX", "cur/1.M1P1.x:2,S"]],
                  "lengths": [2], "mtimes": [10**30]}, b"hi"),
    encode_frame({"id": 1, "op": "prune_quarantine", "days": 10**20}),
    b"".join((lambda raw: [struct.pack(">IQ", len(raw), 0), raw])(
        b'{"id": 1, "op": "stamps", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
], ids=["mtime", "days", "deep"])
def test_numbers_past_what_a_file_can_hold_and_deep_headers_are_refused(
        tmp_path: Path, request_frame: bytes) -> None:
    """Answered with a protocol error (status 2), not a traceback with no answer."""
    hello = encode_frame({"id": 0, "op": "hello", "version": VERSION})
    out = io.BytesIO()
    assert serve(str(tmp_path / "m"), io.BytesIO(hello + request_frame), out) == 2
    out.seek(0)
    replies = [f.header for f in iter(lambda: read_frame(out.read), None)]
    assert replies[-1]["ok"] is False and "protocol error" in replies[-1]["error"]
    assert not os.listdir(tmp_path / "m" / "cur") and not os.listdir(tmp_path / "m" / "tmp")


def test_a_length_prefix_past_the_caps_is_refused_without_allocating(tmp_path: Path) -> None:
    hello = encode_frame({"id": 0, "op": "hello", "version": VERSION})
    huge = struct.pack(">IQ", 2, 1 << 62) + b"{}"
    out = io.BytesIO()
    assert serve(str(tmp_path / "m"), io.BytesIO(hello + huge), out) == 2
    out.seek(0)
    replies = [f.header for f in iter(lambda: read_frame(out.read), None)]
    assert replies[-1]["ok"] is False and "frame data" in replies[-1]["error"]
