//! The PostgreSQL reporting-table processor against the real PostgreSQL: round trips for every
//! write method, `copy_first`'s fallback to the merge (the same table as `copy_merge`), filter
//! and deletion semantics, conversion failures, table creation and added columns, and the
//! exactly-once store's atomicity rules (also when `copy_first` falls back inside them).

// Short names (p processor, c client, r row, f failure) keep the round-trip scenarios readable.
#![allow(clippy::many_single_char_names)]

use std::collections::BTreeMap;
use std::sync::Arc;

use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::TopicPartition;
use pillowtop::pg::Pg;
use pillowtop::processor::postgres::{
    ExactlyOnceSession, PgTableProcessor, TableDefinition, TransactionalCheckpointStore,
    WriteMethod,
};
use pillowtop::processor::{ChunkOutcome, Processor};
use pillowtop::store::checkpoints::{CheckpointStore, CheckpointUpdate};
use serde_json::{json, Value};

use crate::support::{require, TestDb};

/// These tests drive one chunk's write directly: written before the call returns, as
/// CommCare does (the gathered, pipelined writes are tested at the end of this file and through
/// pillows).
const INLINE: &str = "flush_max_rows = 0";

pub fn definition(table: &str, extra: &str) -> TableDefinition {
    toml::from_str(&format!(
        r#"
        table = "{table}"
        primary_key = ["doc_id"]
        apply_count_column = "applied"
        columns = [
          {{ name = "doc_id", type = "text", change = "id" }},
          {{ name = "domain", type = "text", path = "$.domain" }},
          {{ name = "user_id", type = "text", path = "form.meta.userID" }},
          {{ name = "age", type = "integer", path = "form.age" }},
          {{ name = "weight", type = "numeric", path = "form.weight" }},
          {{ name = "consent", type = "boolean", path = "form.consent" }},
          {{ name = "visit", type = "date", path = "form.visit" }},
          {{ name = "received_on", type = "timestamptz", path = "received_on" }},
          {{ name = "form", type = "jsonb", path = "form" }},
          {{ name = "seq", type = "bigint", change = "offset" }},
        ]
        {extra}
        [filter]
        equals = {{ doc_type = "XFormInstance" }}
        one_of = {{ domain = ["demo", "other"] }}
        "#
    ))
    .expect("definition")
}

pub fn form(id: usize, domain: &str, age: &Value) -> Value {
    json!({
        "_id": format!("form-{id}"),
        "doc_type": "XFormInstance",
        "domain": domain,
        "received_on": "2024-05-06T07:08:09.123456Z",
        "form": {
            "meta": {"userID": format!("user-{}", id % 7)},
            "age": age,
            "weight": "72.50",
            "consent": "yes",
            "visit": "2024-05-01",
        },
    })
}

/// A change for `id` at `offset` with an embedded document (or none), as CommCare publishes.
pub fn change(id: &str, offset: i64, doc: Option<Value>, deleted: bool) -> Change {
    let mut m = ChangeMeta::new(id, "sql", "form-sql");
    m.is_deletion = deleted;
    m.domain = Some("demo".into());
    if let Some(d) = doc {
        m.extra.insert("document".into(), d);
    }
    Change::from_message("t", 0, offset, m.to_json().as_bytes()).expect("valid change")
}

