"""The guide's main path (docs/README.md), end to end on one machine: two servers, a laptop,
DNS failover and back, with the real programs and the guide's own example files.

- "main" and "backup" are two sshd instances on 127.0.0.1, each with its own home holding
  Maildir (tests/e2e/sshkit.home_server), so `main:Maildir` and `backup:Maildir` are two
  maildirs as on two machines; main's health page is a local HTTP server.
- DNS: an NSD primary (the backup's) and an NSD secondary (main's) on loopback addresses, with
  the zone clauses of docs/examples/failover/nsd-*.conf and the template
  docs/examples/failover/example.org.zone; `failover` runs with the keys of
  docs/examples/failover/config.toml, addresses and paths replaced by the test's own.
- Configs come from `mailmirror init` (docs/examples/init/), with the example host names
  replaced by the sshd aliases and the SSH files of the test rig.
Every DNS answer is read from both NSD instances with dnspython.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.conftest import Cli, Run
from tests.e2e.sshkit import AGENT_COMMAND, deliver, home_server, maildir, make_cli, view
from tests.failover.failover_rig import (
    MainServer,
    Nsd,
    a_record,
    free_endpoint,
    soa_serial,
    toml_value,
    wait_for,
)
from tests.ssh.sshrig import SshRig, running_rig

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
ZONE = "example.org"
NAMES = (ZONE, f"www.{ZONE}", f"imap.{ZONE}")  # the records marked @IP@ in the template
FAILOVER = str(Path(sys.executable).with_name("failover"))
DOC_MAIN_IP, DOC_BACKUP_IP = "192.0.2.10", "198.51.100.20"


class GuideNsd(Nsd):
    """An NSD of the failover rig whose zone clauses are the guide's, not the rig's."""

    zones_text: str = ""

    def write_conf(self) -> None:
        super().write_conf()
        text = self.conf.read_text()
        server_part = text[:text.index("zone:")]
        self.conf.write_text(server_part + self.zones_text)


def zone_clauses(example: str, own: tuple[str, int], peer: tuple[str, int],
                 peer_ip: str) -> str:
    """The `zone:` clauses of an example NSD config, the documented peer address replaced by
    the test's loopback peer (with its port where NSD takes one), sent from our own address."""
    text = (EXAMPLES / "failover" / example).read_text()
    text = text[text.index("zone:"):]
    text = re.sub(rf"^(\s*(?:notify|request-xfr):\s*){re.escape(peer_ip)}\b",
                  rf"\g<1>{peer[0]}@{peer[1]}", text, flags=re.M)
    text = text.replace(peer_ip, peer[0])
    return text + f"    outgoing-interface: {own[0]}\n"


@pytest.fixture
def dns() -> Iterator[dict[str, Any]]:
    """NSD primary ("on the backup") and secondary ("on main") for example.org."""
    require("nsd")
    require("nsd-control")
    root = Path(tempfile.mkdtemp(prefix="guide-nsd-", dir="/tmp"))  # short control-socket paths
    root.chmod(0o755)
    templates, zones = root / "templates", root / "zones"
    for folder in (templates, zones):
        folder.mkdir(mode=0o755)
    shutil.copy(EXAMPLES / "failover" / "example.org.zone", templates)
    primary_at, secondary_at = free_endpoint(), free_endpoint()
    primary = GuideNsd("primary", root / "primary", *primary_at, "", zones)
    primary.zones_text = zone_clauses("nsd-primary.conf", primary_at, secondary_at,
                                      DOC_MAIN_IP)
    secondary = GuideNsd("secondary", root / "secondary", *secondary_at, "",
                         root / "secondary" / "zones")
    secondary.zones_text = zone_clauses("nsd-secondary.conf", secondary_at, primary_at,
                                        DOC_BACKUP_IP)
    for server in (primary, secondary):
        server.root.mkdir()
        (server.root / "tmp").mkdir()
        server.zonesdir.mkdir(exist_ok=True)
        server.write_conf()
        if os.geteuid() == 0:  # NSD drops to nobody: it must write its own files
            for path in (server.root, server.root / "tmp", server.zonesdir):
                if path != zones:
                    shutil.chown(path, "nobody", "nogroup")
    try:
        primary.start()
        secondary.start()
        yield {"primary": primary, "secondary": secondary, "templates": templates,
               "zones": zones}
    finally:
        secondary.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SshRig]:
    with running_rig(tmp_path / "ssh", require("sshd")) as ssh_rig:
        yield ssh_rig


