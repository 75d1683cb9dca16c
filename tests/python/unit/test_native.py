"""Parity hooks of the extension module (mirrors src/python/mod.rs and src/python/errors.rs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pillowtop_rs
import pytest
from pillowtop_rs import _native, exceptions

CARGO_TOML = Path(__file__).resolve().parents[3] / "Cargo.toml"


def six_partitions(topic: str = "case-sql") -> list[tuple[str, int]]:
    return [(topic, p) for p in range(6)]


def test_version_is_the_crate_version() -> None:
    match = re.search(
        r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', CARGO_TOML.read_text(), re.M | re.S
    )
    assert match is not None
    assert _native.__version__ == match.group(1)
    assert pillowtop_rs.__version__ == match.group(1)


def test_package_reexports_the_native_hooks_and_the_exceptions() -> None:
    assert pillowtop_rs.partition_assignment is _native.partition_assignment
    assert pillowtop_rs.virtual_worker_layouts is _native.virtual_worker_layouts
    assert pillowtop_rs.parse_change_meta is _native.parse_change_meta
    assert pillowtop_rs.next_attempt_delay_minutes is _native.next_attempt_delay_minutes
    for name in exceptions.__all__:
        assert getattr(pillowtop_rs, name) is getattr(exceptions, name)
        assert name in pillowtop_rs.__all__
    for name in pillowtop_rs.__all__:
        assert hasattr(pillowtop_rs, name)


# --- partition layout (CommCare's _filter_partitions) ---


@pytest.mark.parametrize(
    ("process_num", "dedicated", "expected"),
    [
        (0, False, [0, 3]),
        (1, False, [1, 4]),
        (2, False, [2, 5]),
        (0, True, []),
        (1, True, [0, 2, 4]),
        (2, True, [1, 3, 5]),
    ],
)
def test_one_topic_six_partitions_three_processes(
    process_num: int, dedicated: bool, expected: list[int]
) -> None:
    got = _native.partition_assignment(six_partitions(), 3, process_num, dedicated)
    assert got == [("case-sql", p) for p in expected]


def test_dedicated_defaults_to_false_and_is_a_keyword() -> None:
    assert _native.partition_assignment(six_partitions(), 3, 0) == [
        ("case-sql", 0),
        ("case-sql", 3),
    ]
    assert _native.partition_assignment(six_partitions(), 3, 0, dedicated=True) == []


def test_two_topics_interleave_sorted_by_topic_then_partition() -> None:
    # Input order does not matter: pairs are sorted by topic name, then partition number.
    partitions = [("case-sql", p) for p in range(3)] + [("case", p) for p in range(3)]
    assert _native.partition_assignment(partitions, 2, 0) == [
        ("case", 0),
        ("case", 2),
        ("case-sql", 1),
    ]
    assert _native.partition_assignment(partitions, 2, 1) == [
        ("case", 1),
        ("case-sql", 0),
        ("case-sql", 2),
    ]


def test_partitions_sort_numerically() -> None:
    twelve = [("t", p) for p in reversed(range(12))]
    assert _native.partition_assignment(twelve, 11, 10) == [("t", 10)]
    assert _native.partition_assignment(twelve, 10, 9) == [("t", 9)]


def test_every_partition_has_exactly_one_owner() -> None:
    partitions = [("a", p) for p in range(32)] + [("b", p) for p in range(7)]
    for n in range(1, 10):
        for dedicated in (False, True):
            if dedicated and n < 2:
                continue
            owned = [
                tp
                for k in range(n)
                for tp in _native.partition_assignment(partitions, n, k, dedicated)
            ]
            assert sorted(owned) == sorted(partitions), (n, dedicated)


@pytest.mark.parametrize(
    ("num_processes", "process_num", "dedicated"),
    [(3, 3, False), (0, 0, False), (1, 0, True), (3, -1, False), (-3, 0, False), (2**40, 0, False)],
)
def test_impossible_layout_raises_configuration_error(
    num_processes: int, process_num: int, dedicated: bool
) -> None:
    with pytest.raises(pillowtop_rs.ConfigurationError) as info:
        _native.partition_assignment(six_partitions(), num_processes, process_num, dedicated)
    assert type(info.value) is exceptions.ConfigurationError
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, exceptions.PillowtopError)


def test_malformed_partitions_raise_type_error() -> None:
    with pytest.raises(TypeError):
        _native.partition_assignment([("case", "zero")], 1, 0)  # type: ignore[list-item]


# --- virtual workers (run_ptop --gevent-workers) ---


def test_virtual_workers_dedicated() -> None:
    assert _native.virtual_worker_layouts(4, 1, 3, dedicated=True) == [(1, 10), (2, 10), (3, 10)]


def test_virtual_workers_not_dedicated() -> None:
    assert _native.virtual_worker_layouts(4, 1, 3) == [(3, 12), (4, 12), (5, 12)]


def test_migration_process_runs_no_virtual_workers() -> None:
    assert _native.virtual_worker_layouts(4, 0, 3, True) is None


def test_virtual_workers_of_all_processes_own_every_partition_once() -> None:
    # Workers re-partition the whole set (their layouts are global), so the union over every
    # process's workers is the full set, each partition owned by exactly one worker.
    partitions = [("case", p) for p in range(24)] + [("form", p) for p in range(5)]
    for dedicated in (False, True):
        owned: list[tuple[str, int]] = []
        for k in range(4):
            layouts = _native.virtual_worker_layouts(4, k, 3, dedicated)
            if layouts is None:
                assert dedicated and k == 0
                continue
            for w, n in layouts:
                owned += _native.partition_assignment(partitions, n, w, dedicated)
        assert sorted(owned) == sorted(partitions), dedicated


@pytest.mark.parametrize(("process_num", "workers"), [(1, 1), (1, 0), (1, -2), (4, 3)])
def test_bad_virtual_worker_layouts_raise_configuration_error(
    process_num: int, workers: int
) -> None:
    with pytest.raises(exceptions.ConfigurationError):
        _native.virtual_worker_layouts(4, process_num, workers)


# --- ChangeMeta ---

DOC_EXAMPLE: dict[str, Any] = {
    "document_id": "abc",
    "data_source_type": "sql",
    "data_source_name": "form-sql",
    "document_type": "XFormInstance",
    "document_subtype": "http://commcarehq.org/case",
    "domain": "dimagi",
    "is_deletion": False,
    "document_rev": None,
    "publish_timestamp": "2019-09-18T14:31:01.930921Z",
    "attempts": 0,
}


def test_parse_change_meta_returns_commcare_fields() -> None:
    meta = _native.parse_change_meta(json.dumps(DOC_EXAMPLE).encode())
    assert meta == DOC_EXAMPLE
    assert "document" not in meta


def test_parse_change_meta_keeps_unknown_fields_and_round_trips() -> None:
    body = {
        "document_id": 12,
        "data_source_type": "couch",
        "data_source_name": "commcarehq",
        "future_field": {"a": [1, 2]},
        "attempts": 2,
        "publish_timestamp": "2019-09-18T16:31:01.930921+02:00",
    }
    meta = _native.parse_change_meta(json.dumps(body).encode())
    assert meta["document_id"] == "12"
    assert meta["future_field"] == {"a": [1, 2]}
    assert meta["attempts"] == 2
    assert meta["publish_timestamp"] == "2019-09-18T14:31:01.930921Z"
    assert meta["is_deletion"] is False
    assert _native.parse_change_meta(json.dumps(meta).encode()) == meta


def test_parse_change_meta_returns_an_embedded_document() -> None:
    document = {"_id": "d1", "form": {"x": 1, "items": [None, True, 1.5]}}
    body = {"document_id": "d1", "data_source_type": "sql", "data_source_name": "form-sql"}
    meta = _native.parse_change_meta(json.dumps({**body, "document": document}).encode())
    assert meta["document"] == document
    without = _native.parse_change_meta(json.dumps({**body, "document": None}).encode())
    assert "document" not in without


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "expected"),
        (b"", "EOF"),
        (b'{"data_source_type": "sql", "data_source_name": "x"}', "document_id"),
        (b'{"document_id": "", "data_source_type": "sql", "data_source_name": "x"}', "document_id"),
        (b'{"document_id": "a", "data_source_type": "sql"}', "data_source_name"),
        (
            b'{"document_id": "a", "data_source_type": "sql", "data_source_name": "x", '
            b'"publish_timestamp": "yesterday"}',
            "datetime",
        ),
    ],
)
def test_parse_change_meta_rejects_invalid_changes(body: bytes, needle: str) -> None:
    with pytest.raises(pillowtop_rs.InvalidChangeError, match=needle) as info:
        _native.parse_change_meta(body)
    assert type(info.value) is exceptions.InvalidChangeError
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, exceptions.DocumentError)


def test_parse_change_meta_wants_bytes() -> None:
    with pytest.raises(TypeError):
        _native.parse_change_meta(json.dumps(DOC_EXAMPLE))  # type: ignore[arg-type]


# --- retry backoff (pillow_retry) ---


def test_backoff_is_5_20_45_minutes_then_parked() -> None:
    delays = [_native.next_attempt_delay_minutes(n) for n in (1, 2, 3, 4)]
    assert delays == [5, 20, 45, None]


@pytest.mark.parametrize("attempt", [-1, 4, 10, 2**31, 2**40])
def test_backoff_out_of_range_is_parked(attempt: int) -> None:
    assert _native.next_attempt_delay_minutes(attempt) is None


def test_backoff_of_no_attempt_is_immediate() -> None:
    assert _native.next_attempt_delay_minutes(0) == 0


def test_pillow_topics_must_be_a_list_and_the_message_says_so() -> None:
    class Noop(pillowtop_rs.PillowProcessor):
        def process_change(self, change: pillowtop_rs.Change) -> None:
            pass

    expected = (
        r'Pillow "p": topics must be a list of topic names, not the string "form-sql": '
        r'write \["form-sql"\]'
    )
    with pytest.raises(TypeError, match=expected):
        pillowtop_rs.Pillow("p", "form-sql", [Noop()])
    with pytest.raises(TypeError, match=r"topics must be a list of topic names \(str\), not int"):
        pillowtop_rs.Pillow("p", 5, [Noop()])  # type: ignore[arg-type]
    assert pillowtop_rs.Pillow("p", ("a", "b"), [Noop()]).topics == ["a", "b"]


def test_kafka_publishing_error_is_a_kafka_error() -> None:
    assert issubclass(exceptions.KafkaPublishingError, exceptions.KafkaError)
    assert pillowtop_rs.KafkaPublishingError is exceptions.KafkaPublishingError