async fn rows(pg: &Arc<Pg>, table: &str) -> Vec<(String, Option<i32>, i64, Option<String>)> {
    let c = pg.fresh_client().await.expect("client");
    c.query(
        &format!("SELECT doc_id, age, applied, weight::text FROM {table} ORDER BY doc_id"),
        &[],
    )
    .await
    .expect("select")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_update_delete_filter_and_type_errors_for_every_write_method() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    for method in [
        WriteMethod::CopyFirst,
        WriteMethod::CopyMerge,
        WriteMethod::Unnest,
        WriteMethod::InsertValues,
    ] {
        let table = db.id("pgt_roundtrip");
        let mut p = PgTableProcessor::new(definition(&table, INLINE), db.pg.clone())
            .expect("processor")
            .with_write_method(method);
        p.bootstrap_if_needed().await.expect("bootstrap");
        p.bootstrap_if_needed()
            .await
            .expect("bootstrap is idempotent");

        // Five documents, one with a bad age, one missing, one in another domain.
        let mut chunk = vec![
            change("a", 0, Some(form(1, "demo", &json!("31"))), false),
            change("b", 1, Some(form(2, "demo", &json!(40))), false),
            change("bad", 2, Some(form(3, "demo", &json!("thirty"))), false),
            change("missing", 3, None, false),
            change("c", 4, Some(form(4, "other", &json!(null))), false),
            change("z", 5, Some(form(5, "elsewhere", &json!(1))), false),
        ];
        let outcome = p
            .process_changes_chunk(&mut chunk)
            .await
            .expect("not fatal")
            .expect("chunk written");
        assert_eq!(
            outcome.retry,
            vec![3],
            "{method:?}: the missing document is retried"
        );
        assert_eq!(outcome.errors.len(), 1, "{method:?}");
        let (i, f) = &outcome.errors[0];
        assert_eq!(*i, 2);
        assert_eq!(f.error_type, "pillowtop_rs.exceptions.PostgresError");
        for needle in [table.as_str(), "column age", "document bad", "\"thirty\""] {
            assert!(
                f.message.contains(needle),
                "{method:?}: {needle} in {}",
                f.message
            );
        }
        // The serial retry of the missing document is a DocumentMissingError.
        let f = p
            .process_change(&mut chunk[3])
            .await
            .expect("not fatal")
            .expect_err("missing");
        assert!(f.document_missing);
        assert_eq!(
            rows(&db.pg, &table).await,
            vec![
                ("a".into(), Some(31), 1, Some("72.50".into())),
                ("b".into(), Some(40), 1, Some("72.50".into())),
                ("c".into(), None, 1, Some("72.50".into())),
            ],
            "{method:?}"
        );

        // Update a, delete b (deletion), c stops matching (doc_type changes), bad is fixed.
        let mut stopped = form(4, "other", &json!(5));
        stopped["doc_type"] = json!("XFormArchived");
        let mut chunk = vec![
            change("a", 6, Some(form(1, "demo", &json!(32))), false),
            change("b", 7, None, true),
            change("c", 8, Some(stopped), false),
            change("bad", 9, Some(form(3, "demo", &json!("33"))), false),
        ];
        let outcome = p
            .process_changes_chunk(&mut chunk)
            .await
            .expect("not fatal")
            .expect("chunk written");
        assert_eq!(outcome, ChunkOutcome::default(), "{method:?}");
        assert_eq!(
            rows(&db.pg, &table).await,
            vec![
                ("a".into(), Some(32), 2, Some("72.50".into())),
                ("bad".into(), Some(33), 1, Some("72.50".into())),
            ],
            "{method:?}"
        );
        // Every type round trips.
        let c = db.pg.fresh_client().await.expect("client");
        let r = c
            .query_one(
                &format!("SELECT domain, user_id, consent, visit::text, received_on, form->'meta'->>'userID', seq FROM {table} WHERE doc_id = 'a'"),
                &[],
            )
            .await
            .expect("row a");
        assert_eq!(r.get::<_, String>(0), "demo");
        assert_eq!(r.get::<_, String>(1), "user-1");
        assert!(r.get::<_, bool>(2));
        assert_eq!(r.get::<_, String>(3), "2024-05-01");
        assert_eq!(
            r.get::<_, chrono::DateTime<chrono::Utc>>(4).to_rfc3339(),
            "2024-05-06T07:08:09.123456+00:00"
        );
        assert_eq!(r.get::<_, String>(5), "user-1");
        assert_eq!(r.get::<_, i64>(6), 6);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_chunks_split_below_the_parameter_limit_and_methods_agree() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    // 11 columns: 65,535 / 11 = 5,957 rows per INSERT statement; 15,000 rows need three.
    let chunk: Vec<Change> = (0..15_000)
        .map(|i| {
            change(
                &format!("d{i:05}"),
                i64::try_from(i).expect("small"),
                Some(form(i, "demo", &json!(i))),
                false,
            )
        })
        .collect();
    let mut sums = Vec::new();
    for method in [
        WriteMethod::InsertValues,
        WriteMethod::CopyFirst,
        WriteMethod::CopyMerge,
        WriteMethod::Unnest,
    ] {
        let table = db.id("pgt_large");
        let mut p = PgTableProcessor::new(definition(&table, INLINE), db.pg.clone())
            .expect("processor")
            .with_write_method(method);
        p.bootstrap_if_needed().await.expect("bootstrap");
        let mut c = chunk.clone();
        let out = p
            .process_changes_chunk(&mut c)
            .await
            .expect("not fatal")
            .expect("written");
        assert_eq!(out, ChunkOutcome::default());
        let client = db.pg.fresh_client().await.expect("client");
        let r = client
            .query_one(
                &format!("SELECT count(*), sum(age)::bigint, sum(applied)::bigint FROM {table}"),
                &[],
            )
            .await
            .expect("sum");
        sums.push((r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)));
    }
    assert!(
        sums.iter().all(|s| *s == (15_000, 112_492_500, 15_000)),
        "{sums:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_creates_the_table_and_adds_new_columns_without_dropping() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_bootstrap");
    let mut p =
        PgTableProcessor::new(definition(&table, INLINE), db.pg.clone()).expect("processor");
    p.bootstrap_if_needed().await.expect("create");
    let mut chunk = vec![change("a", 0, Some(form(1, "demo", &json!(3))), false)];
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");

    // The definition gains a column and loses one: the new one is added, the old one stays.
    let mut def = definition(&table, INLINE);
    def.columns.retain(|c| c.name != "consent");
    def.columns
        .push(pillowtop::processor::postgres::ColumnDefinition::path(
            "xmlns",
            pillowtop::processor::postgres::ColumnType::Text,
            "xmlns",
        ));
    let mut p2 = PgTableProcessor::new(def, db.pg.clone()).expect("processor");
    p2.bootstrap_if_needed().await.expect("alter");
    let c = db.pg.fresh_client().await.expect("client");
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(cols.contains(&"xmlns".to_owned()), "{cols:?}");
    assert!(
        cols.contains(&"consent".to_owned()),
        "never dropped: {cols:?}"
    );
    let mut doc = form(1, "demo", &json!(4));
    doc["xmlns"] = json!("http://openrosa.org/x");
    let mut chunk = vec![change("a", 1, Some(doc), false)];
    p2.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    let r = c
        .query_one(
            &format!("SELECT xmlns, age, consent, applied FROM {table}"),
            &[],
        )
        .await
        .expect("row");
    assert_eq!(r.get::<_, String>(0), "http://openrosa.org/x");
    assert_eq!(r.get::<_, i32>(1), 4);
    assert_eq!(
        r.get::<_, Option<bool>>(2),
        Some(true),
        "old column keeps its value"
    );
    assert_eq!(r.get::<_, i64>(3), 2);

    // Identifiers are quoted: a table name with a quote and a space works.
    let odd = format!("{table} \"odd\"");
    let mut odd_def = definition(&table, INLINE);
    odd_def.table.clone_from(&odd);
    let mut p3 = PgTableProcessor::new(odd_def, db.pg.clone()).expect("processor");
    p3.bootstrap_if_needed().await.expect("odd name");
    let mut chunk = vec![change("a", 0, Some(form(1, "demo", &json!(3))), false)];
    p3.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    let quoted = format!("\"{}\"", odd.replace('"', "\"\""));
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    c.batch_execute(&format!("DROP TABLE {quoted}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_rows_commit_only_with_a_covering_checkpoint() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_eo");
    let id = db.id("pgt_eo_ckpt");
    let session = ExactlyOnceSession::new(&url);
    let mut p =
        PgTableProcessor::exactly_once(definition(&table, "exactly_once = true"), session.clone())
            .expect("processor");
    p.bootstrap_if_needed().await.expect("bootstrap");
    let store = TransactionalCheckpointStore::new(session.clone(), db.pg.clone());
    let count = |table: String| {
        let pg = db.pg.clone();
        async move {
            let c = pg.fresh_client().await.expect("client");
            c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    let tp = TopicPartition::new("t", 0);

    let mut chunk: Vec<Change> = (0..5)
        .map(|i| change(&format!("d{i}"), i, Some(form(1, "demo", &json!(i))), false))
        .collect();
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    assert_eq!(
        count(table.clone()).await,
        0,
        "staged rows are invisible before the checkpoint"
    );
    store
        .write(
            &id,
            &[CheckpointUpdate {
                tp: tp.clone(),
                offset: 5,
                expected: None,
            }],
        )
        .await
        .expect("commit");
    assert_eq!(
        count(table.clone()).await,
        5,
        "rows commit with the checkpoint"
    );
    assert_eq!(store.load(&id).await.expect("load")[0].offset, 5);

    // A checkpoint that does not cover the staged rows (the pillow's fatal path) rolls them back.
    let mut chunk: Vec<Change> = (5..10)
        .map(|i| change(&format!("d{i}"), i, Some(form(1, "demo", &json!(i))), false))
        .collect();
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    let e = store
        .write(
            &id,
            &[CheckpointUpdate {
                tp: tp.clone(),
                offset: 7,
                expected: Some(5),
            }],
        )
        .await
        .expect_err("uncovered");
    assert!(e.to_string().contains("does not cover"), "{e}");
    assert_eq!(count(table.clone()).await, 5);
    assert_eq!(store.load(&id).await.expect("load")[0].offset, 5);

    // A checkpoint changed externally (expected value mismatch) rolls the rows back too.
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    let e = store
        .write(
            &id,
            &[CheckpointUpdate {
                tp: tp.clone(),
                offset: 10,
                expected: Some(4),
            }],
        )
        .await
        .expect_err("reset");
    assert!(matches!(e, pillowtop::Error::Checkpoint(_)), "{e}");
    assert_eq!(count(table.clone()).await, 5);

    // A failing statement undoes its chunk only (savepoint); earlier staged rows survive.
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT age_small CHECK (age < 100)"
    ))
    .await
    .expect("constraint");
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    let mut too_old = vec![
        change("old1", 10, Some(form(1, "demo", &json!(150))), false),
        change("young", 11, Some(form(1, "demo", &json!(1))), false),
    ];
    let whole = p
        .process_changes_chunk(&mut too_old)
        .await
        .expect("not fatal")
        .expect_err("the check constraint fails the chunk");
    assert!(whole.message.contains("age_small"), "{}", whole.message);
    // The pillow's fallback: one by one, the culprit fails alone.
    let f = p
        .process_change(&mut too_old[0])
        .await
        .expect("not fatal")
        .expect_err("culprit");
    assert!(f.message.contains("document old1"), "{}", f.message);
    p.process_change(&mut too_old[1])
        .await
        .expect("not fatal")
        .expect("fine alone");
    store
        .write(
            &id,
            &[CheckpointUpdate {
                tp,
                offset: 12,
                expected: Some(5),
            }],
        )
        .await
        .expect("commit");
    assert_eq!(count(table.clone()).await, 11, "d0..d9 and young");
    session.rollback().await.expect("nothing open");
}

/// Every column of every row, as text, for comparing two tables.
async fn contents(pg: &Arc<Pg>, table: &str) -> Vec<String> {
    let c = pg.fresh_client().await.expect("client");
    c.query(
        &format!("SELECT t::text FROM (SELECT doc_id, domain, user_id, age, weight, consent, visit, received_on, form, seq, applied FROM {table}) t ORDER BY 1"),
        &[],
    )
    .await
    .expect("select")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Records the first word of every statement that inserts into `table` (COPY or INSERT) in the
/// table `log`, through a statement-level trigger calling `function`.
async fn log_inserting_statements(pg: &Arc<Pg>, table: &str, log: &str, function: &str) {
    let c = pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "CREATE TABLE {log} (n bigserial PRIMARY KEY, statement text);
         CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO {log} (statement) VALUES (split_part(ltrim(current_query()), ' ', 1)); RETURN NULL; END $$;
         CREATE TRIGGER log_statements AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}();"
    ))
    .await
    .expect("trigger");
}

