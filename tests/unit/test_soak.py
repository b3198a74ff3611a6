"""The soak's arithmetic and verdict without a service: the slopes find a leak of the size the bounds
are about and ignore the noise the soak measured; undocumented answers, unsent kinds and an unclean
stop fail it. The real soak: tests/integration/test_soak.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadtests import soak_load, soak_report
from loadtests.soak import BOUNDS
from loadtests.soak_sample import Sample, analyse, floor, theil_sen


def samples(rss_per_request_mb: float = 0.0, series_per_request: float = 0.0, n: int = 40, seed: int = 0):
    """A replica whose RSS jumps by up to 60 MB with the images in flight (as measured), plus a trend."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        requests = 1000 + i * 150
        rss = 1000 + rss_per_request_mb * requests + rng.uniform(0, 60)
        procs = {
            "Ingress 1": {"rss_mb": rss, "fds": 74.0, "threads": 39.0},
            "haproxy 2": {"rss_mb": 19.0, "fds": 60.0 + rng.choice([-3, 0, 3]), "threads": 4.0},
        }
        session = {"plasma_mb": 0.2, "plasma_objects": 2.0, "heap_mb": 0.0, "processes": 16.0}
        session["series"] = 4000.0 + series_per_request * requests + rng.choice([-20, 0, 20])
        out.append(Sample(3.0 * i, requests, procs, session))
    return out


def by_name(series):
    return {(s.name, s.metric): s for s in series}


def test_theil_sen_and_floor():
    xs = [0, 1, 2, 3, 4, 5]
    assert theil_sen(xs, [2 * x + 1 for x in xs]) == pytest.approx(2.0)
    assert theil_sen(xs, [0, 0, 100, 0, 0, 0]) == pytest.approx(0.0)  # one spike moves nothing
    assert floor([5, 3, 9, 9, 9, 9, 9, 9], window=3) == [5, 3, 3, 3, 9, 9, 9, 9]


def test_noise_alone_stays_within_the_bounds():
    series, changed = analyse(samples(), BOUNDS)
    assert changed == []
    assert all(s.ok for s in series), [(s.name, s.metric, s.slope) for s in series if not s.ok]


@pytest.mark.parametrize("kb_per_request", [20, 100])
def test_a_replica_that_keeps_some_kilobytes_per_request_is_caught(kb_per_request: int):
    series = by_name(analyse(samples(rss_per_request_mb=kb_per_request / 1024), BOUNDS)[0])
    leak = series[("Ingress 1", "rss_mb")]
    assert not leak.ok
    assert leak.slope == pytest.approx(kb_per_request * 1000 / 1024, rel=0.35)
    assert series[("haproxy 2", "rss_mb")].ok


def test_a_label_per_request_is_caught():
    series = by_name(analyse(samples(series_per_request=0.05), BOUNDS)[0])
    assert not series[("session", "series")].ok


def test_a_process_that_comes_or_goes_is_listed():
    run = samples()
    run[-1].processes["Ingress 3"] = dict(run[-1].processes["Ingress 1"])
    _, changed = analyse(run, BOUNDS)
    assert changed == ["Ingress 3"]


def results(counts: Counter, stop: dict | None = None) -> dict:
    out = {
        "outcomes": soak_report.outcome_rows(counts, soak_load.kinds()),
        "series": [],
        "sampler_errors": [],
    }
    if stop is not None:
        out["stop"] = stop
    return out


def all_kinds_fine() -> Counter:
    counts = Counter()
    for kind in soak_load.kinds():
        counts[(kind.name, sorted(kind.expected)[0])] += 10
    return counts


def test_documented_answers_pass_and_others_fail():
    clean = {"exit_status": 0, "processes_left": [], "ports_in_use": []}
    assert soak_report.verdict(results(all_kinds_fine(), clean), 0.95) == []
    counts = all_kinds_fine()
    counts[("grpc segment (any format)", "gRPC UNAVAILABLE")] += 1
    counts[("http segment (JSON, any format)", "HTTP 503 overloaded")] += 1  # documented: busy
    problems = soak_report.verdict(results(counts, clean), 0.95)
    assert problems == ["1 x grpc segment (any format): gRPC UNAVAILABLE (not documented)"]


def test_unsent_kinds_few_served_and_an_unclean_stop_fail():
    counts = all_kinds_fine()
    del counts[("grpc stream cancelled", "cancelled")]
    counts[("http segment (JSON, any format)", "HTTP 503 overloaded")] += 500
    stop = {"exit_status": 0, "processes_left": [123], "ports_in_use": []}
    problems = soak_report.verdict(results(counts, stop), 0.95)
    assert "never sent: grpc stream cancelled" in problems
    assert any(p.startswith("segment requests served") for p in problems)
    assert any(p.startswith("the stop at the end was not clean") for p in problems)
