//! PostgreSQL through tokio-postgres: a round trip, the checkpoint store and the error store on
//! CommCare's tables.

use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::TopicPartition;
use pillowtop::processor::ProcessorFailure;
use pillowtop::store::checkpoints::postgres::PostgresCheckpointStore;
use pillowtop::store::checkpoints::{CheckpointStore, CheckpointUpdate};
use pillowtop::store::errors::postgres::PostgresErrorStore;
use pillowtop::store::errors::{ErrorRecord, ErrorStore};

use crate::support::{require, TestDb};

/// The error record of `change` failing with `failure` in `pillow`, as the pillow builds it.
fn record_of(pillow: &str, change: &Change, failure: &ProcessorFailure) -> ErrorRecord {
    ErrorRecord::for_change(
        pillow,
        change,
        &failure.error_type,
        failure.traceback_or_message(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let table = db.id("roundtrip");
    let c = db.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        "CREATE TABLE {table} (id text primary key, doc jsonb)"
    ))
    .await
    .expect("create");
    c.execute(
        &format!("INSERT INTO {table} VALUES ($1, $2::text::jsonb)"),
        &[&"a", &r#"{"x": 1}"#],
    )
    .await
    .expect("insert");
    let row = c
        .query_one(
            &format!("SELECT doc->>'x' FROM {table} WHERE id = 'a'"),
            &[],
        )
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_rows_are_commcare_shaped_and_external_changes_are_detected() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let id = db.id("ckpt");
    let store = PostgresCheckpointStore::new(db.pg.clone());
    assert!(
        store.load(&id).await.expect("load").is_empty(),
        "reading creates nothing"
    );
    let a = TopicPartition::new("form-sql", 0);
    let b = TopicPartition::new("form-sql", 10);
    store
        .write(
            &id,
            &[
                CheckpointUpdate {
                    tp: a.clone(),
                    offset: 5,
                    expected: None,
                },
                CheckpointUpdate {
                    tp: b.clone(),
                    offset: 9_000_000_000,
                    expected: None,
                },
            ],
        )
        .await
        .expect("write");
    let rows = store.load(&id).await.expect("load");
    assert_eq!(
        rows.iter()
            .map(|r| (r.tp.clone(), r.offset))
            .collect::<Vec<_>>(),
        [(a.clone(), 5), (b.clone(), 9_000_000_000)]
    );
    // What a CommCare reader sees: bigint offsets, NULL doc_modification_time, a last_modified.
    let c = db.pg.fresh_client().await.expect("client");
    let r = c
        .query_one(r#"SELECT "offset", doc_modification_time IS NULL, last_modified IS NOT NULL FROM pillowtop_kafkacheckpoint WHERE checkpoint_id = $1 AND "partition" = 10"#, &[&id])
        .await
        .expect("row");
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, bool>(1), r.get::<_, bool>(2)),
        (9_000_000_000, true, true)
    );
    // An operator edits the row; a writer that expected 5 must not overwrite it.
    c.execute(r#"UPDATE pillowtop_kafkacheckpoint SET "offset" = 2 WHERE checkpoint_id = $1 AND "partition" = 0"#, &[&id]).await.expect("edit");
    let err = store
        .write(
            &id,
            &[CheckpointUpdate {
                tp: a.clone(),
                offset: 7,
                expected: Some(5),
            }],
        )
        .await
        .expect_err("reset detected");
    assert!(err.to_string().contains("changed externally"), "{err}");
    assert_eq!(
        store.load(&id).await.expect("load")[0].offset,
        2,
        "nothing written"
    );
    assert_eq!(
        store
            .create_rows(&id, &[a.clone(), TopicPartition::new("form-sql", 1)], 0)
            .await
            .expect("create"),
        1,
        "only the missing row"
    );
}

/// Several checkpoint ids in one transaction: a refused row of the second id writes nothing of
/// the first (the coordinator of independent processors relies on it).
#[tokio::test(flavor = "multi_thread")]
async fn writes_of_several_checkpoints_commit_together_or_not_at_all() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let (first, second) = (db.id("together_a"), db.id("together_b"));
    let store = PostgresCheckpointStore::new(db.pg.clone());
    let tp = TopicPartition::new("form-sql", 0);
    let update = |offset, expected| CheckpointUpdate {
        tp: tp.clone(),
        offset,
        expected,
    };
    store
        .write_together(&[
            (first.clone(), vec![update(5, None)]),
            (second.clone(), vec![update(3, None)]),
        ])
        .await
        .expect("both written");
    let offset = |rows: Vec<pillowtop::store::checkpoints::CheckpointRow>| rows[0].offset;
    assert_eq!(offset(store.load(&first).await.expect("load")), 5);
    assert_eq!(offset(store.load(&second).await.expect("load")), 3);
    // The second id's row is not what the writer expects: nothing is written, not even the first.
    let err = store
        .write_together(&[
            (first.clone(), vec![update(9, Some(5))]),
            (second.clone(), vec![update(8, Some(4))]),
        ])
        .await
        .expect_err("the second row refuses");
    assert!(err.to_string().contains(&second), "{err}");
    assert_eq!(
        offset(store.load(&first).await.expect("load")),
        5,
        "rolled back"
    );
    assert_eq!(offset(store.load(&second).await.expect("load")), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_rows_follow_commcares_attempt_arithmetic() {
    let url = require!("TEST_POSTGRES_URL");
    let db = TestDb::new(&url).await;
    let pillow = db.id("errors");
    let store = PostgresErrorStore::new(db.pg.clone());
    let meta = ChangeMeta::new("doc-1", "sql", "form-sql");
    let mut change =
        Change::from_message("form-sql", 2, 77, meta.to_json().as_bytes()).expect("valid");
    let failure = ProcessorFailure {
        traceback: Some("Traceback: boom".into()),
        ..ProcessorFailure::new("tests.Boom", "boom")
    };
    let mut minutes = Vec::new();
    for _ in 0..4 {
        // What the pillow does on each failing pass: one increment, one record.
        change.metadata.attempts = 0;
        change.increment_attempt_count();
        store
            .record(&[record_of(&pillow, &change, &failure)])
            .await
            .expect("record");
        let rows = store.list(&pillow).await.expect("list");
        assert_eq!(rows.len(), 1, "one row per document and pillow");
        let r = &rows[0];
        minutes.push(
            r.date_next_attempt
                .map(|n| (n - r.date_last_attempt).num_seconds() / 60),
        );
    }
    assert_eq!(
        minutes,
        [Some(5), Some(20), Some(45), None],
        "5, 20, 45 minutes, then parked"
    );
    let r = &store.list(&pillow).await.expect("list")[0];
    assert_eq!(
        (r.current_attempt, r.total_attempts, r.error_type.as_deref()),
        (4, 4, Some("tests.Boom"))
    );
    assert_eq!(r.error_traceback.as_deref(), Some("Traceback: boom"));
    assert_eq!(r.change.as_ref().expect("change")["seq"], 77);
    assert_eq!(
        r.change_metadata.as_ref().expect("meta")["document_id"],
        "doc-1"
    );
}

/// Tables as a Django project with `USE_TZ = False` creates them (naive timestamps, `change` as
/// text, an extra legacy `checkpoint_time` column): the stores use them as they are.
#[tokio::test(flavor = "multi_thread")]
async fn tables_created_by_django_are_used_as_they_are() {
    let url = require!("TEST_POSTGRES_URL");
    let admin = TestDb::new(&url).await;
    let schema = admin.id("django_schema");
    let c = admin.pg.fresh_client().await.expect("client");
    c.batch_execute(&format!(
        r#"CREATE SCHEMA {schema};
        CREATE TABLE {schema}.pillowtop_kafkacheckpoint (
            id serial PRIMARY KEY, checkpoint_id varchar(126) NOT NULL, topic varchar(126) NOT NULL,
            "partition" integer NOT NULL, "offset" bigint NOT NULL, doc_modification_time timestamp NULL,
            last_modified timestamp NOT NULL, checkpoint_time timestamp NULL,
            UNIQUE (checkpoint_id, topic, "partition"));
        CREATE TABLE {schema}.pillow_retry_pillowerror (
            id bigserial PRIMARY KEY, doc_id varchar(255) NOT NULL, pillow varchar(255) NOT NULL,
            date_created timestamp NOT NULL, date_last_attempt timestamp NOT NULL, date_next_attempt timestamp NULL,
            total_attempts integer NOT NULL, current_attempt integer NOT NULL, error_type varchar(255) NULL,
            error_traceback text NULL, change text NULL, change_metadata text NULL, UNIQUE (doc_id, pillow));"#
    ))
    .await
    .expect("django-shaped tables");
    let scoped = format!(
        "{url}{}options=-c%20search_path%3D{schema}",
        if url.contains('?') { "&" } else { "?" }
    );
    let pg = std::sync::Arc::new(pillowtop::pg::Pg::new(scoped));
    pillowtop::store::schema::ensure_schema(&pg)
        .await
        .expect("schema step leaves existing tables alone");

    let store = PostgresCheckpointStore::new(pg.clone());
    let tp = TopicPartition::new("case-sql", 3);
    store
        .write(
            "case-pillow-x",
            &[CheckpointUpdate {
                tp: tp.clone(),
                offset: 42,
                expected: None,
            }],
        )
        .await
        .expect("write");
    let rows = store.load("case-pillow-x").await.expect("load");
    assert_eq!((rows[0].tp.clone(), rows[0].offset), (tp, 42));
    let age = chrono::Utc::now() - rows[0].last_modified;
    assert!(
        age.num_seconds().abs() < 60,
        "naive timestamps are written and read as UTC: {age}"
    );

    let errors = PostgresErrorStore::new(pg.clone());
    let meta = ChangeMeta::new("doc-9", "sql", "case-sql");
    let mut change =
        Change::from_message("case-sql", 3, 5, meta.to_json().as_bytes()).expect("valid");
    change.increment_attempt_count();
    errors
        .record(&[record_of(
            "case-pillow",
            &change,
            &ProcessorFailure::new("tests.Boom", "boom"),
        )])
        .await
        .expect("record");
    let r = &errors.list("case-pillow").await.expect("list")[0];
    assert_eq!(
        r.change_metadata.as_ref().expect("meta")["document_id"],
        "doc-9",
        "text column holds the JSON"
    );
    assert!(r
        .date_next_attempt
        .is_some_and(|n| (n - r.date_last_attempt).num_minutes() == 5));
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("cleanup");
}

/// Error rows whose content PostgreSQL refuses as it is (NUL characters in text and `jsonb`,
/// over-long ids, a traceback longer than a Django project's column) are stored cleaned, or
/// shortened with PostgreSQL's own reason; recording never fails on content.
#[tokio::test(flavor = "multi_thread")]
async fn error_rows_with_unstorable_content_are_stored_cleaned_or_shortened() {
    let url = require!("TEST_POSTGRES_URL");
    let admin = TestDb::new(&url).await;
    let schema = admin.id("unstorable");
    let c = admin.pg.fresh_client().await.expect("client");
    // A project whose traceback column is narrower than ours (varchar instead of text).
    c.batch_execute(&format!(
        r"CREATE SCHEMA {schema};
        CREATE TABLE {schema}.pillow_retry_pillowerror (
            id bigserial PRIMARY KEY, doc_id varchar(255) NOT NULL, pillow varchar(255) NOT NULL,
            date_created timestamptz NOT NULL, date_last_attempt timestamptz NOT NULL, date_next_attempt timestamptz NULL,
            total_attempts integer NOT NULL, current_attempt integer NOT NULL, error_type varchar(255) NULL,
            error_traceback varchar(10000) NULL, change jsonb NULL, change_metadata jsonb NULL, UNIQUE (doc_id, pillow));"
    ))
    .await
    .expect("table");
    let scoped = format!(
        "{url}{}options=-c%20search_path%3D{schema}",
        if url.contains('?') { "&" } else { "?" }
    );
    let pg = std::sync::Arc::new(pillowtop::pg::Pg::new(scoped));
    let errors = PostgresErrorStore::new(pg);
    let change_of = |id: &str| {
        let meta = ChangeMeta::new(id, "sql", "form\0sql");
        let mut ch = Change::from_message("t", 0, 1, meta.to_json().as_bytes()).expect("valid");
        ch.increment_attempt_count();
        ch
    };
    let long_id = "L".repeat(400);
    let records = [
        record_of(
            "p",
            &change_of("a\0b"),
            &ProcessorFailure::new("tests.Boom", "bad value \0 here"),
        ),
        record_of(
            "p",
            &change_of(&long_id),
            &ProcessorFailure::new("tests.Boom", "long id"),
        ),
        record_of(
            "p",
            &change_of("big-traceback"),
            &ProcessorFailure::new("tests.Boom", "x".repeat(50_000)),
        ),
    ];
    errors
        .record(&records)
        .await
        .expect("every row is stored, cleaned or shortened");
    let rows = errors.list("p").await.expect("list");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let nul = rows
        .iter()
        .find(|r| r.doc_id == "a\\x00b")
        .expect("NUL row");
    assert_eq!(
        nul.error_traceback.as_deref(),
        Some("tests.Boom: bad value \\x00 here")
    );
    assert_eq!(nul.change.as_ref().expect("change")["id"], "a\\x00b");
    assert_eq!(
        nul.change_metadata.as_ref().expect("metadata")["data_source_name"],
        "form\\x00sql"
    );
    let long = rows
        .iter()
        .find(|r| r.doc_id.starts_with("LLLL"))
        .expect("long id row");
    assert_eq!(long.doc_id.chars().count(), 255);
    let big = rows
        .iter()
        .find(|r| r.doc_id == "big-traceback")
        .expect("big row");
    let tb = big.error_traceback.as_deref().unwrap_or_default();
    assert!(
        tb.contains("stored this error row shortened") && tb.contains("character varying(10000)"),
        "the note names PostgreSQL's reason: {}",
        &tb[..300.min(tb.len())]
    );
    assert!(tb.len() <= 10_000);
    assert_eq!(big.current_attempt, 1, "the attempt arithmetic is kept");
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("cleanup");
}

/// A PostgreSQL error says what the server said, not "db error".
#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_carry_the_servers_message_and_code() {
    let url = require!("TEST_POSTGRES_URL");
    let mut missing = url::Url::parse(&url).expect("url");
    let name = pillowtop::testing::unique_name("nope_db");
    missing.set_path(&format!("/{name}"));
    let pg = pillowtop::pg::Pg::new(missing.to_string());
    let e = pg.fresh_client().await.expect_err("no such database");
    let text = e.to_string();
    assert!(
        text.contains(&format!("database \"{name}\" does not exist"))
            && text.contains("SQLSTATE 3D000"),
        "{text}"
    );
    assert!(!text.ends_with("db error"), "{text}");
}
