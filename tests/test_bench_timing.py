"""fastae.bench.timing: the timing core of `fastae bench`. Speeds themselves are never asserted —
only relations a noisy machine keeps."""

import time

import pytest
import torch

from fastae.bench.timing import Settings, measure


def test_measure_times_a_known_sleep():
    m = measure(lambda: time.sleep(0.01), "cpu", warmup=1, min_time=0.05, min_repeats=3)
    assert m["repeats"] >= 3
    assert 0.01 <= m["min_s"] <= m["q1_s"] <= m["median_s"] <= m["q3_s"]
    assert m["iqr_s"] == pytest.approx(m["q3_s"] - m["q1_s"])
    assert m["first_s"] >= 0.01


def test_measure_repeats_until_min_time_and_within_bounds():
    calls = []
    m = measure(lambda: calls.append(1), "cpu", warmup=2, min_time=100.0, min_repeats=3, max_repeats=7)
    assert m["repeats"] == 7 and len(calls) == 2 + 7  # max_repeats caps a min_time it cannot reach
    m = measure(lambda: None, "cpu", warmup=0, min_time=0.0, min_repeats=4)
    assert m["repeats"] == 4  # min_time reached at once: min_repeats still holds


def test_measure_a_larger_copy_takes_longer():
    small, big = torch.randn(2**18), torch.randn(2**24)
    small_out, big_out = torch.empty_like(small), torch.empty_like(big)
    # One thread: with two, a copy waits at the barrier for a thread another process has
    # preempted, and on a busy machine every size then takes one scheduler slice.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_small = measure(lambda: small_out.copy_(small), "cpu", min_time=0.02, min_repeats=5)["median_s"]
        t_big = measure(lambda: big_out.copy_(big), "cpu", min_time=0.02, min_repeats=5)["median_s"]
    finally:
        torch.set_num_threads(threads)
    assert t_big > 4 * t_small  # 64x the bytes: holds on a loaded machine too


def test_settings_quick_full_and_min_time():
    quick, full = Settings.for_run("cpu", quick=True), Settings.for_run("cpu", quick=False)
    assert (quick.min_time, quick.min_repeats, full.min_time, full.min_repeats) == (0.25, 5, 0.5, 10)
    assert Settings.for_run("cpu", quick=True, min_time=0.01).min_time == 0.01
