"""``RustProcessor`` configured from Python, against real Kafka, PostgreSQL and Elasticsearch."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pillowtop_rs
import psycopg
import pytest
from pillowtop_rs import Pillow, RustProcessor

Publish = Callable[..., list[str]]


def es(url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - a test service URL
        return json.loads(resp.read() or b"null")


@pytest.fixture
def index(elasticsearch_url: str, unique_name: str) -> Iterator[str]:
    name = unique_name.lower()
    yield name
    try:
        es(elasticsearch_url, "DELETE", f"/{name}")
    except urllib.error.HTTPError:
        pass


def test_elasticsearch_processor_with_a_python_transform(
    kafka_bootstrap: str,
    postgres_url: str,
    elasticsearch_url: str,
    topic: str,
    index: str,
    publish: Publish,
    db: psycopg.Connection[Any],
    kit: Any,
    unique_name: str,
) -> None:
    docs = [(f"f{i}", {"_id": f"f{i}", "domain": "d", "form": {"n": i}}) for i in range(40)]
    publish(topic, [(i, kit.change_message(i, document=d)) for i, d in docs])
    publish(topic, [("f3", kit.change_message("f3", deleted=True))])
    threads: set[int] = set()

    def transform(doc: dict[str, Any]) -> dict[str, Any] | None:
        threads.add(threading.get_ident())
        if doc["form"]["n"] == 7:
            return None  # skipped: never indexed
        if doc["form"]["n"] == 9:
            raise ValueError("form 9 is bad")
        return {**doc, "n2": doc["form"]["n"] * 2}

    processor = RustProcessor(
        "elasticsearch",
        {
            "urls": [elasticsearch_url],
            "index": index,
            "mappings": {"properties": {"n2": {"type": "long"}}},
        },
        transform=transform,
    )
    assert processor.kind == "elasticsearch"
    summary = Pillow(unique_name, [topic], [processor], chunk_size=10).run(
        kafka=kafka_bootstrap, postgres=postgres_url, until_idle=True, idle_timeout=1.0
    )
    assert summary.changes == 41
    assert threads == {threading.get_ident()}
    es(elasticsearch_url, "POST", f"/{index}/_refresh")
    hits = es(elasticsearch_url, "POST", f"/{index}/_search", {"size": 100})["hits"]["hits"]
    got = {h["_id"]: h["_source"] for h in hits}
    # f3 deleted, f7 skipped by the transform, f9 failed in the transform.
    assert set(got) == {f"f{i}" for i in range(40)} - {"f3", "f7", "f9"}
    assert got["f5"]["n2"] == 10 and "_id" not in got["f5"]
    rows = kit.error_rows(db, unique_name)
    assert [r[0] for r in rows] == ["f9"]
    assert "form 9 is bad" in rows[0][2]


def test_rust_processor_configuration_is_checked_when_built() -> None:
    with pytest.raises(pillowtop_rs.ConfigurationError, match="unknown Rust processor kind"):
        RustProcessor("solr")
    with pytest.raises(pillowtop_rs.ConfigurationError, match="elasticsearch"):
        RustProcessor("elasticsearch", {"urls": ["http://x"], "index": "i", "colour": "blue"})
    waits = {"urls": ["http://x"], "index": "i", "outage_budget_secs": 60, "max_retries": 2}
    assert RustProcessor("elasticsearch", waits).kind == "elasticsearch"
    with pytest.raises(pillowtop_rs.ConfigurationError, match="invalid value: integer `-1`"):
        RustProcessor("elasticsearch", {**waits, "outage_budget_secs": -1})
    with pytest.raises(pillowtop_rs.ConfigurationError, match="takes no transform"):
        RustProcessor("noop", transform=lambda d: d)


class _Lines:
    """A ui keeping what an operation prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def out(self, line: str) -> None:
        self.lines.append(line)

    def err(self, line: str) -> None:
        self.lines.append(line)

    def read_answer(self) -> str:
        return ""


