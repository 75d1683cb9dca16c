"""End-to-end bench driver: one publish, every contender over the same topic, one table.

    source .services/env          # TEST_KAFKA_BOOTSTRAP, TEST_POSTGRES_URL, TEST_ELASTICSEARCH_URL
    .venv/bin/python benches/e2e/run.py                      # 200,000 changes
    .venv/bin/python benches/e2e/run.py --smoke              # 5,000 changes (CI)
    .venv/bin/python benches/e2e/run.py --only 'reference-*' --changes 50000

Each contender reads the whole topic from offset 0 under its own checkpoint id (and writes to its
own table / index), is timed from building its consumer to the N-th change handled including the
final flush and checkpoint, and is then verified: the processor saw every change, the sink holds
exactly the expected rows, the checkpoint stands at the end of every partition, no error rows.
A contender that fails verification is reported as such; its rate is not to be trusted.

Adding a contender: write ``def my_contender(ctx: Context) -> Outcome`` and register it with
``@contender("name", chunk_size, reference="reference-…")`` (see the ``pillowtop_rs`` slots below).
``ratio`` is the contender's rate over the rate of its ``reference`` measured in the same run.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from publish import (  # noqa: E402
    BASE_TIME,
    FORM_TABLE_COLUMNS,
    Dataset,
    Resources,
    form_document,
    form_id,
    plan,
    publish,
)
from reference_pillow import (  # noqa: E402
    CountingBulkProcessor,
    CountingLogic,
    ElasticsearchProcessor,
    PostgresTableProcessor,
    ReferencePillow,
    ensure_schema,
)

CHECKPOINT_FREQUENCY = 1000  # xform-pillow's; the same for every contender
MAX_CHECKPOINT_DELAY = 300.0  # CommCare's MAX_CHECKPOINT_DELAY
IDLE_TIMEOUT = 1.0  # seconds without a message before a None heartbeat / idle check
SINK_CHUNK = 1000  # chunk size of the PostgreSQL and Elasticsearch contenders
DELETION_EVERY = 100  # 1% of the changes delete a form published N/2 changes earlier


class Unavailable(Exception):
    """The contender cannot run here (missing module or service); it is skipped with the reason."""


@dataclass
class Context:
    """What a contender gets: the services, the published data, and a resource factory."""

    kafka: str
    postgres: str
    elasticsearch: str | None
    dataset: Dataset
    resources: Resources
    expected_amount: float
    pg_method: str = "unnest"
    pillow_name: str = ""  # unique per contender run; also its checkpoint id


@dataclass
class Outcome:
    """One contender run."""

    changes: int
    seconds: float
    cpu_seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Contender:
    """A registered contender."""

    name: str
    chunk_size: int
    reference: str | None
    fn: Callable[[Context], Outcome]
    needs_elasticsearch: bool = False


REGISTRY: list[Contender] = []


def contender(
    name: str, chunk_size: int, reference: str | None = None, needs_elasticsearch: bool = False
) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:
    """Register ``fn`` as a contender (registration order is the run order)."""

    def register(fn: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        REGISTRY.append(Contender(name, chunk_size, reference, fn, needs_elasticsearch))
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# Verification (shared by every contender)
# ----------------------------------------------------------------------------------------------


def check_checkpoint_and_errors(ctx: Context) -> list[str]:
    """The checkpoint stands at the end of every partition; no error rows for the pillow."""
    problems: list[str] = []
    ds = ctx.dataset
    with psycopg.connect(ctx.postgres, autocommit=True) as conn:
        rows = conn.execute(
            'SELECT "partition", "offset" FROM pillowtop_kafkacheckpoint '
            "WHERE checkpoint_id = %s AND topic = %s",
            (ctx.pillow_name, ds.topic),
        ).fetchall()
        errors = conn.execute(
            "SELECT count(*), min(error_type) FROM pillow_retry_pillowerror WHERE pillow = %s",
            (ctx.pillow_name,),
        ).fetchone()
    consumer = Consumer({"bootstrap.servers": ctx.kafka, "group.id": "bench-e2e-watermarks"})
    try:
        high = {
            p: consumer.get_watermark_offsets(TopicPartition(ds.topic, p), timeout=10)[1]
            for p in range(ds.partitions)
        }
    finally:
        consumer.close()
    stored: dict[int, int] = dict(rows)
    if stored != high:
        problems.append(f"checkpoint {stored} != end offsets {high}")
    if errors and errors[0]:
        problems.append(f"{errors[0]} error rows (e.g. {errors[1]})")
    return problems


def check_counter(counter: CountingLogic, ds: Dataset) -> list[str]:
    """Every change reached the processor (a deletion in the same chunk as its form may be
    de-duplicated away, so between N - deletions and N)."""
    if not ds.changes - ds.deletions <= counter.count <= ds.changes:
        return [f"processor counted {counter.count} of {ds.changes} changes"]
    if sum(counter.per_domain.values()) != counter.count:
        return ["per-domain counts do not add up"]
    return []


def check_table(ctx: Context, table: str) -> list[str]:
    """The table holds exactly the live forms, with the right amounts and a right sample row."""
    ds = ctx.dataset
    with psycopg.connect(ctx.postgres, autocommit=True) as conn:
        totals = conn.execute(f"SELECT count(*), sum(amount) FROM {table}".encode()).fetchone()
        sample = conn.execute(
            f"SELECT domain, xmlns, user_id, received_on, amount FROM {table} "
            "WHERE doc_id = %s".encode(),
            (form_id(0),),
        ).fetchone()
    count, amount = totals if totals is not None else (0, None)
    problems = []
    if count != ds.expected_rows:
        problems.append(f"table has {count} rows, expected {ds.expected_rows}")
    if float(amount or 0) != ctx.expected_amount:
        problems.append(f"sum(amount) {amount} != {ctx.expected_amount}")
    doc0 = form_document(0, BASE_TIME)
    want = (
        doc0["domain"],
        doc0["xmlns"],
        doc0["form"]["meta"]["userID"],
        datetime.fromisoformat(doc0["received_on"].replace("Z", "+00:00")),
        doc0["form"]["amount"],
    )
    if 0 not in deleted_forms(ds.changes) and (sample is None or tuple(sample) != want):
        problems.append(f"row of form 0 is {sample}, expected {want}")
    return problems


def check_index(ctx: Context, index: str) -> list[str]:
    """The index holds exactly the live forms."""
    ds = ctx.dataset
    es = ctx.resources.es()
    es.indices.refresh(index=index)
    count = int(es.count(index=index)["count"])
    if count != ds.expected_rows:
        return [f"index has {count} documents, expected {ds.expected_rows}"]
    return []


def deleted_forms(changes: int) -> set[int]:
    """Indices of the forms the published changes delete."""
    return {d for _, d in plan(changes, DELETION_EVERY) if d is not None}


def timed(run: Callable[[], int]) -> tuple[int, float, float]:
    """(changes, wall seconds, CPU seconds of this process) of ``run``."""
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    n = run()
    return n, time.perf_counter() - t0, time.process_time() - c0


# ----------------------------------------------------------------------------------------------
# Reference contenders (plain Python)
# ----------------------------------------------------------------------------------------------


def run_reference(ctx: Context, processor: Any, chunk_size: int) -> tuple[int, float, float]:
    """Run the reference pillow over the whole topic."""
    pillow = ReferencePillow(
        ctx.pillow_name,
        [ctx.dataset.topic],
        [processor],
        chunk_size=chunk_size,
        checkpoint_frequency=CHECKPOINT_FREQUENCY,
        max_checkpoint_delay=MAX_CHECKPOINT_DELAY,
    )

    def go() -> int:
        s = pillow.run(
            kafka=ctx.kafka,
            postgres=ctx.postgres,
            until_idle=True,
            max_changes=ctx.dataset.changes,
            idle_timeout=IDLE_TIMEOUT,
        )
        return s.changes

    return timed(go)


def reference_bulk(chunk_size: int) -> Callable[[Context], Outcome]:
    """The trivial Python bulk processor under the reference pillow."""

    def run(ctx: Context) -> Outcome:
        counter = CountingBulkProcessor()
        n, secs, cpu = run_reference(ctx, counter, chunk_size)
        problems = check_counter(counter, ctx.dataset) + check_checkpoint_and_errors(ctx)
        return Outcome(n, secs, cpu, problems)

    return run


contender("reference-python-bulk(100)", 100)(reference_bulk(100))
contender("reference-python-bulk(1000)", 1000)(reference_bulk(1000))


@contender("reference-postgres", SINK_CHUNK)
def reference_postgres(ctx: Context) -> Outcome:
    """Kafka → the reporting table, multi-row upserts via psycopg."""
    table = ctx.resources.table("ref_pg")
    processor = PostgresTableProcessor(ctx.postgres, table, FORM_TABLE_COLUMNS, ctx.pg_method)
    try:
        n, secs, cpu = run_reference(ctx, processor, SINK_CHUNK)
    finally:
        processor.close()
    problems = check_table(ctx, table) + check_checkpoint_and_errors(ctx)
    return Outcome(n, secs, cpu, problems)


@contender("reference-elasticsearch", SINK_CHUNK, needs_elasticsearch=True)
def reference_elasticsearch(ctx: Context) -> Outcome:
    """Kafka → an Elasticsearch index, ``elasticsearch.helpers.bulk`` per chunk."""
    assert ctx.elasticsearch is not None
    index = ctx.resources.index("ref_es")
    processor = ElasticsearchProcessor(ctx.elasticsearch, index)
    n, secs, cpu = run_reference(ctx, processor, SINK_CHUNK)
    problems = check_index(ctx, index) + check_checkpoint_and_errors(ctx)
    return Outcome(n, secs, cpu, problems)


@contender("direct-postgres-copy", SINK_CHUNK)
def direct_postgres(ctx: Context) -> Outcome:
    """PostgreSQL's ceiling for this table: the end state's rows (live forms only), built
    *before* the clock starts, written with one ``COPY`` per ``SINK_CHUNK`` rows into the empty
    table. No Kafka, no upsert, no deletes: what a perfect engine could reach."""
    table = ctx.resources.table("direct_pg")
    now = datetime.now(BASE_TIME.tzinfo)
    deleted = deleted_forms(ctx.dataset.changes)
    live = [
        i for i, d in plan(ctx.dataset.changes, DELETION_EVERY) if d is None and i not in deleted
    ]
    rows: list[tuple[Any, ...]] = []
    for i in live:
        doc = form_document(i, now)
        row: list[Any] = []
        for _name, _sqltype, path in FORM_TABLE_COLUMNS:
            value: Any = doc
            for key in path:
                value = value[key]
            row.append(value)
        rows.append(tuple(row))
    columns = ", ".join(name for name, _, _ in FORM_TABLE_COLUMNS)

    def go() -> int:
        with psycopg.connect(ctx.postgres) as conn:
            for start in range(0, len(rows), SINK_CHUNK):
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN".encode()) as copy:
                        for r in rows[start : start + SINK_CHUNK]:
                            copy.write_row(r)
                conn.commit()
        return ctx.dataset.changes

    n, secs, cpu = timed(go)
    return Outcome(n, secs, cpu, check_table(ctx, table))


@contender("direct-elasticsearch-bulk", SINK_CHUNK, needs_elasticsearch=True)
def direct_elasticsearch(ctx: Context) -> Outcome:
    """The search node's ceiling: the same index and delete actions, in the same order, as
    NDJSON bulk bodies of ``SINK_CHUNK`` actions built *before* the clock starts, sent one after
    another. No Kafka, no client-side encoding: what a perfect engine could reach."""
    assert ctx.elasticsearch is not None
    index = ctx.resources.index("direct_es")
    now = datetime.now(BASE_TIME.tzinfo)
    bodies: list[bytes] = []
    lines: list[bytes] = []
    actions = 0
    for i, deleted in plan(ctx.dataset.changes, DELETION_EVERY):
        if deleted is not None:
            lines.append(
                json.dumps({"delete": {"_index": index, "_id": form_id(deleted)}}).encode()
            )
        else:
            doc = form_document(i, now)
            doc_id = doc.pop("_id")
            lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}).encode())
            lines.append(json.dumps(doc, separators=(",", ":")).encode())
        actions += 1
        if actions == SINK_CHUNK:
            bodies.append(b"\n".join(lines) + b"\n")
            lines, actions = [], 0
    if lines:
        bodies.append(b"\n".join(lines) + b"\n")
    es = ctx.resources.es()

    def go() -> int:
        for body in bodies:
            result = es.transport.perform_request(
                "POST", "/_bulk", body=body, headers={"content-type": "application/x-ndjson"}
            )
            assert isinstance(result, dict)
            failed = [
                item
                for item in result.get("items", [])
                for op in item.values()
                if op.get("status", 200) >= 300 and op.get("status") != 404
            ]
            if failed:
                raise RuntimeError(f"direct bulk failed: {failed[:3]}")
        return ctx.dataset.changes

    n, secs, cpu = timed(go)
    return Outcome(n, secs, cpu, check_index(ctx, index))


# ----------------------------------------------------------------------------------------------
# pillowtop_rs contenders: the same work run by pillowtop_rs.Pillow, with the Python processor or
# with Rust processors (`RustProcessor`). Each one raises Unavailable (so it is skipped with the
# reason) when pillowtop_rs is not importable or lacks what it needs.
# ----------------------------------------------------------------------------------------------


def pillowtop_rs() -> Any:
    """The ``pillowtop_rs`` module, or ``Unavailable``."""
    # The engine's per-pillow INFO lines would interleave with the progress lines.
    os.environ.setdefault("PILLOWTOP_LOG", "warn")
    try:
        module = importlib.import_module("pillowtop_rs")
    except ImportError as e:
        raise Unavailable(f"pillowtop_rs is not importable ({e})") from e
    if not hasattr(module, "Pillow"):
        raise Unavailable("pillowtop_rs has no Pillow yet")
    return module


def rust_processor(kind: str, ctx: Context, target: str | None = None) -> Any:
    """A Rust processor for ``pillowtop_rs.Pillow``.

    ``kind`` is ``noop`` (does nothing per change: measures the engine plus the Python front),
    ``postgres`` (the reporting table ``target`` with the columns of ``publish.FORM_TABLE_COLUMNS``:
    column, SQL type, JSON path; ``doc_id`` primary key; deletions delete the row) or
    ``elasticsearch`` (index ``target`` at ``ctx.elasticsearch``; the source is the document
    without ``_id``; deletions delete, a 404 is fine).
    """
    rs = pillowtop_rs()
    if not hasattr(rs, "RustProcessor"):
        raise Unavailable("pillowtop_rs has no RustProcessor")
    if kind == "noop":
        return rs.RustProcessor("noop", {"batch": True})
    if kind == "elasticsearch":
        return rs.RustProcessor(
            "elasticsearch",
            {"urls": [ctx.elasticsearch], "index": target, "max_actions_per_request": SINK_CHUNK},
        )
    if kind == "postgres":
        columns: list[dict[str, str]] = []
        for name, sqltype, path in FORM_TABLE_COLUMNS:
            if name == "doc_id":
                columns.append({"name": name, "type": sqltype, "change": "id"})
            else:
                columns.append({"name": name, "type": sqltype, "path": ".".join(path)})
        return rs.RustProcessor(
            "postgres_table", {"table": target, "columns": columns, "primary_key": ["doc_id"]}
        )
    raise Unavailable(f"unknown Rust processor kind {kind}")


def run_pillowtop_rs(
    ctx: Context, processors: list[Any], chunk_size: int
) -> tuple[int, float, float]:
    """Run a ``pillowtop_rs.Pillow`` over the whole topic with the reference's settings."""
    rs = pillowtop_rs()
    pillow = rs.Pillow(
        ctx.pillow_name,
        [ctx.dataset.topic],
        processors,
        checkpoint_id=ctx.pillow_name,
        chunk_size=chunk_size,
        checkpoint_frequency=CHECKPOINT_FREQUENCY,
        max_checkpoint_delay=MAX_CHECKPOINT_DELAY,
        start_policy="earliest",
    )

    def go() -> int:
        summary = pillow.run(
            kafka=ctx.kafka, postgres=ctx.postgres, until_idle=True, max_changes=ctx.dataset.changes
        )
        return int(summary.changes)

    return timed(go)