async fn logged(pg: &Arc<Pg>, log: &str) -> Vec<String> {
    let c = pg.fresh_client().await.expect("client");
    c.query(&format!("SELECT statement FROM {log} ORDER BY n"), &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_first_copies_new_rows_and_falls_back_to_the_merge_on_conflicts() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let first = db.id("pgt_copy_first");
    let merged = db.id("pgt_copy_merge");
    let log = db.id("pgt_copy_first_log");
    let function = db.id("pgt_copy_first_fn");
    let mut p =
        PgTableProcessor::new(definition(&first, INLINE), db.pg.clone()).expect("processor");
    assert_eq!(
        p.definition().write_method,
        WriteMethod::CopyFirst,
        "the default"
    );
    let mut q = PgTableProcessor::new(definition(&merged, INLINE), db.pg.clone())
        .expect("processor")
        .with_write_method(WriteMethod::CopyMerge);
    p.bootstrap_if_needed().await.expect("bootstrap");
    q.bootstrap_if_needed().await.expect("bootstrap");
    log_inserting_statements(&db.pg, &first, &log, &function).await;

    let doc = |i: usize, age: i64| Some(form(i, "demo", &json!(age)));
    let mut stopped = form(3, "demo", &json!(9));
    stopped["doc_type"] = json!("XFormArchived");
    // (chunk, the table afterwards (doc_id, age, applied), the inserting statements so far)
    type Step<'a> = (Vec<Change>, Vec<(&'a str, i32, i64)>, &'a [&'a str]);
    let chunks: Vec<Step> = vec![
        // New rows, a type error, a delete and a filter mismatch of rows that do not exist:
        // one COPY into the table.
        (
            vec![
                change("a", 0, doc(1, 1), false),
                change("b", 1, doc(2, 2), false),
                change("bad", 2, Some(form(9, "demo", &json!("x"))), false),
                change("c", 3, doc(3, 3), false),
                change("gone", 4, None, true),
                change("z", 5, Some(form(5, "elsewhere", &json!(1))), false),
                change("a", 6, doc(1, 11), false),
            ],
            vec![("a", 11, 1), ("b", 2, 1), ("c", 3, 1)],
            &["COPY"],
        ),
        // An update among new rows, a deletion and a row that stops matching: the COPY
        // conflicts, the chunk is merged instead (the COPY left nothing behind).
        (
            vec![
                change("d", 7, doc(4, 4), false),
                change("a", 8, doc(1, 12), false),
                change("b", 9, None, true),
                change("c", 10, Some(stopped), false),
                change("e", 11, doc(5, 5), false),
            ],
            vec![("a", 12, 2), ("d", 4, 1), ("e", 5, 1)],
            &["COPY", "INSERT"],
        ),
        // New rows only, but right after a conflict: merged without trying COPY.
        (
            vec![change("f", 12, doc(6, 6), false)],
            vec![("a", 12, 2), ("d", 4, 1), ("e", 5, 1), ("f", 6, 1)],
            &["COPY", "INSERT", "INSERT"],
        ),
        // COPY again: it works.
        (
            vec![change("g", 13, doc(7, 7), false)],
            vec![
                ("a", 12, 2),
                ("d", 4, 1),
                ("e", 5, 1),
                ("f", 6, 1),
                ("g", 7, 1),
            ],
            &["COPY", "INSERT", "INSERT", "COPY"],
        ),
        // Updates only (and one row twice in the chunk: the last wins, counted once).
        (
            vec![
                change("f", 14, doc(6, 60), false),
                change("g", 15, doc(7, 70), false),
                change("f", 16, doc(6, 61), false),
            ],
            vec![
                ("a", 12, 2),
                ("d", 4, 1),
                ("e", 5, 1),
                ("f", 61, 2),
                ("g", 70, 2),
            ],
            &["COPY", "INSERT", "INSERT", "COPY", "INSERT"],
        ),
    ];
    for (n, (chunk, want, statements)) in chunks.into_iter().enumerate() {
        let mut a = chunk.clone();
        let out = p
            .process_changes_chunk(&mut a)
            .await
            .expect("not fatal")
            .expect("written");
        let mut b = chunk;
        let out_merged = q
            .process_changes_chunk(&mut b)
            .await
            .expect("not fatal")
            .expect("written");
        assert_eq!(out.retry, out_merged.retry, "chunk {n}");
        let failed = |o: &ChunkOutcome| o.errors.iter().map(|(i, _)| *i).collect::<Vec<_>>();
        assert_eq!(failed(&out), failed(&out_merged), "chunk {n}");
        assert_eq!(out.errors.len(), usize::from(n == 0), "chunk {n}");
        let got: Vec<(String, Option<i32>, i64)> = rows(&db.pg, &first)
            .await
            .into_iter()
            .map(|(id, age, applied, _)| (id, age, applied))
            .collect();
        let want: Vec<(String, Option<i32>, i64)> = want
            .into_iter()
            .map(|(id, age, applied)| (id.to_owned(), Some(age), applied))
            .collect();
        assert_eq!(got, want, "chunk {n}");
        assert_eq!(
            contents(&db.pg, &first).await,
            contents(&db.pg, &merged).await,
            "chunk {n}: copy_first and copy_merge leave the same table"
        );
        assert_eq!(logged(&db.pg, &log).await, statements, "chunk {n}");
    }
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!("DROP TABLE {first}; DROP FUNCTION {function}()"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_first_fallback_in_exactly_once_mode_keeps_the_earlier_chunks() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_eo_copy_first");
    let id = db.id("pgt_eo_copy_first_ckpt");
    let session = ExactlyOnceSession::new(&url);
    let mut p =
        PgTableProcessor::exactly_once(definition(&table, "exactly_once = true"), session.clone())
            .expect("processor");
    assert_eq!(p.definition().write_method, WriteMethod::CopyFirst);
    p.bootstrap_if_needed().await.expect("bootstrap");
    let store = TransactionalCheckpointStore::new(session.clone(), db.pg.clone());
    let tp = TopicPartition::new("t", 0);
    let doc = |i: i64| Some(form(1, "demo", &json!(i)));

    // Committed first: x exists in the table.
    let mut chunk = vec![change("x", 0, doc(0), false)];
    p.process_changes_chunk(&mut chunk)
        .await
        .expect("ok")
        .expect("ok");
    store
        .write(
            &id,
            &[CheckpointUpdate {
                tp: tp.clone(),
                offset: 1,
                expected: None,
            }],
        )
        .await
        .expect("commit");
    // One transaction: new rows by COPY; then a chunk whose COPY conflicts (x) and is merged
    // after rolling back to the chunk's savepoint; then new rows again (merged: skipped COPY).
    let chunks = [
        vec![change("a", 1, doc(1), false), change("b", 2, doc(2), false)],
        vec![
            change("c", 3, doc(3), false),
            change("x", 4, doc(4), false),
            change("a", 5, doc(5), false),
            change("b", 6, None, true),
        ],
        vec![change("d", 7, doc(7), false)],
    ];
    for mut chunk in chunks {
        let out = p
            .process_changes_chunk(&mut chunk)
            .await
            .expect("ok")
            .expect("ok");
        assert_eq!(out, ChunkOutcome::default());
    }
    assert_eq!(rows(&db.pg, &table).await.len(), 1, "nothing visible yet");
    store
        .write(
            &id,
            &[CheckpointUpdate {
                tp,
                offset: 8,
                expected: Some(1),
            }],
        )
        .await
        .expect("commit");
    let got: Vec<(String, Option<i32>, i64)> = rows(&db.pg, &table)
        .await
        .into_iter()
        .map(|(id, age, applied, _)| (id, age, applied))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), Some(5), 2),
            ("c".into(), Some(3), 1),
            ("d".into(), Some(7), 1),
            ("x".into(), Some(4), 2),
        ]
    );
    session.rollback().await.expect("nothing open");
}

