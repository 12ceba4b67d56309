"""Serial arithmetic (RFC 1982) and the YYYYMMDDnn policy, exhaustively at small widths."""

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from failover.serial import date_floor, next_serial, serial_add, serial_gt, serial_max


def rfc1982_lt(i1: int, i2: int, bits: int) -> bool:
    """RFC 1982 section 3.2, written out literally as the oracle."""
    half = 2 ** (bits - 1)
    return (i1 < i2 and i2 - i1 < half) or (i1 > i2 and i1 - i2 > half)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_serial_gt_matches_the_rfc_for_every_pair(bits):
    space = range(2**bits)
    for a in space:
        for b in space:
            assert serial_gt(a, b, bits) == rfc1982_lt(b, a, bits), (a, b)


def test_two_bit_wraparound_is_as_the_rfc_describes():
    # 0 < 1 < 2 < 3 < 0 around the circle; opposite points (0,2) and (1,3) are undefined.
    assert [serial_gt((s + 1) % 4, s, 2) for s in range(4)] == [True] * 4
    assert not serial_gt(2, 0, 2) and not serial_gt(0, 2, 2)


@given(st.integers(2, 32).flatmap(lambda b: st.tuples(
    st.just(b), st.integers(0, 2**b - 1), st.integers(0, 2 ** (b - 1) - 1))))  # fmt: skip
def test_adding_less_than_half_the_space_is_newer(case):
    bits, serial, n = case
    added = serial_add(serial, n, bits)
    assert 0 <= added < 2**bits
    assert n == 0 or serial_gt(added, serial, bits)


def test_adding_half_the_space_is_refused():
    with pytest.raises(ValueError):
        serial_add(1, 2, bits=2)


serials = st.integers(3, 32).flatmap(
    lambda b: st.tuples(st.just(b), st.integers(0, 2**b - 1), st.integers(0, 2**b - 1))
)


@given(serials)
def test_next_serial_is_always_newer_and_never_zero(case):
    bits, current, floor = case
    result = next_serial(current, floor, bits)
    assert serial_gt(result, current, bits)
    assert 0 < result < 2**bits


@given(serials)
def test_next_serial_takes_the_date_floor_when_it_is_newer(case):
    bits, current, floor = case
    if serial_gt(floor, current, bits) and floor != 0:
        assert next_serial(current, floor, bits) == floor


@given(st.integers(3, 10).flatmap(lambda b: st.tuples(
    st.just(b), st.integers(0, 2**b - 1), st.integers(0, 2**b - 1),
    st.integers(1, 3 * 2**b))))  # fmt: skip
def test_a_run_of_bumps_never_repeats_a_recent_serial(case):
    """Each serial is newer than the last; none comes back within half the space."""
    bits, serial, floor, count = case
    last_seen = {serial: 0}
    for step in range(1, count + 1):
        bumped = next_serial(serial, floor, bits)
        assert serial_gt(bumped, serial, bits)
        assert step - last_seen.get(bumped, -(2**bits)) >= 2 ** (bits - 1) - 1
        last_seen[bumped] = step
        serial = bumped


def test_first_serial_is_todays_floor():
    assert next_serial(None, date_floor(date(2024, 1, 1))) == 2024010100


def test_past_99_rolls_forward_never_back():
    floor = date_floor(date(2024, 1, 1))
    assert next_serial(2024010199, floor) == 2024010200
    assert next_serial(2024010200, floor) == 2024010201


def test_the_next_day_starts_at_its_floor_unless_already_past_it():
    assert next_serial(2024010142, date_floor(date(2024, 1, 2))) == 2024010200
    assert next_serial(2024010249, date_floor(date(2024, 1, 2))) == 2024010250


def test_a_hand_written_small_serial_jumps_to_the_date():
    assert next_serial(1, date_floor(date(2024, 1, 1))) == 2024010100


def test_zero_is_skipped_at_the_top_of_the_space():
    assert next_serial(2**32 - 1, 2**32 - 5) == 1
    assert next_serial(7, 0, bits=3) == 1


def test_a_floor_wider_than_the_serial_is_refused():
    with pytest.raises(ValueError):
        next_serial(1, date_floor(date(4295, 1, 1)))


@given(st.dates(date(1970, 1, 1), date(4294, 12, 1)), st.integers(1, 400))
def test_date_serials_increase_as_integers_across_days(start, flips):
    """Many flips a day, over several days: strictly increasing as plain integers too."""
    serial = None
    previous = -1
    for i in range(flips):
        serial = next_serial(serial, date_floor(start + timedelta(days=i // 150)))
        assert serial > previous
        previous = serial


def test_serial_max_prefers_the_newer_and_tolerates_unknowns():
    assert serial_max(None, None) is None
    assert serial_max(5, None) == 5 and serial_max(None, 5) == 5
    assert serial_max(2024010101, 2024010102) == 2024010102
    assert serial_max(2**32 - 1, 3) == 3  # 3 is newer across the wrap
    assert serial_max(0, 2, bits=2) == 2  # undefined pair: the larger integer