def rs_python_bulk(chunk_size: int) -> Callable[[Context], Outcome]:
    """The same trivial Python bulk processor (``CountingLogic``) run by ``pillowtop_rs``."""

    def run(ctx: Context) -> Outcome:
        rs = pillowtop_rs()
        if not hasattr(rs, "BulkPillowProcessor"):
            raise Unavailable("pillowtop_rs has no BulkPillowProcessor")
        cls = type("CountingBulkProcessor", (CountingLogic, rs.BulkPillowProcessor), {})
        counter = cls()
        n, secs, cpu = run_pillowtop_rs(ctx, [counter], chunk_size)
        problems = check_counter(counter, ctx.dataset) + check_checkpoint_and_errors(ctx)
        return Outcome(n, secs, cpu, problems)

    return run


def rs_noop(chunk_size: int) -> Callable[[Context], Outcome]:
    """A Rust no-op processor run by ``pillowtop_rs``: the baseline for the Python crossing cost."""

    def run(ctx: Context) -> Outcome:
        processor = rust_processor("noop", ctx)
        n, secs, cpu = run_pillowtop_rs(ctx, [processor], chunk_size)
        return Outcome(n, secs, cpu, check_checkpoint_and_errors(ctx))

    return run


for _chunk in (100, 1000):
    contender(
        f"pillowtop-rs-python-bulk({_chunk})", _chunk, reference=f"reference-python-bulk({_chunk})"
    )(rs_python_bulk(_chunk))
    contender(f"pillowtop-rs-noop({_chunk})", _chunk, reference=f"reference-python-bulk({_chunk})")(
        rs_noop(_chunk)
    )