/// A table made by hand without a unique key on the primary-key columns: `copy_first` must not
/// COPY into it (duplicates would go unnoticed); the merge's `ON CONFLICT` fails instead, and
/// every change of the chunk becomes a failure with PostgreSQL's reason.
#[tokio::test(flavor = "multi_thread")]
async fn copy_first_never_copies_into_a_table_without_a_unique_key() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_no_key");
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "CREATE TABLE {table} (doc_id text, domain text, user_id text, age integer, weight numeric,
           consent boolean, visit date, received_on timestamptz, form jsonb, seq bigint,
           applied bigint NOT NULL DEFAULT 1)"
    ))
    .await
    .expect("create");
    let mut p =
        PgTableProcessor::new(definition(&table, INLINE), db.pg.clone()).expect("processor");
    assert_eq!(p.definition().write_method, WriteMethod::CopyFirst);
    for round in 0..2 {
        let mut chunk = vec![
            change("a", round * 2, Some(form(1, "demo", &json!(1))), false),
            change("b", round * 2 + 1, Some(form(2, "demo", &json!(2))), false),
        ];
        let outcome = p
            .process_changes_chunk(&mut chunk)
            .await
            .expect("not fatal");
        let failed = match outcome {
            Err(whole) => whole.message,
            Ok(ChunkOutcome { errors, .. }) => errors
                .first()
                .map(|(_, f)| f.message.clone())
                .unwrap_or_default(),
        };
        assert!(
            failed.contains("ON CONFLICT"),
            "round {round}: the merge says why: {failed:?}"
        );
    }
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing was copied in");
}

