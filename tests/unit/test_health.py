"""A backend's health: down after a few unanswered requests, one pause step per pause, one
probe after each pause, back at full speed on any answer. Time is a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from lowtide.engine.health import DOWN_AFTER, FIRST_PAUSE, MAX_PAUSE, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def down(health: Health, clock: Clock) -> None:
    for _ in range(DOWN_AFTER):
        health.unanswered("refused", clock.now)


def test_a_few_unanswered_requests_in_a_row_take_it_down(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    for _ in range(DOWN_AFTER - 1):
        assert health.unanswered("refused", clock.now) is False
        assert health.up
    assert health.unanswered("refused", clock.now) is True
    assert not health.up and health.error == "refused"
    assert health.resume_at == clock.now + FIRST_PAUSE


def test_an_answer_in_between_resets_the_count(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    for _ in range(DOWN_AFTER - 1):
        health.unanswered("refused", clock.now)
    health.answered()
    health.unanswered("refused", clock.now)
    assert health.up


def test_requests_in_flight_when_it_went_down_do_not_lengthen_the_pause(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    sent = clock.now
    down(health, clock)
    for _ in range(16):  # the rest of 16 requests in flight fail too
        health.unanswered("refused", sent)
    assert health.resume_at == clock.now + FIRST_PAUSE and health.pauses == 0


def test_each_failed_probe_doubles_the_pause_up_to_the_cap(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    down(health, clock)
    pauses = []
    for _ in range(10):
        clock.now = health.resume_at  # the pause ends: one probe goes out, and fails
        health.unanswered("refused", clock.now)
        pauses.append(health.resume_at - clock.now)
    assert pauses[:4] == [2 * FIRST_PAUSE, 4 * FIRST_PAUSE, 8 * FIRST_PAUSE, 16 * FIRST_PAUSE]
    assert pauses[-1] == MAX_PAUSE and max(pauses) == MAX_PAUSE


def test_while_down_nothing_during_a_pause_then_one_probe_alone(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    assert health.free(clock.now, in_flight=0, capacity=16) == 16
    down(health, clock)
    assert health.free(clock.now, in_flight=0, capacity=16) == 0
    clock.now = health.resume_at
    assert health.free(clock.now, in_flight=0, capacity=16) == 1
    assert health.free(clock.now, in_flight=1, capacity=16) == 0  # the probe is out
    assert health.free(clock.now, in_flight=0, capacity=0) == 0  # no slot granted: none


def test_any_answer_brings_it_back_at_full_speed(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    health = Health("gpu", clock=clock)
    with caplog.at_level(logging.WARNING, logger="lowtide.engine.health"):
        down(health, clock)
        clock.now += 7.0
        assert health.answered() is True
        assert health.answered() is False  # already up: nothing to say
    assert health.up and health.resume_at == 0.0
    assert health.free(clock.now, in_flight=0, capacity=16) == 16
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "backend gpu is down: refused",
        "backend gpu answers again, after 7.0 s down",
    ]


def test_a_failed_probe_of_the_monitor_takes_it_down_once(clock: Clock) -> None:
    health = Health("gpu", clock=clock)
    assert health.probe_failed("ClientConnectorError: Cannot connect to host") is True
    assert not health.up and health.error.startswith("ClientConnectorError")
    resume = health.resume_at
    assert health.probe_failed("still refused") is False
    assert health.resume_at == resume and health.error == "still refused"
    assert health.down_for() == 0.0
    clock.now += 3.0
    assert health.down_for() == 3.0
