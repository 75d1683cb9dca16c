"""Factories and classes for registry tests (no native module needed)."""

from __future__ import annotations

from typing import Any

CALLS: list[tuple[str, dict[str, Any]]] = []


class LegacyPillow:
    """A legacy pillow class: instantiated with no arguments."""

    def __init__(self) -> None:
        self.created = True


def factory(name: str, **params: Any) -> dict[str, Any]:
    """Record the call; return what it got."""
    CALLS.append((name, params))
    return {"name": name, **params}


def strict_factory(name: str, topic: str = "form") -> dict[str, Any]:
    """A factory without ``**kwargs``: rejects unknown options."""
    return {"name": name, "topic": topic}


def not_a_pillow(name: str, **params: Any) -> str:
    """Returns something that is not a Pillow."""
    return name


class RecordingMetricsSink:
    """A metrics sink for ``PILLOWTOP_RS['METRICS_SINK']`` (run_ptop instantiates it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str]]] = []

    def counter(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("counter", name, value, dict(tags)))

    def gauge(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("gauge", name, value, dict(tags)))

    def histogram(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("histogram", name, value, dict(tags)))
