"""The node's busy meter: the fraction of recent wall time spent computing."""

import pytest

from swarmnode.server.busy import BusyMeter, SlowdownMeter
from tests.clock import Clock


def test_busy_fraction_over_a_sliding_window():
    clock = Clock(100.0)
    meter = BusyMeter(window_s=10.0, clock=clock)
    assert meter.fraction() == 0.0
    meter.add(91.0, 93.0)
    meter.add(95.0, 96.0)
    assert meter.fraction() == pytest.approx(0.3)
    clock.now = 102.0  # the window is now [92, 102]: half of the first span has left it
    assert meter.fraction() == pytest.approx(0.2)
    clock.now = 106.5
    assert meter.fraction() == 0.0
    meter.add(106.0, 106.0)  # empty spans count for nothing
    assert meter.fraction() == 0.0


def test_overlapping_spans_are_merged_and_the_fraction_never_exceeds_one():
    clock = Clock(100.0)
    meter = BusyMeter(window_s=4.0, clock=clock)
    meter.add(97.0, 97.5)  # inline decoding steps while a prompt ran in the compute thread
    meter.add(98.0, 98.5)
    meter.add(96.5, 99.0)  # the prompt, recorded when it ended
    meter.add(98.8, 100.0)
    assert meter.fraction() == pytest.approx(3.5 / 4.0)
    meter.add(90.0, 100.0)
    assert meter.fraction() == 1.0
    with pytest.raises(ValueError):
        BusyMeter(window_s=0)


def test_slowdown_is_time_in_node_over_compute_over_a_sliding_window():
    clock = Clock(100.0)
    meter = SlowdownMeter(window_s=3.0, clock=clock)
    assert meter.mean() is None  # no decoding step yet: not known (routers use the busy fraction)
    meter.add(0.030, 0.010)  # waited 20 ms for a 10 ms forward
    clock.now = 101.0
    meter.add(0.015, 0.015)  # never waited
    assert meter.mean() == pytest.approx((3.0 + 1.0) / 2)
    meter.add(0.004, 0.005)  # clocks disagree by a hair: never below 1
    meter.add(0.5, 0.0)  # no forward (nonsense): ignored
    meter.add(-1.0, 0.01)
    assert meter.mean() == pytest.approx(5.0 / 3)
    clock.now = 103.5  # the first sample has left the window
    assert meter.mean() == pytest.approx(1.0)
    clock.now = 110.0
    assert meter.mean() is None
    with pytest.raises(ValueError):
        SlowdownMeter(window_s=0)