/// `(doc_id, age, applied)` of every row, by id.
async fn ages(pg: &Arc<Pg>, table: &str) -> BTreeMap<String, (Option<i32>, i64)> {
    rows(pg, table)
        .await
        .into_iter()
        .map(|(id, age, applied, _)| (id, (age, applied)))
        .collect()
}

/// Gathering (the default at-least-once mode) on two connections: rows wait until a bound is
/// reached, `settle` never answers a chunk whose rows are not committed, the last change per key
/// wins across chunks, and a flush writes everything.
#[tokio::test(flavor = "multi_thread")]
async fn gathered_rows_are_written_in_the_background_and_settle_answers_only_committed_chunks() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_gather");
    let mut p = PgTableProcessor::new(
        definition(
            &table,
            "flush_max_rows = 250\nflush_max_delay_ms = 60000\nconnections = 2",
        ),
        db.pg.clone(),
    )
    .expect("processor");
    p.bootstrap_if_needed().await.expect("bootstrap");
    // A slow table: every statement waits 50 ms, so the writes are still running when the next
    // chunks arrive.
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
         CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {table}_slow()"
    ))
    .await
    .expect("trigger");
    // Chunk k (1..=6) has 100 changes at offsets 100(k-1)..; chunk 2 updates the ids of chunk 1
    // (same batch: applied once), chunk 5 updates ids of chunk 1 again (a later batch: applied
    // twice) and chunk 6 deletes the ids of chunk 3.
    let id_of = |k: usize, i: usize| match k {
        2 | 5 => format!("doc-1-{i:03}"),
        6 => format!("doc-3-{i:03}"),
        _ => format!("doc-{k}-{i:03}"),
    };
    let mut expected: BTreeMap<String, (Option<i32>, i64)> = BTreeMap::new();
    let mut answers = Vec::new();
    for k in 1..=6usize {
        let mut chunk: Vec<Change> = (0..100)
            .map(|i| {
                let id = id_of(k, i);
                let offset = i64::try_from(100 * (k - 1) + i).expect("offset");
                if k == 6 {
                    change(&id, offset, None, true)
                } else {
                    change(&id, offset, Some(form(i, "demo", &json!(k))), false)
                }
            })
            .collect();
        let outcome = p
            .process_changes_chunk(&mut chunk)
            .await
            .expect("not fatal")
            .expect("gathered");
        assert_eq!(outcome, ChunkOutcome::default());
        let settled = p.settle(k as u64, false).await.expect("settle");
        assert!(settled.failures.is_empty(), "{:?}", settled.failures);
        // Whatever `settle` answers is in the table already: every id of chunks 1..=5 at or
        // below the answer is there, with an age no older than that chunk's (ages only grow).
        let now = ages(&db.pg, &table).await;
        for j in 1..=settled.written_through.min(5) {
            let j = usize::try_from(j).expect("chunk");
            for i in 0..100 {
                let id = id_of(j, i);
                let age = now.get(&id).and_then(|(age, _)| *age);
                assert!(
                    age.is_some_and(|a| a >= i32::try_from(j).expect("j")),
                    "{id} of chunk {j} after written_through {}: {age:?}",
                    settled.written_through
                );
            }
        }
        answers.push(settled.written_through);
        for i in 0..100 {
            let id = id_of(k, i);
            if k == 6 {
                expected.remove(&id);
            } else {
                let applied = expected
                    .get(&id)
                    .map_or(1, |(_, a)| if k == 5 { a + 1 } else { *a });
                expected.insert(id, (Some(i32::try_from(k).expect("k")), applied));
            }
        }
    }
    assert_eq!(
        answers[..2],
        [0, 0],
        "nothing is written below the bounds: {answers:?}"
    );
    assert!(
        answers.windows(2).all(|w| w[0] <= w[1]),
        "never goes back: {answers:?}"
    );
    let settled = p.settle(6, true).await.expect("flush");
    assert_eq!(settled.written_through, 6);
    assert_eq!(ages(&db.pg, &table).await, expected);
}

