"""The failover decision: no flapping without N consecutive failures, prompt fail-back."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from failover.hysteresis import Health, Policy, hold, observe, release

T0 = datetime(2024, 1, 1, tzinfo=UTC)
policies = st.builds(Policy, st.integers(1, 5), st.integers(1, 5), st.sampled_from([0.0, 90.0]))
observations = st.lists(st.booleans(), max_size=60)


def replay(policy: Policy, seen: list[bool], step: timedelta = timedelta(seconds=30)):
    """Feed observations one per `step`; yield (index, transition)."""
    health = Health()
    for index, ok in enumerate(seen):
        transition = observe(health, ok, T0 + index * step, policy)
        health = transition.health
        yield index, transition


@given(policies, observations)
def test_fail_over_only_after_fail_after_consecutive_failures(policy, seen):
    for index, t in replay(policy, seen):
        if t.switched and t.health.active == "backup":
            window = seen[index - policy.fail_after + 1 : index + 1]
            assert index + 1 >= policy.fail_after and not any(window)


@given(policies, observations)
def test_fail_back_only_after_recover_after_successes_and_the_minimum_time(policy, seen):
    switched_at = None
    for index, t in replay(policy, seen):
        if t.switched and t.health.active == "backup":
            switched_at = index
        if t.switched and t.health.active == "main":
            assert all(seen[index - policy.recover_after + 1 : index + 1])
            assert (index - switched_at) * 30 >= policy.min_backup_seconds


@given(policies, observations)
def test_each_switch_is_backed_by_a_streak_so_dns_cannot_flap(policy, seen):
    """Two switches are at least min(fail_after, recover_after) observations apart."""
    switches = [index for index, t in replay(policy, seen) if t.switched]
    gap = min(policy.fail_after, policy.recover_after)
    assert all(b - a >= gap for a, b in zip(switches, switches[1:], strict=False))


@given(policies, observations)
def test_the_decision_is_not_late_either(policy, seen):
    """Once the streak is long enough (and the minimum time is over), DNS has moved."""
    for index, t in replay(policy, seen):
        h = t.health
        if h.status == "down" and h.consecutive >= policy.fail_after:
            assert h.active == "backup"
        long_enough = h.since is None or (T0 + index * timedelta(seconds=30) - h.since) >= (
            timedelta(seconds=policy.min_backup_seconds)
        )
        if h.status == "up" and h.consecutive >= policy.recover_after and long_enough:
            assert h.active == "main"


def test_classic_behaviour_one_lost_packet_does_not_fail_over():
    seen = [True, False, True, False, False, True]
    actives = [t.health.active for _, t in replay(Policy(2, 1), seen)]
    assert actives == ["main", "main", "main", "main", "backup", "main"]


def test_hold_pins_dns_until_release_and_checks_keep_counting():
    policy = Policy(1, 1)
    held = hold(Health(), "backup", T0)
    assert held.switched and held.health.active == "backup"
    after = observe(held.health, True, T0 + timedelta(seconds=1), policy)
    assert after.health.active == "backup" and after.health.consecutive == 1
    freed = observe(release(after.health), True, T0 + timedelta(seconds=2), policy)
    assert freed.switched and freed.health.active == "main"
    assert "healthy again" in freed.reason


def test_the_reason_says_how_far_the_count_is():
    t = observe(Health(), False, T0, Policy(3, 1))
    assert not t.switched and t.reason == "main failed 1 of 3 check(s) needed to fail over"
