"""fastae.bench.timing: the timing core of `fastae bench`. Speeds themselves are never asserted —
only relations a noisy machine keeps."""

import time

import pytest
import torch

from fastae.bench.timing import Settings, measure, measure_interleaved


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


def test_measure_interleaved_takes_turns_and_reports_failures():
    order = []

    def fn(name, sleep=0.0):
        def call():
            order.append(name)
            time.sleep(sleep)
        return call

    def broken():
        raise ValueError("no such kernel")

    late = {"calls": 0}

    def fails_later():  # passes its warm-up, then runs out of memory
        late["calls"] += 1
        if late["calls"] > 2:
            raise MemoryError("out of memory")

    got, errors = measure_interleaved({"a": fn("a", 0.002), "b": fn("b"), "bad": broken, "late": fails_later},
                                      warmup=2, min_time=0.0, min_repeats=6, rounds=3)
    assert set(got) == {"a", "b"} and isinstance(errors["bad"], ValueError)
    assert isinstance(errors["late"], MemoryError) and late["calls"] == 3  # not called again after it failed
    assert got["a"]["repeats"] == got["b"]["repeats"] == 6  # two calls a round, three rounds
    assert got["a"]["min_s"] >= 0.002 and got["a"]["first_s"] >= 0.002
    timed = order[4:]  # after each fn's two warm-up calls
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]  # rounds start at a, b, a


def test_measure_interleaved_shares_a_slow_phase():
    """A phase in which every call is slower (the machine busy) lands on both fns: their medians
    stay equal. Timed one after the other, x would have run its first 29 calls before the phase
    (median 1 ms) and y all of its calls in it (4 ms)."""
    slow = {"on": False}
    calls = {"n": 0}

    def work():
        calls["n"] += 1
        if calls["n"] > 30:  # from the 31st call on (of 82 in all) every call is slow
            slow["on"] = True
        time.sleep(0.004 if slow["on"] else 0.001)

    got, _ = measure_interleaved({"x": work, "y": work}, warmup=1, min_time=0.0, min_repeats=40, rounds=10)
    assert got["x"]["median_s"] == pytest.approx(got["y"]["median_s"], rel=0.5)