/// A row the table refuses (a constraint the definition does not know about) fails alone in a
/// gathered batch: the other rows are written and the failure names the table, the document
/// and PostgreSQL's reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_table_refuses_fails_alone_in_a_gathered_batch() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("pgt_gather_bad");
    let mut p = PgTableProcessor::new(definition(&table, "connections = 1"), db.pg.clone())
        .expect("processor");
    p.bootstrap_if_needed().await.expect("bootstrap");
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT {table}_age CHECK (age < 150)"
    ))
    .await
    .expect("constraint");
    let mut chunk: Vec<Change> = (0..50)
        .map(|i| {
            let age = if i == 17 { 200 } else { i };
            change(
                &format!("doc-{i:02}"),
                i64::from(i),
                Some(form(usize::try_from(i).expect("i"), "demo", &json!(age))),
                false,
            )
        })
        .collect();
    let outcome = p
        .process_changes_chunk(&mut chunk)
        .await
        .expect("not fatal")
        .expect("gathered");
    assert_eq!(outcome, ChunkOutcome::default(), "nothing is written yet");
    let settled = p.settle(1, true).await.expect("flush");
    assert_eq!(settled.written_through, 1);
    let failed: Vec<(String, String)> = settled
        .failures
        .iter()
        .map(|(c, f)| (c.id.clone(), f.message.clone()))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "doc-17");
    let message = &failed[0].1;
    assert!(
        message.contains(&format!("table {table}, document doc-17"))
            && message.contains(&format!("{table}_age")),
        "{message}"
    );
    let now = ages(&db.pg, &table).await;
    assert_eq!(now.len(), 49);
    assert!(!now.contains_key("doc-17"));
}