@contender("pillowtop-rs-postgres", SINK_CHUNK, reference="reference-postgres")
def rs_postgres(ctx: Context) -> Outcome:
    """The Rust PostgreSQL table processor run by ``pillowtop_rs``."""
    pillowtop_rs()
    table = ctx.resources.table("rs_pg")
    processor = rust_processor("postgres", ctx, table)
    n, secs, cpu = run_pillowtop_rs(ctx, [processor], SINK_CHUNK)
    return Outcome(n, secs, cpu, check_table(ctx, table) + check_checkpoint_and_errors(ctx))


@contender(
    "pillowtop-rs-elasticsearch",
    SINK_CHUNK,
    reference="reference-elasticsearch",
    needs_elasticsearch=True,
)
def rs_elasticsearch(ctx: Context) -> Outcome:
    """The Rust Elasticsearch processor run by ``pillowtop_rs``."""
    pillowtop_rs()
    index = ctx.resources.index("rs_es")
    processor = rust_processor("elasticsearch", ctx, index)
    n, secs, cpu = run_pillowtop_rs(ctx, [processor], SINK_CHUNK)
    return Outcome(n, secs, cpu, check_index(ctx, index) + check_checkpoint_and_errors(ctx))


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the result table (the best of the rounds)."""

    name: str
    chunk_size: int
    changes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rate: float = 0.0
    mb_rate: float = 0.0
    ratio: float | None = None
    status: str = ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--changes", type=int, default=200_000, help="changes to publish (200000)")
    p.add_argument("--smoke", action="store_true", help="small sizes for CI (5000 changes)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="contender names or globs, comma-separated (repeatable); default: all",
    )
    p.add_argument("--list", action="store_true", help="list the contenders and exit")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topic (4)")
    p.add_argument("--rounds", type=int, default=1, help="runs per contender; the best counts")
    p.add_argument(
        "--pg-method",
        choices=("values", "unnest", "executemany"),
        default="unnest",
        help="the reference PostgreSQL writer's upsert: unnest (one array per column; measured "
        "fastest), values (psycopg2 execute_values style), executemany (pipelined)",
    )
    p.add_argument("--settle", type=float, default=2.0, help="pause between contenders (s)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the topic, tables and indices")
    args = p.parse_args(argv)
    if args.smoke:
        args.changes = 5000
    return args


def selected(only: list[str]) -> list[Contender]:
    patterns = [x.strip() for item in only for x in item.split(",") if x.strip()]
    if not patterns:
        return list(REGISTRY)
    chosen = [c for c in REGISTRY if any(fnmatch.fnmatchcase(c.name, pat) for pat in patterns)]
    unknown = [
        pat for pat in patterns if not any(fnmatch.fnmatchcase(c.name, pat) for c in REGISTRY)
    ]
    if unknown:
        raise SystemExit(f"no contender matches {unknown}; --list shows them")
    return chosen


def expected_amount(changes: int) -> float:
    deleted = deleted_forms(changes)
    total = 0.0
    for i, d in plan(changes, DELETION_EVERY):
        if d is None and i not in deleted:
            total += round((i % 10_000) * 0.25, 2)
    return total


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for c in REGISTRY:
            ref = f"  (vs {c.reference})" if c.reference else ""
            print(f"{c.name:<34} chunk {c.chunk_size}{ref}")
        return 0
    contenders = selected(args.only)
    kafka = os.environ.get("TEST_KAFKA_BOOTSTRAP", "")
    postgres = os.environ.get("TEST_POSTGRES_URL", "")
    elasticsearch = os.environ.get("TEST_ELASTICSEARCH_URL") or None
    if not kafka or not postgres:
        msg = "TEST_KAFKA_BOOTSTRAP and TEST_POSTGRES_URL must be set (source .services/env)"
        if os.environ.get("CI"):
            print(f"e2e bench: {msg}", file=sys.stderr)
            return 1
        print(f"e2e bench skipped: {msg}")
        return 0

    with psycopg.connect(postgres, autocommit=True) as conn:
        ensure_schema(conn)
    with Resources(kafka, postgres, elasticsearch, keep=args.keep) as res:
        topic = res.topic("changes", args.partitions)
        t0 = time.perf_counter()
        ds = publish(kafka, topic, args.partitions, args.changes, DELETION_EVERY)
        pub_secs = time.perf_counter() - t0
        mb = ds.payload_bytes / 1e6
        print(
            f"e2e bench: {ds.changes} changes ({ds.deletions} deletions) on {topic} "
            f"({ds.partitions} partitions), {mb:.1f} MB of JSON "
            f"({ds.payload_bytes / ds.changes:.0f} B/change), published in {pub_secs:.1f} s; "
            f"{os.cpu_count()} cores; checkpoint every {CHECKPOINT_FREQUENCY}; "
            f"{args.rounds} round(s), best counts"
        )
        ctx = Context(
            kafka, postgres, elasticsearch, ds, res, expected_amount(ds.changes), args.pg_method
        )
        rows = {c.name: Row(c.name, c.chunk_size) for c in contenders}
        failed = False
        for rnd in range(args.rounds):
            order = contenders if rnd % 2 == 0 else list(reversed(contenders))
            for c in order:
                row = rows[c.name]
                if row.status.startswith("skipped"):
                    continue
                if c.needs_elasticsearch and elasticsearch is None:
                    row.status = "skipped: TEST_ELASTICSEARCH_URL not set"
                    continue
                ctx.pillow_name = res.checkpoint_id(c.name)
                print(f"  running {c.name} …", end="", flush=True)
                try:
                    out = c.fn(ctx)
                except Unavailable as e:
                    row.status = f"skipped: {e}"
                    print(f" {row.status}")
                    continue
                rate = out.changes / out.seconds if out.seconds > 0 else 0.0
                print(
                    f" {out.changes} changes in {out.seconds:.2f} s ({rate:,.0f}/s)"
                    + (f" PROBLEMS: {out.problems}" if out.problems else "")
                )
                if out.problems:
                    failed = True
                    row.status = "FAILED: " + "; ".join(out.problems)
                elif not row.status:
                    row.status = "ok"
                if rate > row.rate:
                    row.changes, row.seconds, row.cpu_seconds, row.rate = (
                        out.changes,
                        out.seconds,
                        out.cpu_seconds,
                        rate,
                    )
                    row.mb_rate = ds.payload_bytes / 1e6 / out.seconds * out.changes / ds.changes
                time.sleep(args.settle)
        for c in contenders:
            row = rows[c.name]
            base = rows.get(c.reference or c.name)
            if base is not None and base.rate > 0 and row.rate > 0:
                row.ratio = row.rate / base.rate
        report(list(rows.values()), rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "dataset": {k: v for k, v in asdict(ds).items() if k != "deleted_ids"},
                        "rows": [asdict(r) for r in rows.values()],
                    },
                    f,
                    indent=2,
                )
    return 1 if failed else 0


def report(rows: list[Row], by_name: dict[str, Row]) -> None:
    print()
    head = (
        f"{'contender':<34} {'chunk':>5} {'changes/s':>10} {'MB/s':>7} {'µs/change':>9} "
        f"{'CPU %':>6} {'ratio':>6}  status"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.rate <= 0:
            print(
                f"{r.name:<34} {r.chunk_size:>5} {'-':>10} {'-':>7} {'-':>9} {'-':>6} {'-':>6}  "
                f"{r.status}"
            )
            continue
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        cpu = 100 * r.cpu_seconds / r.seconds
        print(
            f"{r.name:<34} {r.chunk_size:>5} {r.rate:>10,.0f} {r.mb_rate:>7.1f} "
            f"{1e6 / r.rate:>9.1f} {cpu:>6.0f} {ratio:>6}  {r.status}"
        )
    print(
        "\nratio: rate / rate of the matching reference in this run (pillowtop-rs-* vs "
        "reference-*);\nCPU %: this process's CPU time over wall time (librdkafka threads "
        "included, servers not)."
    )
    rs_pg, direct_pg = by_name.get("pillowtop-rs-postgres"), by_name.get("direct-postgres-copy")
    if rs_pg and direct_pg and rs_pg.rate > 0 and direct_pg.rate > 0:
        print(
            f"pillowtop-rs-postgres reaches {100 * rs_pg.rate / direct_pg.rate:.0f}% of a direct "
            f"COPY of the end state's rows (PostgreSQL's ceiling for this table)"
        )
    rs_es, direct_es = (
        by_name.get("pillowtop-rs-elasticsearch"),
        by_name.get("direct-elasticsearch-bulk"),
    )
    if rs_es and direct_es and rs_es.rate > 0 and direct_es.rate > 0:
        print(
            f"pillowtop-rs-elasticsearch reaches {100 * rs_es.rate / direct_es.rate:.0f}% of the "
            f"direct bulk loader (the node's ceiling with the same actions and bulk size; goal 80%)"
        )
    for chunk in (100, 1000):
        py = by_name.get(f"pillowtop-rs-python-bulk({chunk})")
        noop = by_name.get(f"pillowtop-rs-noop({chunk})")
        if py and noop and py.rate > 0 and noop.rate > 0:
            cost = (1 / py.rate - 1 / noop.rate) * 1e6
            print(
                f"crossing into Python, chunk {chunk}: {cost:.2f} µs per change "
                f"(= 1/rate(pillowtop-rs-python-bulk) − 1/rate(pillowtop-rs-noop): building the "
                f"Python Change objects, the call per chunk and the trivial processor's body)"
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
