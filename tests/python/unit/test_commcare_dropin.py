"""CommCare's Python surface, in memory (no services): a port of CommCare's pillow tests.

The processors here are written exactly as CommCare writes them: plain classes with its
processor interface, no import of our bases. CommCare's tests ported (by name):
``test_chunk_pillow`` (chunked processing, fallback to serial, a trailing partial chunk),
``test_bulk`` (de-duplication: last occurrence wins), ``test_all_pillows`` (an error is recorded;
``DocumentMissingError`` also with ``retry_errors=False``), the checkpoint tests (a checkpoint
after N changes), ``feed/interface.py``'s ``Change`` and ``ChangeMeta`` contracts.
"""

from __future__ import annotations

import copy
import datetime
import json
import pickle
from collections.abc import Callable
from typing import Any

import pillowtop_rs
import pytest
from pillowtop_rs import (
    Change,
    ChangeMeta,
    DocumentMissingError,
    DocumentNotFoundError,
    Pillow,
    parse_change_meta,
)
from pillowtop_rs.testing import CountingProcessor, FailingProcessor, RecordingProcessor
from pillowtop_rs.utils import bulk_fetch_changes_docs, ensure_document_exists

TOPIC = "form-sql"


def meta(doc_id: str, **fields: Any) -> ChangeMeta:
    return ChangeMeta(
        document_id=doc_id, data_source_type="sql", data_source_name="form-sql", **fields
    )


def change(doc_id: str, seq: int = 0, **kwargs: Any) -> Change:
    return Change(doc_id, seq, metadata=meta(doc_id), **kwargs)


class DictStore:
    """CommCare's ``DocumentStore`` reading interface over a dict."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[list[str]] = []

    def get_document(self, doc_id: str) -> dict[str, Any]:
        if doc_id not in self.docs:
            raise DocumentNotFoundError(doc_id)
        return self.docs[doc_id]

    def iter_documents(self, ids: list[str]) -> Any:
        self.calls.append(list(ids))
        return (self.docs[i] for i in ids if i in self.docs)


# --- ChangeMeta --------------------------------------------------------------------------------


def test_change_meta_round_trips_every_field_to_commcares_json() -> None:
    published = datetime.datetime(2019, 9, 18, 14, 31, 1, 930921, tzinfo=datetime.timezone.utc)
    m = ChangeMeta(
        document_id="abc",
        document_rev="3-x",
        data_source_type="sql",
        data_source_name="form-sql",
        document_type="XFormInstance",
        document_subtype="http://commcarehq.org/case",
        domain="dimagi",
        is_deletion=True,
        publish_timestamp=published,
        attempts=2,
        original_publication_datetime=datetime.datetime(2019, 9, 17, 1, 2, 3),  # naive: UTC
        associated_document_id="form1",
        a_newer_field={"kept": [1, 2]},
    )
    wire = m.to_json()
    assert wire["publish_timestamp"] == "2019-09-18T14:31:01.930921Z"
    assert wire["original_publication_datetime"] == "2019-09-17T01:02:03.000000Z"
    assert wire["a_newer_field"] == {"kept": [1, 2]}
    assert m.publish_timestamp == published
    assert m.original_publication_datetime is not None
    assert m.original_publication_datetime.tzinfo is not None
    # The core's reader reads exactly what to_json() writes, and back.
    body = json.dumps(wire).encode()
    assert parse_change_meta(body) == wire
    assert ChangeMeta.wrap(wire) == m
    assert pickle.loads(pickle.dumps(m)) == m
    assert copy.deepcopy(m) == m
    assert m.a_newer_field == {"kept": [1, 2]}
    assert m["domain"] == "dimagi"


def test_change_meta_defaults_required_fields_and_assignment() -> None:
    m = meta("d1")
    # CommCare's defaults: both timestamps "now", attempts 0, not a deletion.
    assert m.attempts == 0 and m.is_deletion is False
    assert m.publish_timestamp is not None and m.original_publication_datetime is not None
    m.attempts += 1
    m.domain = "other"
    m.document_type = "CommCareCase"
    assert (m.attempts, m.domain, m.to_json()["document_type"]) == (1, "other", "CommCareCase")
    with pytest.raises(TypeError, match="data_source_type is required"):
        ChangeMeta(document_id="x", data_source_name="y")
    with pytest.raises(TypeError, match="attempts"):
        m.attempts = "many"  # type: ignore[assignment]


# --- Change ------------------------------------------------------------------------------------


def test_change_has_commcares_constructor_attributes_and_read_only_mapping() -> None:
    c = Change("doc1", 17, document={"a": 1}, deleted=False, metadata=meta("doc1"), topic="t")
    assert (c.id, c.sequence_id, c.seq, c.topic, c.partition) == ("doc1", 17, 17, "t", None)
    assert dict(c.to_dict()) == {"id": "doc1", "seq": 17, "doc": {"a": 1}, "deleted": False}
    assert list(c) == ["id", "seq", "doc", "deleted"] and len(c) == 4 and "doc" in c
    assert c["doc"] == c.document == c.get_document() == {"a": 1}
    assert c.get("nope", 5) == 5
    mutations: list[Callable[[], object]] = [
        lambda: c.__setitem__("id", "x"),
        lambda: c.__delitem__("id"),
        c.pop,
    ]
    for mutate in mutations:
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    c.increment_attempt_count()
    assert c.metadata is not None and c.metadata.attempts == 1
    # A Couch-style sequence id is kept as given.
    assert Change("d", "12-abc").sequence_id == "12-abc"


def test_get_document_fetches_once_and_remembers_not_found() -> None:
    store = DictStore({"here": {"_id": "here", "v": 1}})
    found = Change("here", 1, document_store=store)
    assert found.should_fetch_document()
    assert found.get_document() == {"_id": "here", "v": 1}
    assert not found.should_fetch_document()
    missing = Change("gone", 2, document_store=store)
    assert missing.get_document() is None
    assert isinstance(missing.error_raised, DocumentNotFoundError)
    assert not missing.should_fetch_document()
    assert missing.get_document() is None

    class Broken:
        def get_document(self, doc_id: str) -> None:
            raise RuntimeError("store down")

    with pytest.raises(pillowtop_rs.DocumentError, match="fetching document x from .*store down"):
        Change("x", 3, document_store=Broken()).get_document()


# --- Processors written as CommCare writes them ------------------------------------------------


class CommCareStyleProcessor:
    """Plain class, CommCare's interface (``PillowProcessor``): no import of our bases."""

    supports_batch_processing = False

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.checkpoints = 0

    def process_change(self, change: Any) -> None:
        ensure_document_exists(change)
        self.seen.append((change.id, change.get_document()["v"]))

    def checkpoint_updated(self) -> None:
        self.checkpoints += 1


