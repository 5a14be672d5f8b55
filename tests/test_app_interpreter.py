"""app/interpreter.py: the switch interval the studio sets, and the stall watch (a thread that keeps the interpreter
to itself for longer than the threshold is reported, with its stack; a run that releases it is not)."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from app.interpreter import SWITCH_INTERVAL, StallWatch, set_switch_interval, watch_from_env


def hold_the_interpreter(seconds: float) -> None:
    """Busy Python work that no other thread can interrupt (the switch interval made longer than the work)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds * 10)
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    finally:
        sys.setswitchinterval(old)


def test_a_hold_longer_than_the_threshold_is_logged_with_the_holders_stack(tmp_path, caplog):
    dump = open(tmp_path / "stacks.txt", "w+")
    watch = StallWatch(0.3, file=dump).start()
    try:
        time.sleep(0.2)  # the watch is running
        with caplog.at_level(logging.WARNING, logger="app.interpreter"):
            hold_the_interpreter(0.8)
            time.sleep(0.3)  # the watch wakes and logs
    finally:
        watch.stop()
        dump.flush()
    assert len(watch.stalls) == 1 and 0.4 < watch.stalls[0] < 1.5, watch.stalls
    assert "the interpreter was held for" in caplog.text
    assert "hold_the_interpreter" in (tmp_path / "stacks.txt").read_text()


def test_threads_that_sleep_or_release_the_interpreter_are_not_reported(tmp_path):
    dump = open(tmp_path / "stacks.txt", "w+")
    watch = StallWatch(0.3, file=dump).start()
    try:
        end = time.perf_counter() + 0.8
        while time.perf_counter() < end:  # busy, but with the default switch interval
            pass
        time.sleep(0.2)
    finally:
        watch.stop()
    assert watch.stalls == []
    assert (tmp_path / "stacks.txt").read_text() == ""


def test_the_watch_is_off_unless_its_variable_names_a_threshold():
    assert watch_from_env({}) is None
    with pytest.raises(ValueError, match="SDAR_STALL_REPORT must be a number of seconds"):
        watch_from_env({"SDAR_STALL_REPORT": "soon"})
    with pytest.raises(ValueError, match="longer than"):
        StallWatch(0.01)
    watch = watch_from_env({"SDAR_STALL_REPORT": "2"})
    try:
        assert watch.threshold == 2.0
    finally:
        watch.stop()


def test_the_switch_interval_is_set_from_the_environment_or_the_default():
    old = sys.getswitchinterval()
    try:
        assert set_switch_interval({}) == pytest.approx(SWITCH_INTERVAL)
        assert set_switch_interval({"SDAR_SWITCH_INTERVAL": "0.001"}) == pytest.approx(0.001)
        assert sys.getswitchinterval() == pytest.approx(0.001)
        for bad in ("fast", "0", "-1", "5"):
            with pytest.raises(ValueError, match="SDAR_SWITCH_INTERVAL must be"):
                set_switch_interval({"SDAR_SWITCH_INTERVAL": bad})
        assert sys.getswitchinterval() == pytest.approx(0.001)  # a refused value changes nothing
    finally:
        sys.setswitchinterval(old)
