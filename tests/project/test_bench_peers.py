"""The report arithmetic of experiments/bench_peers.py (its pure helpers; no torch needed)."""

import os
import sys

import pytest

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "experiments"))
import bench_peers  # noqa: E402  (imports jax and jaxdet; torch only when it runs)


def test_summary_medians_spreads_and_ratios():
    # Rounds: jaxdet 1, 2, 3 s; torchvision 4, 4, 9 s -> per-round ratios 4, 2, 3.
    s = bench_peers.summarise([1.0, 2.0, 3.0], [4.0, 4.0, 9.0])
    assert s.rounds == 3
    assert s.jaxdet == (2.0, 1.0, 3.0)
    assert s.torchvision == (4.0, 4.0, 9.0)
    assert s.ratio == 2.0  # median 4 / median 2, not the median of the per-round ratios (3)
    assert (s.ratio_min, s.ratio_max) == (2.0, 4.0)
    # 3 > 1.5 x 2 (jaxdet's median) is false (equal is not slower); 9 > 1.5 x 4 is true.
    assert s.slow == [(3, "torchvision", 9.0, 2.25)]


def test_slow_rounds_of_both_sides_in_round_order():
    s = bench_peers.summarise([1.0, 1.0, 1.0, 5.0], [2.0, 7.0, 2.0, 2.0])
    assert s.slow == [(2, "torchvision", 7.0, 3.5), (4, "jaxdet", 5.0, 5.0)]
    assert s.ratio == 2.0 and (s.ratio_min, s.ratio_max) == (0.4, 7.0)


def test_summary_needs_paired_rounds():
    with pytest.raises(ValueError):
        bench_peers.summarise([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        bench_peers.summarise([], [])


@pytest.mark.parametrize("seconds, text", [(4.5, "4500"), (1.23456, "1235"), (0.123456, "123.5"),
                                           (0.0123456, "12.35"), (0.00123456, "1.23"), (0.000123456, "0.123")])
def test_milliseconds(seconds, text):
    assert bench_peers.milliseconds(seconds) == text


def test_table_rows_and_slow_round_lines():
    s = bench_peers.summarise([0.010, 0.012, 0.011], [0.030, 0.033, 0.090])
    lines = bench_peers.table_lines([("thing, batch 8", s)])
    assert lines[0].startswith("| measurement (one call of each side per round) | rounds |")
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    # Medians 11 and 33 ms: 3.00x; per round 3.00, 2.75, 8.18; one slow torchvision round.
    assert lines[2] == ("| thing, batch 8 | 3 | 11.00 (10.00-12.00) | 33.00 (30.00-90.00) | **3.00x** (2.75-8.18) "
                        "| 0, 1 |")
    assert lines[-1] == "- thing, batch 8: round 3 of 3, torchvision 90.00 ms = 2.7x its median"


def test_table_without_slow_rounds_has_no_list():
    s = bench_peers.summarise([1.0, 1.0], [2.0, 2.0])
    assert len(bench_peers.table_lines([("a", s)])) == 3