class CommCareStyleBulkProcessor:
    """CommCare's ``BulkPillowProcessor`` shape: retry set plus (change, exception) errors."""

    supports_batch_processing = True

    def __init__(self, raise_chunk: bool = False) -> None:
        self.raise_chunk = raise_chunk
        self.chunks: list[list[str]] = []
        self.serial: list[str] = []

    def process_changes_chunk(self, changes_chunk: list[Any]) -> tuple[set[Any], list[Any]]:
        if self.raise_chunk:
            raise RuntimeError("the whole chunk failed")
        self.chunks.append([c.id for c in changes_chunk])
        bad, _docs = bulk_fetch_changes_docs(changes_chunk)
        errors = [(c, ValueError("bad doc")) for c in changes_chunk if c.id.startswith("bad")]
        return set(bad), errors

    def process_change(self, change: Any) -> None:
        self.serial.append(change.id)


def store_pillow(processors: list[Any], **kwargs: Any) -> tuple[Pillow, DictStore]:
    docs = {f"d{i}": {"_id": f"d{i}", "v": i} for i in range(20)}
    docs.update({f"bad{i}": {"_id": f"bad{i}", "v": -1} for i in range(3)})
    store = DictStore(docs)
    return (
        Pillow(
            "test-pillow",
            [TOPIC],
            processors,
            document_stores={("sql", "form-sql"): store},
            **kwargs,
        ),
        store,
    )


def test_a_plain_commcare_processor_runs_with_bulk_fetched_documents() -> None:
    proc = CommCareStyleProcessor()
    pillow, store = store_pillow([proc], chunk_size=4)
    result = pillow.process_changes([change(f"d{i}") for i in range(10)])
    assert result.summary.changes == 10 and result.summary.failed == 0
    assert proc.seen == [(f"d{i}", i) for i in range(10)]
    # Fetched once per chunk (4 + 4 + the trailing 2), never per change.
    assert [len(c) for c in store.calls] == [4, 4, 2]
    assert result.checkpoint == {(TOPIC, 0): 10}
    assert proc.checkpoints >= 1


def test_chunked_processing_uses_the_bulk_path_and_the_trailing_partial_chunk() -> None:
    bulk = CommCareStyleBulkProcessor()
    pillow, _ = store_pillow([bulk], chunk_size=2)
    result = pillow.process_changes([change(f"d{i}") for i in range(5)])
    assert bulk.chunks == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert bulk.serial == []
    assert result.summary.failed == 0


