"""Digest-guessing throttle (fastreg.throttle)."""

from __future__ import annotations

import pytest

from fastreg.throttle import AuthThrottle, FailureState, MemoryFailureCounter, entry_is_over

T0 = 1_700_000_000.0
SBC = "192.0.2.10"
OTHER = "198.51.100.7"


class CountingCounter(MemoryFailureCounter):
    """Counts calls, to check what the common case costs."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__(window_s)
        self.gets = 0
        self.updates = 0

    def get(self, key):
        self.gets += 1
        return super().get(key)

    def update(self, key, fn):
        self.updates += 1
        return super().update(key, fn)


def make(**kwargs) -> AuthThrottle:
    window_s = kwargs.get("window_s", 60)
    return AuthThrottle(CountingCounter(window_s), **kwargs)


def fail(throttle: AuthThrottle, n: int, ip: str = SBC, user: str = "200", now: float = T0) -> list[bool]:
    return [throttle.record_failure(ip, user, now) for _ in range(n)]


def test_defaults():
    throttle = AuthThrottle(MemoryFailureCounter())
    assert (throttle.max_failures, throttle.window_s, throttle.block_s) == (20, 60.0, 120.0)
    assert throttle.max_source_failures == 0


def test_blocks_after_max_failures_within_the_window():
    throttle = make(max_failures=5)
    starts = [throttle.record_failure(SBC, "200", T0 + i) for i in range(5)]
    assert starts == [False, False, False, False, True]  # the 5th failure starts the block
    assert throttle.is_blocked(SBC, "200", T0 + 5)


def test_not_blocked_below_the_limit():
    throttle = make(max_failures=5)
    fail(throttle, 4)
    assert not throttle.is_blocked(SBC, "200", T0)


def test_window_reset():
    throttle = make(max_failures=5, window_s=60)
    fail(throttle, 4, now=T0)
    # The window is over: counting starts again.
    assert throttle.record_failure(SBC, "200", T0 + 60) is False
    fail(throttle, 3, now=T0 + 61)
    assert not throttle.is_blocked(SBC, "200", T0 + 62)
    assert throttle.record_failure(SBC, "200", T0 + 62) is True


def test_block_expiry():
    throttle = make(max_failures=3, block_s=120)
    fail(throttle, 3, now=T0)
    assert throttle.is_blocked(SBC, "200", T0 + 119.9)
    assert not throttle.is_blocked(SBC, "200", T0 + 120)
    # After the block a fresh window: the limit applies again in full.
    assert fail(throttle, 3, now=T0 + 121) == [False, False, True]


def test_failures_during_a_block_do_not_extend_it():
    throttle = make(max_failures=3, block_s=120)
    fail(throttle, 3, now=T0)
    assert fail(throttle, 10, now=T0 + 100) == [False] * 10
    assert not throttle.is_blocked(SBC, "200", T0 + 120)


def test_other_source_unaffected():
    throttle = make(max_failures=3)
    fail(throttle, 3, ip=SBC, user="200")
    assert throttle.is_blocked(SBC, "200", T0)
    assert not throttle.is_blocked(OTHER, "200", T0)
    assert not throttle.is_blocked(SBC, "201", T0)  # other users behind the same address too


def test_many_users_from_one_address_never_block_with_defaults():
    """A test run: a few dozen failed attempts spread over many users from one
    address (and a couple per user) leave normal traffic untouched."""
    throttle = AuthThrottle(MemoryFailureCounter())
    now = T0
    for round_ in range(2):
        for n in range(40):
            now += 0.01
            assert throttle.record_failure(SBC, str(200 + n), now) is False
    for n in range(40):
        assert not throttle.is_blocked(SBC, str(200 + n), now)
    assert not throttle.is_blocked(SBC, "999", now)


def test_success_clears_the_count():
    throttle = make(max_failures=3)
    fail(throttle, 2)
    throttle.record_success(SBC, "200", T0 + 1)
    assert throttle.counter.get(b"192.0.2.10\x00200") is None
    assert fail(throttle, 2, now=T0 + 2) == [False, False]
    assert not throttle.is_blocked(SBC, "200", T0 + 2)


def test_success_is_cheap_without_an_entry():
    throttle = make()
    throttle.record_success(SBC, "200", T0)
    assert throttle.counter.gets == 1 and throttle.counter.updates == 0


def test_is_blocked_is_one_read():
    throttle = make()
    assert not throttle.is_blocked(SBC, "200", T0)
    assert throttle.counter.gets == 1 and throttle.counter.updates == 0


def test_check_then_success_reads_the_failure_table_once():
    # the authenticated REGISTER path: check() before the digest, and the
    # entry it read handed to record_success() after it
    throttle = make()
    blocked, state = throttle.check(SBC, "200", T0)
    assert not blocked and state is None
    throttle.record_success(SBC, "200", T0, state)
    assert throttle.counter.gets == 1 and throttle.counter.updates == 0


def test_success_with_the_checked_state_clears_the_count():
    throttle = make(max_failures=3)
    fail(throttle, 2)
    blocked, state = throttle.check(SBC, "200", T0 + 1)
    assert not blocked and state is not None and state.count == 2
    throttle.record_success(SBC, "200", T0 + 1, state)
    assert throttle.counter.get(b"192.0.2.10\x00200") is None


def test_success_does_not_lift_a_block():
    throttle = make(max_failures=3)
    fail(throttle, 3)
    throttle.record_success(SBC, "200", T0 + 1)
    assert throttle.is_blocked(SBC, "200", T0 + 1)


def test_disabled():
    throttle = make(max_failures=0)
    assert fail(throttle, 1000) == [False] * 1000
    assert not throttle.is_blocked(SBC, "200", T0)
    throttle.record_success(SBC, "200", T0)
    assert throttle.counter.gets == 0 and throttle.counter.updates == 0
    assert len(throttle.counter) == 0


def test_key_layout():
    throttle = make()
    throttle.record_failure("2001:db8::1", "jürgen", T0)
    assert throttle.counter.get("2001:db8::1\x00jürgen".encode()) == FailureState(1, T0, 0.0)


def test_hostile_username_does_not_raise():
    throttle = make(max_failures=2)
    assert fail(throttle, 2, user="\ud800x") == [False, True]
    assert throttle.is_blocked(SBC, "\ud800x", T0)


def test_purge():
    counter = MemoryFailureCounter(window_s=60)
    throttle = AuthThrottle(counter, max_failures=3, window_s=60, block_s=120)
    fail(throttle, 1, user="a", now=T0)  # window ends T0+60
    fail(throttle, 3, user="b", now=T0)  # blocked until T0+120, then a window to T0+180
    assert counter.purge(T0 + 59) == 0
    assert counter.purge(T0 + 60) == 1
    assert throttle.is_blocked(SBC, "b", T0 + 60)
    assert throttle.purge(T0 + 179) == 0
    assert throttle.purge(T0 + 180) == 1
    assert len(counter) == 0


def test_entry_is_over():
    assert not entry_is_over(FailureState(1, T0, 0.0), T0 + 59, 60)
    assert entry_is_over(FailureState(1, T0, 0.0), T0 + 60, 60)
    assert not entry_is_over(FailureState(0, T0, T0 + 200), T0 + 100, 60)


# -- the optional per-source limit and trusted peers ----------------------------------------

def test_per_source_limit_is_off_by_default():
    throttle = make(max_failures=20)
    for n in range(500):
        throttle.record_failure(OTHER, f"u{n}", T0)
    assert not throttle.is_blocked(OTHER, "fresh", T0)


def test_per_source_limit_blocks_an_untrusted_source():
    throttle = make(max_failures=20, max_source_failures=10, trusted_peers=["192.0.2.0/24"])
    starts = [throttle.record_failure(OTHER, f"u{n}", T0) for n in range(10)]
    assert starts == [False] * 9 + [True]
    assert throttle.is_blocked(OTHER, "anybody", T0 + 1)
    assert not throttle.is_blocked("198.51.100.8", "anybody", T0 + 1)


@pytest.mark.parametrize("source", [SBC, "192.0.2.200", "::ffff:192.0.2.10"])
def test_trusted_peers_are_never_blocked_as_a_whole(source):
    throttle = make(max_failures=5, max_source_failures=10, trusted_peers=["192.0.2.0/24", "2001:db8::/32"])
    assert throttle.is_trusted(source)
    for n in range(100):
        throttle.record_failure(source, f"u{n}", T0)
    assert not throttle.is_blocked(source, "fresh", T0)
    # ... but the per-(source, user) limit still applies behind the SBC.
    fail(throttle, 5, ip=source, user="victim")
    assert throttle.is_blocked(source, "victim", T0)
    assert not throttle.is_blocked(source, "neighbour", T0)


def test_trusted_peer_parsing():
    throttle = make(trusted_peers=["10.0.0.1", "2001:db8::/32", "10.1.2.3/8"])
    assert throttle.is_trusted("10.0.0.1")
    assert throttle.is_trusted("10.200.0.1")
    assert throttle.is_trusted("2001:db8::5")
    assert not throttle.is_trusted("11.0.0.1")
    assert not throttle.is_trusted("not an address")
    assert not make().is_trusted("10.0.0.1")
    with pytest.raises(ValueError):
        make(trusted_peers=["nonsense"])


@pytest.mark.parametrize("kwargs", [{"max_failures": -1}, {"window_s": 0}, {"block_s": -5},
                                    {"max_source_failures": -1}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


def test_step_may_be_retried():
    """An LMDB counter may call the update function more than once; only the
    last call's result and flag count."""

    class RetryingCounter(MemoryFailureCounter):
        def update(self, key, fn):
            fn(self._entries.get(key))  # a first attempt whose result is thrown away
            return super().update(key, fn)

    throttle = AuthThrottle(RetryingCounter(), max_failures=3)
    assert fail(throttle, 3) == [False, False, True]
    assert throttle.counter.get(b"192.0.2.10\x00200").blocked_until == T0 + 120


def test_counter_and_throttle_must_agree_on_the_window():
    with pytest.raises(ValueError):
        AuthThrottle(MemoryFailureCounter(window_s=30), window_s=60)
