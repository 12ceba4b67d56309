"""Config validation: the documented contract loads, and every problem names its key."""

import tomllib
from pathlib import Path

import pytest

from failover.config import Endpoint, load, parse_endpoint, validate
from failover.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "failover" / "config.toml"


def test_the_documented_example_is_valid_and_loads():
    config = load(EXAMPLE)
    assert config.main_ip == "192.0.2.10" and config.backup_ip == "198.51.100.20"
    assert config.reload == ("nsd-control", "reload", "{zone}")
    assert config.notify == (Endpoint("127.0.0.3", 5354),)
    assert config.verify == (Endpoint("127.0.0.2", 5353), Endpoint("127.0.0.3", 5354))
    assert (config.fail_after, config.recover_after, config.combine) == (2, 1, "all")
    assert config.templates == Path("~/var/zones/nsd").expanduser()
    check = config.checks[0]
    assert (check.type, check.timeout, check.expect) == ("http", 10.0, "optional substring")


def test_every_problem_is_listed_with_its_key():
    document = tomllib.loads(
        """
        [failover]
        main_ip = "192.0.2.300"
        backup_ip = "2001:db8::1"
        main_ip6 = "2001:db8::1"
        templates = "/z"
        zones_dir = "/z"
        reload = ["nsd-control", "reload", "{zones}"]
        notify = ["localhost:53"]
        fail_after = 0
        colour = "blue"
        [[failover.check]]
        type = "http"
        url = "main.example.org"
        port = 80
        [[failover.check]]
        type = "ping"
        """
    )
    problems = validate(document)
    for expected in [
        "failover.colour: unknown key",
        "failover.main_ip: must be an IPv4 address, not '192.0.2.300'",
        "failover.backup_ip: must be an IPv4 address",
        "failover.main_ip6/backup_ip6: set both or neither",
        "failover.zones_dir: must differ from failover.templates",
        "failover.reload: unknown placeholder in '{zones}'",
        "failover.notify: 'localhost:53' is not \"ip:port\" with an IP address",
        "failover.fail_after: must be a whole number >= 1",
        "failover.check[0].port: unknown key for type http",
        "failover.check[0].url: must be an http:// or https:// URL",
        "failover.check[1].type: must be one of http, tcp, smtp, imap",
    ]:
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 11


def test_missing_section_and_missing_keys():
    assert validate({}) == ["failover: section missing: add a [failover] table"]
    problems = validate({"failover": {}})
    assert "failover.main_ip: missing" in problems
    assert "failover.check: missing: add at least one [[failover.check]] table" in problems


def test_load_reports_all_problems_on_one_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[failover]\nmain_ip = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"config file {path}: ")
    assert "failover.main_ip: must be an IPv4 address" in message
    assert "failover.zones_dir: missing" in message
    assert caught.value.exit_code == 2


def test_unreadable_or_invalid_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found: create it"):
        load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[failover\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(bad)


@pytest.mark.parametrize("reload", [[""], [" ", "reload"]])
def test_a_reload_command_without_a_program_is_refused(reload):
    document = tomllib.loads(EXAMPLE.read_text())
    document["failover"]["reload"] = reload
    assert validate(document) == [
        'failover.reload: its first item, the program to run, is empty: name one, e.g. '
        '"nsd-control", or give [] for no reload command'
    ]


def test_nsd_config_shapes_the_default_reload_command(tmp_path):
    text = EXAMPLE.read_text().replace('reload = ["nsd-control", "reload", "{zone}"]', "")
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    assert load(path).reload == ("nsd-control", "reload", "{zone}")
    path.write_text(text.replace("[failover]", '[failover]\nnsd_config = "/etc/nsd/nsd.conf"'))
    assert load(path).reload == ("nsd-control", "-c", "/etc/nsd/nsd.conf", "reload", "{zone}")


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.3:5354", Endpoint("127.0.0.3", 5354)),
        ("192.0.2.1", Endpoint("192.0.2.1", 53)),
        ("[2001:db8::1]:5300", Endpoint("2001:db8::1", 5300)),
        ("2001:db8::1", Endpoint("2001:db8::1", 53)),
    ],
)
def test_endpoints(text, endpoint):
    assert parse_endpoint(text) == endpoint


def test_check_defaults_follow_the_type(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        EXAMPLE.read_text()
        + '[[failover.check]]\ntype = "imap"\nhost = "192.0.2.10"\ntls = true\n'
        + '[[failover.check]]\ntype = "smtp"\nhost = "192.0.2.10"\n'
    )
    imap, smtp = load(path).checks[1:]
    assert (imap.port, imap.label) == (993, "imap 192.0.2.10:993")
    assert smtp.port == 25


def test_values_that_passed_validation_and_then_crashed_a_run_are_refused():
    """Each of these once passed validation, then ended every check or run in a traceback
    ("internal error"), or in a zone no server could use."""
    document = tomllib.loads(
        """
        [failover]
        main_ip = 3221225994
        backup_ip = "198.51.100.20"
        main_ip6 = "fe80::1%eth0"
        backup_ip6 = "2001:db8::20"
        templates = "/t"
        zones_dir = "/z"
        verify_timeout = inf
        notify_timeout = nan
        [[failover.check]]
        type = "http"
        url = "http://127.0.0.1:8o/"
        [[failover.check]]
        type = "http"
        url = "http://[2001:db8::10/"
        """
    )
    problems = validate(document)
    for expected in [
        "failover.main_ip: must be an IPv4 address, not 3221225994",
        "failover.main_ip6: must be an IPv6 address, not 'fe80::1%eth0'",
        "failover.verify_timeout: must be",
        "failover.notify_timeout: must be",
        "failover.check[0].url: must be an http:// or https:// URL: ",
        "failover.check[1].url: must be an http:// or https:// URL: ",
    ]:
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 6, problems
