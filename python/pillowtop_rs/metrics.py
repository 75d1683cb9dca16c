"""Metrics of Python pillows: the sink protocol, and a sink for CommCare's ``corehq.util.metrics``.

``Pillow.run(metrics_sink=sink)`` (Django: ``PILLOWTOP_RS["METRICS_SINK"] = "dotted.path"``) hands
the engine's metrics to ``sink`` on the thread that runs the pillow, never from the engine's own
threads: once a second and when the run ends, with counter increments summed and the last value
of each gauge since the previous batch, and every histogram observation. Names and tags are
CommCare's (``commcare.change_feed.changes.count`` with ``pillow_name``,
``commcare.change_feed.change_lag`` with ``topic``, ``commcare.change_feed.processor.timing``
in seconds with ``processor``...). A sink that raises is reported once per run, through logger
``pillowtop_rs.metrics``; the pillow goes on.

``Pillow.run(metrics_port=PORT)`` (``run_ptop --metrics-port``) serves the same metrics in
Prometheus text format at ``/metrics``, as ``pillowtop run --metrics-port`` does.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

#: CommCare's buckets for ``commcare.change_feed.processor.timing`` (seconds).
TIMING_BUCKETS = (0.03, 0.1, 0.3, 1, 3, 10)


@runtime_checkable
class MetricsSink(Protocol):
    """Where a pillow's metrics go (statsd, Datadog, ``corehq.util.metrics``...)."""

    def counter(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """Add ``value`` to counter ``name``."""

    def gauge(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """Set gauge ``name`` to ``value``."""

    def histogram(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """Record one observation (seconds, for timings) of ``name``."""


class CorehqMetricsSink:
    """Forwards to CommCare's ``corehq.util.metrics``, imported on first use.

    ``metrics_counter``, ``metrics_gauge``, ``metrics_histogram`` with CommCare's buckets.
    """

    def __init__(self, module: str = "corehq.util.metrics") -> None:
        self._module_name = module
        self._module: Any = None

    def _m(self) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._module_name)
        return self._module

    def counter(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """``metrics_counter(name, value, tags=tags)``."""
        self._m().metrics_counter(name, value, tags=dict(tags))

    def gauge(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """``metrics_gauge(name, value, tags=tags)``."""
        self._m().metrics_gauge(name, value, tags=dict(tags))

    def histogram(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        """``metrics_histogram(name, value, bucket_tag="duration", buckets=..., tags=tags)``."""
        self._m().metrics_histogram(
            name,
            value,
            bucket_tag="duration",
            buckets=TIMING_BUCKETS,
            bucket_unit="s",
            tags=dict(tags),
        )


__all__ = ["TIMING_BUCKETS", "CorehqMetricsSink", "MetricsSink"]