def test_a_chunk_that_raises_falls_back_to_process_change() -> None:
    bulk = CommCareStyleBulkProcessor(raise_chunk=True)
    pillow, _ = store_pillow([bulk], chunk_size=3)
    pillow.process_changes([change(f"d{i}") for i in range(3)])
    assert bulk.serial == ["d0", "d1", "d2"]


def test_retry_set_goes_serial_and_returned_errors_are_recorded() -> None:
    bulk = CommCareStyleBulkProcessor()
    pillow, _ = store_pillow([bulk], chunk_size=10)
    changes = [change("d1"), change("missing1"), change("bad0"), change("d2")]
    result = pillow.process_changes(changes)
    assert bulk.serial == ["missing1"]  # the retry set (no document) is processed serially
    rows = {r["doc_id"]: r for r in pillow.error_rows()}
    assert set(rows) == {"bad0"}
    assert rows["bad0"]["error_type"] == "builtins.ValueError"
    assert result.summary.failed == 1


def test_deduplication_keeps_the_last_occurrence_in_order() -> None:
    rec = RecordingProcessor(batch=True)
    pillow, _ = store_pillow([rec], chunk_size=10)
    first = change("d1", document={"_id": "d1", "v": "old"})
    last = change("d1", document={"_id": "d1", "v": "new"})
    pillow.process_changes([first, change("d2"), last])
    assert [c.id for c in rec.changes_seen] == ["d2", "d1"]
    assert rec.documents[-1] == {"_id": "d1", "v": "new"}


def test_errors_are_recorded_with_attempts_and_the_hook_is_called() -> None:
    reported: list[tuple[str, str, str]] = []
    pillow = Pillow(
        "failing-pillow",
        [TOPIC],
        [FailingProcessor(fails=lambda c: c.id == "d1")],
        on_processor_error=lambda name, c, e: reported.append((name, c.id, str(e))),
    )
    pillow.process_changes([change("d0"), change("d1")])
    pillow.process_changes([change("d1")])
    rows = pillow.error_rows()
    assert [(r["doc_id"], r["current_attempt"]) for r in rows] == [("d1", 2)]
    assert rows[0]["error_type"] == "builtins.ValueError"
    assert "failed: d1" in rows[0]["error_traceback"]
    assert reported == [("failing-pillow", "d1", "failed: d1")] * 2


def test_document_missing_is_recorded_even_without_retry_errors() -> None:
    proc = CommCareStyleProcessor()
    pillow, _ = store_pillow([proc], retry_errors=False)
    pillow.process_changes([change("d1"), change("nowhere")])
    rows = pillow.error_rows()
    assert [(r["doc_id"], r["error_type"]) for r in rows] == [
        ("nowhere", "pillowtop_rs.exceptions.DocumentMissingError")
    ]


def test_a_project_or_commcare_document_missing_error_counts_as_one_by_name() -> None:
    class DocumentMissingError(Exception):  # noqa: N818 - CommCare's own class name
        """Stands in for ``pillowtop.exceptions.DocumentMissingError``."""

    def fail(change: Any) -> None:
        raise DocumentMissingError(change.id)

    proc = CountingProcessor()
    proc.process_change = fail  # type: ignore[method-assign]
    pillow = Pillow("own-missing", [TOPIC], [proc], retry_errors=False)
    pillow.process_changes([change("d1")])
    assert [r["doc_id"] for r in pillow.error_rows()] == ["d1"]


def test_no_document_store_is_a_document_missing_error_never_a_silent_none() -> None:
    proc = CommCareStyleProcessor()
    pillow = Pillow("no-store", [TOPIC], [proc])
    pillow.process_changes([change("d1")])
    (row,) = pillow.error_rows()
    assert row["error_type"] == "pillowtop_rs.exceptions.DocumentMissingError"
    assert "no document store for that data source" in row["error_traceback"]
    with pytest.raises(DocumentMissingError):
        ensure_document_exists(Change("x", 0))