def test_reindex_applies_the_processors_python_transform(
    kafka_bootstrap: str,
    postgres_url: str,
    elasticsearch_url: str,
    topic: str,
    index: str,
    db: psycopg.Connection[Any],
    unique_name: str,
) -> None:
    """``ops.reindex`` copies the source through the processor's own Python transform (on the
    calling thread), and its verification expects what the transform makes."""
    from pillowtop_rs import ops

    table = unique_name
    db.execute(f"CREATE TABLE {table} (doc_id text PRIMARY KEY, doc jsonb NOT NULL)")
    db.execute(
        f"INSERT INTO {table} SELECT 'f' || i, jsonb_build_object('_id', 'f' || i, "  # noqa: S608
        "'domain', 'd', 'n', i) FROM generate_series(0, 39) i"
    )
    alias, new = f"{index}_alias", f"{index}_v2"
    es(elasticsearch_url, "PUT", f"/{index}", {"aliases": {alias: {}}})
    threads: set[int] = set()

    def transform(doc: dict[str, Any]) -> dict[str, Any] | None:
        threads.add(threading.get_ident())
        return None if doc["n"] == 7 else {**doc, "n2": doc["n"] * 2}

    processor = RustProcessor(
        "elasticsearch",
        {"urls": [elasticsearch_url], "index": index, "alias": alias},
        transform=transform,
    )
    assert (processor.config or {})["alias"] == alias
    pillow = Pillow(unique_name, [topic], [processor])
    ui = _Lines()
    try:
        status = ops.reindex(
            pillow,
            "start",
            postgres_url=postgres_url,
            kafka_bootstrap=kafka_bootstrap,
            source=(table, "doc_id", "doc"),
            keep_old=0,
            new_index=new,
            noinput=True,
            ui=ui,
        )
        text = "\n".join(ui.lines)
        assert status == 0, text
        assert "step done" in text, text
        assert threads == {threading.get_ident()}
        assert list(es(elasticsearch_url, "GET", f"/_alias/{alias}")) == [new]
        es(elasticsearch_url, "POST", f"/{new}/_refresh")
        hits = es(elasticsearch_url, "POST", f"/{alias}/_search", {"size": 100})["hits"]["hits"]
        got = {h["_id"]: h["_source"] for h in hits}
        assert set(got) == {f"f{i}" for i in range(40)} - {"f7"}, "f7 is skipped by the transform"
        assert got["f5"] == {"domain": "d", "n": 5, "n2": 10}
    finally:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        try:
            es(elasticsearch_url, "DELETE", f"/{new}")
        except urllib.error.HTTPError:
            pass


def test_reindex_rebuilds_a_postgres_table_processors_table_under_its_own_name(
    kafka_bootstrap: str,
    postgres_url: str,
    topic: str,
    db: psycopg.Connection[Any],
    unique_name: str,
) -> None:
    """``ops.reindex`` of a ``postgres_table`` ``RustProcessor`` (chosen by its table among two
    processors): the rebuilt table, made from the definition, replaces the stale one under the
    configured name; the definition's filter leaves a document out; the old version is dropped
    once its (zero) keep window has passed."""
    from pillowtop_rs import ops

    short = f"t_{unique_name[-8:]}"
    source, report = f"{short}_src", f"{short}_report"
    db.execute(f"CREATE TABLE {source} (doc_id text PRIMARY KEY, doc jsonb NOT NULL)")
    db.execute(
        f"INSERT INTO {source} SELECT 'f' || i, jsonb_build_object('_id', 'f' || i, "  # noqa: S608
        "'domain', CASE WHEN i = 7 THEN 'other' ELSE 'd' END, 'n', i) FROM generate_series(0, 39) i"
    )
    # The serving table is stale: two rows with old values, made before a column was defined.
    db.execute(f"CREATE TABLE {report} (doc_id text PRIMARY KEY, n integer)")
    db.execute(f"INSERT INTO {report} VALUES ('f1', -1), ('f2', -2)")
    definition = {
        "table": report,
        "primary_key": ["doc_id"],
        "filter": {"equals": {"domain": "d"}},
        "columns": [
            {"name": "doc_id", "type": "text", "change": "id"},
            {"name": "n", "type": "integer", "path": "n"},
            {"name": "n_text", "type": "text", "path": "n"},
        ],
    }
    other = RustProcessor("postgres_table", {**definition, "table": f"{short}_other"})
    pillow = Pillow(unique_name, [topic], [other, RustProcessor("postgres_table", definition)])
    ui = _Lines()
    try:
        status = ops.reindex(
            pillow,
            "start",
            processor=report,
            postgres_url=postgres_url,
            kafka_bootstrap=kafka_bootstrap,
            source=(source, "doc_id", "doc"),
            keep_old=0,
            noinput=True,
            ui=ui,
        )
        text = "\n".join(ui.lines)
        assert status == 0, text
        assert "step done" in text, text
        rows = dict(db.execute(f"SELECT doc_id, (n, n_text)::text FROM {report}").fetchall())  # noqa: S608
        assert set(rows) == {f"f{i}" for i in range(40)} - {"f7"}, "the filter leaves f7 out"
        assert rows["f1"] == "(1,1)" and rows["f30"] == "(30,30)"
        left = db.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE %s AND relname <> %s",
            (f"{report}%", report),
        ).fetchall()
        assert [r for r in left if not r[0].endswith("_pkey")] == [], left
    finally:
        db.execute(f"DROP TABLE IF EXISTS {source}")
        db.execute(f"DROP TABLE IF EXISTS {report}")
        db.execute("DELETE FROM pillowtop_rs_reindex WHERE pillow = %s", (unique_name,))
