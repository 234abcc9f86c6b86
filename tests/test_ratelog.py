"""Repeated warnings: the first at once, then one per interval with a count."""

import logging

from xenguest_agent.ratelog import MAX_CONDITIONS, RateLimitedLog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_first_at_once_then_one_per_interval_with_the_count(caplog):
    clock = Clock()
    warn = RateLimitedLog(logging.getLogger("t"), interval=60, clock=clock)
    caplog.set_level(logging.WARNING)
    assert warn.warning("k", "cannot read %s", "a")
    for _ in range(3):
        clock.now += 10
        assert not warn.warning("k", "cannot read %s", "a")
    assert warn.warning("other", "cannot read %s", "b")  # conditions are separate
    clock.now = 61
    assert warn.warning("k", "cannot read %s", "a")
    clock.now = 200
    assert warn.warning("k", "cannot read %s", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read a", "cannot read b", "cannot read a (3 more times since)", "cannot read a"]


def test_memory_is_bounded():
    warn = RateLimitedLog(logging.getLogger("t"), clock=Clock())
    for n in range(MAX_CONDITIONS * 3):
        warn.warning(("refused", n), "x")
    assert len(warn._seen) == MAX_CONDITIONS
