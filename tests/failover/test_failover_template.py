"""Template rendering: golden files for both marker styles, and every template error."""

from pathlib import Path

import pytest

from failover.errors import TemplateError
from failover.template import Values, render, zone_name
from failover.zonecheck import read_serial, validate

GOLDEN = Path(__file__).parent / "golden"
VALUES = Values(2024030507, "198.51.100.20", "2001:db8:bac::20")


@pytest.mark.parametrize("style", ["inline", "comment"])
def test_rendering_matches_the_golden_file(style):
    template = (GOLDEN / f"{style}.zone").read_text()
    expected = (GOLDEN / f"{style}.rendered").read_text()
    rendered = render(template, VALUES)
    assert rendered == expected, f"regenerate {style}.rendered only after reviewing the diff"
    validate(rendered, "example.test", VALUES.serial)


def test_the_comment_style_template_is_itself_a_valid_zone():
    validate((GOLDEN / "comment.zone").read_text(), "example.test", 2024010101)


def test_rendering_preserves_line_count_and_crlf_endings():
    template = "a IN A @IP@\r\nb IN A 192.0.2.1 ; @IP@\r\n; @IP@ in prose\r\n"
    rendered = render(template, VALUES)
    assert rendered == (
        "a IN A 198.51.100.20\r\nb IN A 198.51.100.20 ; @IP@\r\n; @IP@ in prose\r\n"
    )


def test_single_line_soa_serial_is_the_first_number_after_soa():
    line = "@ 3600 IN SOA ns1.example. host.example. 7 300 60 7257600 60 ; @serial number@\n"
    assert " 2024030507 300 " in render(line, VALUES)


def test_email_addresses_and_the_origin_symbol_are_not_markers():
    text = '@ IN TXT "mail admin@example.org or x@y z@"\n@ IN MX 10 @ ; ask admin@example.org\n'
    assert render(text, VALUES) == text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("www IN A @ADDR@", "unknown marker @ADDR@"),
        ("www IN A 192.0.2.1 ; @ip@", "unknown marker @ip@"),
        ("www IN CNAME host ; @IP@", "needs exactly one IPv4 address"),
        ('t IN TXT "1.2.3.4 5.6.7.8" ; @IP@', "found 2"),
        ("www IN AAAA 2001:db8::1 ; @IP@", "needs exactly one IPv4 address"),
        ("www IN A 192.0.2.1 ; @IP6@", "main_ip6/backup_ip6 are not configured"),
        ("x IN TXT hello ; @serial number@", "needs exactly one serial number"),
    ],
)
def test_marker_errors_name_the_line(line, message):
    text = "$TTL 60\n; header\n" + line + "\n"
    with pytest.raises(TemplateError) as caught:
        render(text, Values(1, "192.0.2.10"))
    assert caught.value.line == 3
    assert message in caught.value.message
    assert caught.value.located("t/example.test.zone").startswith("t/example.test.zone:3: ")


def test_zone_name_comes_from_origin_else_the_file_name():
    assert zone_name("example.test.zone", "$TTL 60\n") == "example.test"
    assert zone_name("example.test", "") == "example.test"
    assert zone_name("db.whatever", "$ORIGIN Other.Test.\n") == "other.test"


ZONE = """$ORIGIN example.test.
$TTL 60
@ IN SOA ns1 hostmaster ( 2024010101 300 60 7257600 60 )
  IN NS ns1
ns1 IN A 127.0.0.2
LINE6
"""


@pytest.mark.parametrize(
    ("line6", "message"),
    [
        ("www IN A 203.0.113.999", 'invalid value in "www IN A 203.0.113.999"'),
        ("www IN A 203.0.113.999 ; comment", "invalid value"),
        ("www IN AAAA 192.0.2.1", "invalid value"),
        ("www IN BOGUS 1", "unknown rdatatype 'BOGUS'"),
        ("www IN MX 10", "expecting an identifier"),
    ],
)
def test_validation_names_the_bad_record_line(line6, message):
    with pytest.raises(TemplateError) as caught:
        validate(ZONE.replace("LINE6", line6), "example.test", 2024010101)
    assert caught.value.line == 6
    assert message in caught.value.message


def test_validation_requires_soa_ns_and_the_new_serial():
    no_soa = ZONE.replace("@ IN SOA ns1 hostmaster ( 2024010101 300 60 7257600 60 )\n", "")
    with pytest.raises(TemplateError, match="no SOA record at the zone origin example.test."):
        validate(no_soa.replace("LINE6", ""), "example.test", 2024010101)
    with pytest.raises(TemplateError, match="no NS record"):
        validate(ZONE.replace("  IN NS ns1\n", "").replace("LINE6", ""), "example.test", 1)
    with pytest.raises(TemplateError, match="put @serial number@ in place of the serial"):
        validate(ZONE.replace("LINE6", ""), "example.test", 2024010102)


def test_read_serial_is_lenient_about_broken_files():
    broken = ZONE.replace("LINE6", "www IN A 203.0.113.999")
    assert read_serial(broken) == 2024010101
    assert read_serial((GOLDEN / "comment.zone").read_text()) == 2024010101
    assert read_serial("no soa here\n") is None


def test_include_directives_are_refused():
    text = ZONE.replace("LINE6", "$INCLUDE /etc/passwd")
    with pytest.raises(TemplateError) as caught:
        validate(text, "example.test", 2024010101)
    assert caught.value.line == 6


def test_the_documented_example_template_renders_to_a_valid_zone():
    docs = Path(__file__).parents[2] / "docs" / "examples" / "failover" / "example.org.zone"
    rendered = render(docs.read_text(), Values(2024020100, "198.51.100.20"))
    validate(rendered, zone_name(docs.name, rendered), 2024020100)
    assert rendered.count("198.51.100.20") == 5  # ns1, mx2, and the three marked names


def test_a_serial_glued_to_its_paren_is_the_one_replaced():
    line = "@ IN SOA ns1.example. host.example. (2024010101 300 60 7257600 300) ; @serial number@\n"
    assert "(2024030507 300 60 " in render(line, VALUES)


def test_an_origin_after_the_first_record_names_no_zone():
    text = "$TTL 60\n@ IN SOA a. b. 1 2 3 4 5\n$ORIGIN _tcp.example.test.\n_sip IN SRV 0 0 1 x.\n"
    assert zone_name("example.test.zone", text) == "example.test"
    assert zone_name("x", "; hi\n$TTL 60\n$ORIGIN example.test.\n@ IN SOA a. b. 1 2 3 4 5\n") \
        == "example.test"