def test_checkpoint_after_n_changes() -> None:
    proc = CommCareStyleProcessor()
    pillow, _ = store_pillow(
        [proc],
        chunk_size=1,
        checkpoint_frequency=3,
        max_checkpoint_delay=None,
        background_checkpoints=False,
    )
    result = pillow.process_changes([change(f"d{i}") for i in range(7)])
    # Without the delay rule (PTOP_CHECKPOINT_DELAY_OVERRIDE = None): after changes 3 and 6,
    # then the final checkpoint at the end of the feed.
    assert result.summary.checkpoints == 3
    assert result.checkpoint == {(TOPIC, 0): 7}
    # With the delay rule on, the first change after the start always writes as well: after
    # changes 1 and 4, then the final one (5 changes; without the rule: after 3, then final).
    for delay, writes in ((300.0, 3), (None, 2)):
        pillow, _ = store_pillow(
            [CommCareStyleProcessor()],
            chunk_size=1,
            checkpoint_frequency=3,
            max_checkpoint_delay=delay,
            background_checkpoints=False,
        )
        result = pillow.process_changes([change(f"d{i}") for i in range(5)])
        assert result.summary.checkpoints == writes, delay


def test_set_document_reaches_the_processors_that_follow() -> None:
    class Setter:
        def process_change(self, change: Any) -> None:
            change.set_document({"_id": change.id, "v": "set"})

    rec = RecordingProcessor()
    pillow = Pillow("setter", [TOPIC], [Setter(), rec])
    pillow.process_changes([change("d1")])
    assert rec.documents == [{"_id": "d1", "v": "set"}]


def test_a_kept_change_stays_whole_after_the_chunk() -> None:
    rec = RecordingProcessor(batch=True)
    pillow, _ = store_pillow([rec], chunk_size=3)
    pillow.process_changes([change(f"d{i}") for i in range(6)])
    kept = rec.changes_seen
    assert [c.id for c in kept] == [f"d{i}" for i in range(6)]
    assert [c.get_document()["v"] for c in kept] == list(range(6))
    assert all(c.metadata is not None and c.metadata.domain is None for c in kept)


def test_commcares_own_change_objects_are_accepted() -> None:
    class CommCareChange:  # the attributes of pillowtop.feed.interface.Change
        def __init__(self, doc_id: str, seq: int) -> None:
            self.id = doc_id
            self.sequence_id = seq
            self.document = {"_id": doc_id, "v": 0}
            self.deleted = False
            self.metadata = {
                "document_id": doc_id,
                "data_source_type": "sql",
                "data_source_name": "form-sql",
            }

    rec = RecordingProcessor()
    Pillow("cc", [TOPIC], [rec]).process_changes([CommCareChange("c1", 5)])
    assert [c.id for c in rec.changes_seen] == ["c1"]
    assert rec.documents == [{"_id": "c1", "v": 0}]


def test_objects_without_the_interface_are_refused_with_the_reason() -> None:
    with pytest.raises(TypeError, match="needs a process_change"):
        Pillow("p", [TOPIC], [object()])

    class BulkWithoutChunk:
        supports_batch_processing = True

        def process_change(self, change: Any) -> None: ...

    with pytest.raises(TypeError, match="no process_changes_chunk"):
        Pillow("p", [TOPIC], [BulkWithoutChunk()])
    with pytest.raises(TypeError, match="get_documents"):
        Pillow("p", [TOPIC], [CountingProcessor()], document_stores={("sql", "x"): object()})


def test_in_memory_refuses_what_needs_a_server_and_foreign_topics() -> None:
    pillow = Pillow(
        "p",
        [TOPIC],
        [CountingProcessor()],
        document_stores={("sql", "form-sql"): pillowtop_rs.SqlDocumentStore("docs")},
    )
    with pytest.raises(pillowtop_rs.ConfigurationError, match="reads table docs in PostgreSQL"):
        pillow.process_changes([change("d1")])
    with pytest.raises(pillowtop_rs.ConfigurationError, match="does not read"):
        Pillow("p", [TOPIC], [CountingProcessor()]).process_changes(
            [change("d1", topic="case-sql")]
        )


def test_ensure_matched_revisions_is_commcares_rule() -> None:
    from pillowtop_rs import DocumentMismatchError
    from pillowtop_rs.utils import ensure_matched_revisions

    def with_revs(doc_rev: str | None, change_rev: str | None) -> Change:
        doc = {"_id": "d"} if doc_rev is None else {"_id": "d", "_rev": doc_rev}
        return Change("d", 0, document=doc, metadata=meta("d", document_rev=change_rev))

    ensure_matched_revisions(with_revs("3-a", "3-a"))
    ensure_matched_revisions(with_revs("4-b", "3-a"))  # newer document: fine
    ensure_matched_revisions(with_revs(None, "3-a"))  # nothing to compare
    ensure_matched_revisions(with_revs("3-a", None))
    with pytest.raises(DocumentMismatchError, match="Mismatched revs for d"):
        ensure_matched_revisions(with_revs("2-x", "3-a"))
    with pytest.raises(DocumentMismatchError):
        ensure_matched_revisions(with_revs("2-x", "garbage"))
