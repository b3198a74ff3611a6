"""Read histograms out of a Prometheus scrape of Ray's metrics agent (batch sizes, stage times).

Ray Serve's built-in ``ray_serve_actual_batch_size`` / ``ray_serve_batch_*`` histograms (only from
``@serve.batch`` methods; our segmenters use their own batcher and export ``ray_seg_batch_size``) carry a
``deployment`` tag (``Segmenter-<model>``); the service's own ``ray_seg_*`` ones a ``model`` tag (and
``stage``, ``protocol``, ...). Samples are summed over replicas and every other tag, per group of the
tags in ``GROUP_LABELS``. Ray's agent exports with a delay of several seconds: scrape after waiting.

Ray 2.60 exports a histogram's ``_sum`` as the sum of the *bucket midpoints* of the observations
(``ray/_private/telemetry/open_telemetry_metric_recorder.py``, ``record_histogram_aggregated_batch``),
not of the observed values: three batches of size 1 show ``_sum 1.5``. So ``sum / count`` is only
a rough mean. Batch sizes are integers, so their mean is taken from the buckets instead (exact where
buckets are one integer wide, the middle integer of a wider bucket otherwise).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Histograms worth reading; others are ignored.
HISTOGRAM_PREFIXES = ("ray_serve_actual_batch_size", "ray_serve_batch_", "ray_seg_")
GROUP_LABELS = ("deployment", "model", "stage", "protocol", "outcome")
BATCH_SIZE_HISTOGRAMS = ("ray_seg_batch_size", "ray_serve_actual_batch_size")


def scrape(url: str, timeout_s: float = 10.0) -> str:
    response = httpx.get(url, timeout=timeout_s)
    response.raise_for_status()
    return response.text


def _group(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={labels[k]}" for k in GROUP_LABELS if labels.get(k))


def _new() -> dict[str, Any]:
    return {"sum": 0.0, "count": 0.0, "buckets": defaultdict(float)}


def histograms(text: str, prefixes: tuple[str, ...] = HISTOGRAM_PREFIXES) -> dict[str, dict[str, dict]]:
    """``{histogram: {group: {"sum": s, "count": n, "buckets": {le: cumulative count}}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(_new))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix in ("_sum", "_count", "_bucket"):
                if not sample.name.endswith(suffix):
                    continue
                base = sample.name[: -len(suffix)]
                if not base.startswith(prefixes):
                    continue
                entry = out[base][_group(sample.labels)]
                if suffix == "_bucket":
                    entry["buckets"][float(sample.labels.get("le", "inf"))] += float(sample.value)
                else:
                    entry[suffix[1:]] += float(sample.value)
    return {
        name: {g: {**v, "buckets": dict(sorted(v["buckets"].items()))} for g, v in groups.items()}
        for name, groups in out.items()
    }


def delta(
    before: dict[str, dict[str, dict]], after: dict[str, dict[str, dict]]
) -> dict[str, dict[str, dict]]:
    """``after - before`` per histogram and group (groups without new observations are left out).

    ``mean`` is ``sum / count`` (rough: see the module docstring); ``buckets`` stay cumulative.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, groups in after.items():
        for group, value in groups.items():
            old = before.get(name, {}).get(group, {"sum": 0.0, "count": 0.0, "buckets": {}})
            count = value["count"] - old["count"]
            if count <= 0:
                continue
            total = value["sum"] - old["sum"]
            buckets = {le: n - old["buckets"].get(le, 0.0) for le, n in value.get("buckets", {}).items()}
            out.setdefault(name, {})[group] = {
                "count": count,
                "sum": total,
                "mean": total / count,
                "buckets": buckets,
            }
    return out


def integer_mean(buckets: dict[float, float]) -> float | None:
    """Mean of integer observations >= 1 from cumulative buckets ``{le: count}``."""
    total = weighted = 0.0
    previous_le, previous_count = 0.0, 0.0
    for le, cumulative in sorted(buckets.items()):
        n = cumulative - previous_count
        if n > 0:
            lo = math.floor(previous_le) + 1
            hi = math.floor(le) if math.isfinite(le) else lo
            weighted += n * (lo + max(hi, lo)) / 2
            total += n
        previous_le, previous_count = le, cumulative
    return weighted / total if total else None


def mean_batch_sizes(hist: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """``{histogram: {group: mean batch size from the buckets}}`` for the batch-size histograms."""
    out: dict[str, dict[str, float]] = {}
    for name in BATCH_SIZE_HISTOGRAMS:
        for group, value in hist.get(name, {}).items():
            mean = integer_mean(value.get("buckets", {}))
            if mean is not None:
                out.setdefault(name, {})[group] = mean
    return out
