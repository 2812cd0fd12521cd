"""The node's busy meter: the fraction of recent wall time spent computing."""

import pytest

from swarmnode.server.busy import BusyMeter
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