def write_toml(path: Path, tables: dict[str, dict[str, Any]],
               arrays: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    lines = []
    for name, table in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()] + [""]
    for name, items in (arrays or {}).items():
        for item in items:
            lines += [f"[[{name}]]"] + [f"{k} = {toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def starter(role: str) -> dict[str, Any]:
    return tomllib.loads((EXAMPLES / "init" / f"{role}.toml").read_text())


def ssh_keys(rig: SshRig) -> dict[str, str]:
    return {"ssh_config": str(rig.ssh_config), "identity": str(rig.user_key),
            "known_hosts": str(rig.known_hosts), "remote_command": AGENT_COMMAND}


def answers(dns: dict[str, Any]) -> dict[str, set[str | None]]:
    """What each NSD answers for the names that follow the server that is up."""
    return {side: {a_record(dns[side].host, dns[side].port, name) for name in NAMES}
            for side in ("primary", "secondary")}


def serves(dns: dict[str, Any], ip: str, above: int = 0):
    def predicate() -> int | None:
        serials = {soa_serial(dns[s].host, dns[s].port, ZONE) for s in ("primary", "secondary")}
        ok = answers(dns) == {"primary": {ip}, "secondary": {ip}}
        serial = serials.pop() if len(serials) == 1 else None
        return serial if ok and serial and serial > above else None
    return predicate


def keyed(root: Path) -> dict[str, tuple[str, str, str]]:
    return {k: (s.folder, s.subdir, s.flags) for k, s in view(root).items()}


def run_ok(cli: Cli, *args: str) -> Run:
    run = cli.run(*args, fork=False)
    assert run.rc == 0, (args, run.rc, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    return run


def test_the_guide_main_path(rig: SshRig, dns: dict[str, Any], tmp_path: Path,
                             request: pytest.FixtureRequest) -> None:
    # -- two servers, a laptop (docs/servers.md, docs/desktop.md) ------------------------------
    main_home, backup_home = tmp_path / "main", tmp_path / "backup"
    rig.point(home_server(rig, "a", main_home), alias="main")
    rig.point(home_server(rig, "b", backup_home), alias="backup")
    main_mail = maildir(main_home / "Maildir")
    backup_mail = maildir(backup_home / "Maildir")
    laptop_mail = maildir(tmp_path / "laptop" / "Maildir")
    web = MainServer()
    web.start()
    request.addfinalizer(web.stop)
    cli = make_cli(tmp_path / "cli")

    server = starter("server")["profile"]["servers"]
    server |= {"users": [rig.user], "local": str(main_home / "Maildir"),
               "remotes": ["backup:Maildir"], "timeout": 2} | ssh_keys(rig)
    main_config = write_toml(tmp_path / "main.toml", {"profile.servers": server})
    desktop = starter("desktop")["profile"]["mail"]
    assert [r.split("@")[1].split(".")[0] for r in desktop["remotes"]] == ["main", "backup"]
    desktop |= {"local": str(laptop_mail), "remotes": ["main:Maildir", "backup:Maildir"],
                "timeout": 2} | ssh_keys(rig)
    laptop_config = write_toml(tmp_path / "laptop.toml", {"profile.mail": desktop})

    failover_example = tomllib.loads((EXAMPLES / "failover" / "config.toml").read_text())
    section = failover_example["failover"]
    main_ip, backup_ip = web.host, free_endpoint()[0]
    nsd_control = require("nsd-control")
    section |= {"main_ip": main_ip, "backup_ip": backup_ip,
                "templates": str(dns["templates"]), "zones_dir": str(dns["zones"]),
                "reload": [nsd_control, "-c", str(dns["primary"].conf), "reload", "{zone}"],
                "notify": [], "verify": [dns[s].endpoint for s in ("primary", "secondary")],
                "verify_timeout": 5}
    check = failover_example["failover"].pop("check")[0] | {
        "url": web.url, "timeout": 1, "expect": "main is up"}
    backup_config = write_toml(tmp_path / "backup.toml", {"failover": section},
                               {"failover.check": [check]})
    for config in (main_config, laptop_config, backup_config):
        run_ok(cli, "config", "check", "--config", str(config))

    def sync_servers() -> Run:
        return run_ok(cli, "sync", "servers", "--config", str(main_config), "--json",
                      "--state", str(tmp_path / "main-state.db"))

    def sync_laptop() -> Run:
        return run_ok(cli, "sync", "mail", "--config", str(laptop_config), "--json",
                      "--state", str(tmp_path / "laptop-state.db"))

    def failover_run() -> Run:
        """`failover run` as cron on the backup runs it: no terminal, so quiet but for
        IP changes and problems."""
        done = subprocess.run(
            [FAILOVER, "--config", str(backup_config), "--state",
             str(tmp_path / "backup-state.db"), "run"],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (done.stdout, done.stderr)
        return Run(done.returncode, done.stdout, done.stderr)

    # -- mail arrives on main and reaches the backup and the laptop --------------------------
    first = ["1700000001.M1P1.main", "1700000002.M2P1.main"]
    for key in first:
        deliver(main_mail, key)
    assert sync_servers().counts == {"copy a->b": 2}
    assert set(view(backup_mail)) == set(first)
    pulled = sync_laptop()
    assert pulled.counts == {"copy b->a": 2} and "main" in pulled.json["b"], pulled.json

    # -- DNS points at main ------------------------------------------------------------------
    failover_run()
    s1 = wait_for(serves(dns, main_ip), timeout=5)
    assert s1, answers(dns)

    # -- main goes down: its page stops answering, its sshd too -------------------------------
    web.stop()
    rig.stop("a")
    once = failover_run()  # fail_after = 2: one failed check does not move DNS
    assert once.stdout == "" and answers(dns)["secondary"] == {main_ip}
    switched = failover_run()
    assert switched.stdout.startswith(f"DNS now points at backup {backup_ip}"), switched.stdout
    s2 = wait_for(serves(dns, backup_ip, above=s1), timeout=5)
    assert s2, answers(dns)

    # -- mail keeps flowing through the backup ------------------------------------------------
    during = "1700000100.M1P1.backup"
    deliver(backup_mail, during)
    via_backup = sync_laptop()
    assert "backup" in via_backup.json["b"], via_backup.json
    assert via_backup.counts == {"copy b->a": 1}, via_backup.json
    read = laptop_mail / "new" / first[0]
    read.rename(laptop_mail / "cur" / f"{first[0]}:2,S")  # read on the laptop meanwhile
    assert sync_laptop().counts == {"move b": 1}
    assert keyed(laptop_mail) == keyed(backup_mail)

    # -- main comes back: DNS returns, the servers converge ----------------------------------
    rig.point(home_server(rig, "a", main_home), alias="main")
    web.start()
    back = failover_run()  # recover_after = 1
    assert back.stdout.startswith(f"DNS now points at main {main_ip}"), back.stdout
    assert wait_for(serves(dns, main_ip, above=s2), timeout=5), answers(dns)
    after = "1700000200.M1P1.main"
    deliver(main_mail, after)
    converged = sync_servers()
    assert converged.counts == {"copy a->b": 1, "copy b->a": 1, "move a": 1}, converged.json
    again = sync_laptop()
    assert "main" in again.json["b"] and again.counts == {"copy b->a": 1}, again.json
    trees = {name: keyed(root) for name, root in
             (("main", main_mail), ("backup", backup_mail), ("laptop", laptop_mail))}
    assert trees["main"] == trees["backup"] == trees["laptop"], trees
    assert set(trees["main"]) == {*first, during, after}
    assert trees["main"][first[0]] == ("INBOX", "cur", "S")
    assert sync_servers().counts == {} and sync_laptop().counts == {}
