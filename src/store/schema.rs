//! The PostgreSQL tables pillowtop uses, created by one idempotent step.
//!
//! The first three are CommCare's tables with CommCare's names and columns, so a database where
//! Django (CommCare's or our app's migrations) already created them is used as it is: a table
//! that exists is left alone (no column, constraint or index is added to it), and the code never
//! relies on columns CommCare lacks. The
//! last one, `pillowtop_rs_process`, is ours: one liveness row per running pillow process.

use crate::error::Result;
use crate::pg::{err, Pg};

/// `CREATE ... IF NOT EXISTS` statements, in order.
pub const SCHEMA_SQL: &str = r#"
DO $$ BEGIN IF to_regclass('pillowtop_kafkacheckpoint') IS NULL THEN
CREATE TABLE pillowtop_kafkacheckpoint (
    id serial PRIMARY KEY,
    checkpoint_id varchar(126) NOT NULL,
    topic varchar(126) NOT NULL,
    "partition" integer NOT NULL,
    "offset" bigint NOT NULL,
    doc_modification_time timestamp with time zone NULL,
    last_modified timestamp with time zone NOT NULL,
    CONSTRAINT pillowtop_kafkacheckpoint_checkpoint_id_topic_partition_uniq UNIQUE (checkpoint_id, topic, "partition")
);
CREATE INDEX pillowtop_kafkacheckpoint_checkpoint_id_idx ON pillowtop_kafkacheckpoint (checkpoint_id);
END IF; END $$;

CREATE TABLE IF NOT EXISTS pillowtop_djangopillowcheckpoint (
    checkpoint_id varchar(100) PRIMARY KEY,
    "sequence" text NOT NULL,
    "timestamp" timestamp with time zone NOT NULL,
    old_sequence text NULL,
    sequence_format varchar(20) NOT NULL DEFAULT 'text'
);

DO $$ BEGIN IF to_regclass('pillow_retry_pillowerror') IS NULL THEN
CREATE TABLE pillow_retry_pillowerror (
    id bigserial PRIMARY KEY,
    doc_id varchar(255) NOT NULL,
    pillow varchar(255) NOT NULL,
    date_created timestamp with time zone NOT NULL,
    date_last_attempt timestamp with time zone NOT NULL,
    date_next_attempt timestamp with time zone NULL,
    total_attempts integer NOT NULL DEFAULT 0,
    current_attempt integer NOT NULL DEFAULT 0,
    error_type varchar(255) NULL,
    error_traceback text NULL,
    change jsonb NULL,
    change_metadata jsonb NULL,
    CONSTRAINT pillow_retry_pillowerror_doc_id_pillow_uniq UNIQUE (doc_id, pillow)
);
CREATE INDEX pillow_retry_pillowerror_pillow_idx ON pillow_retry_pillowerror (pillow);
CREATE INDEX pillow_retry_pillowerror_date_next_attempt_idx ON pillow_retry_pillowerror (date_next_attempt);
CREATE INDEX pillow_retry_pillowerror_current_attempt_idx ON pillow_retry_pillowerror (current_attempt);
CREATE INDEX pillow_retry_pillowerror_error_type_idx ON pillow_retry_pillowerror (error_type);
END IF; END $$;

CREATE TABLE IF NOT EXISTS pillowtop_rs_process (
    pillow_name varchar(255) NOT NULL,
    process_num integer NOT NULL,
    num_processes integer NOT NULL,
    dedicated_migration_process boolean NOT NULL DEFAULT false,
    checkpoint_id varchar(126) NOT NULL,
    hostname varchar(255) NOT NULL,
    pid integer NOT NULL,
    partitions jsonb NOT NULL DEFAULT '[]',
    started_at timestamp with time zone NOT NULL,
    heartbeat_at timestamp with time zone NOT NULL,
    PRIMARY KEY (pillow_name, process_num)
);
-- Ours, 2026-12: each processor's cost since the process started (pillowtop doctor).
ALTER TABLE pillowtop_rs_process ADD COLUMN IF NOT EXISTS processor_stats jsonb NOT NULL DEFAULT '{}';

-- Ours: daily snapshots of every checkpoint row (CommCare's HistoricalPillowCheckpoint), kept
-- 30 days; written by `pillowtop history snapshot` (src/store/history/postgres.rs).
CREATE TABLE IF NOT EXISTS pillowtop_rs_checkpoint_history (
    date_updated date NOT NULL,
    checkpoint_id varchar(126) NOT NULL,
    topic varchar(126) NOT NULL,
    "partition" integer NOT NULL,
    "offset" bigint NOT NULL,
    recorded_at timestamp with time zone NOT NULL,
    PRIMARY KEY (date_updated, checkpoint_id, topic, "partition")
);
CREATE INDEX IF NOT EXISTS pillowtop_rs_checkpoint_history_checkpoint_id_idx
    ON pillowtop_rs_checkpoint_history (checkpoint_id, date_updated);

-- Ours, 2026-12: a processor handed over from one pillow to another while it runs (online split,
-- src/store/handover.rs). `done`: the partitions handed over so far, with their offsets.
CREATE TABLE IF NOT EXISTS pillowtop_rs_handover (
    checkpoint_id varchar(126) NOT NULL,
    processor varchar(255) NOT NULL,
    target_checkpoint_id varchar(126) NOT NULL,
    requested_at timestamp with time zone NOT NULL,
    done jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (checkpoint_id, processor)
);
-- Ours, 2026-12: online merge (the reverse of a split). On a split's row, `merge_requested_at`
-- asks the source to take the processor back and `returned` lists the partitions it has taken
-- back; `kind` = 'merge' marks the hand-over of the processor by the split's target back to
-- the source (its target is the source's processor checkpoint id).
ALTER TABLE pillowtop_rs_handover ADD COLUMN IF NOT EXISTS kind varchar(16) NOT NULL DEFAULT 'split';
ALTER TABLE pillowtop_rs_handover ADD COLUMN IF NOT EXISTS merge_requested_at timestamp with time zone;
ALTER TABLE pillowtop_rs_handover ADD COLUMN IF NOT EXISTS returned jsonb NOT NULL DEFAULT '[]';

-- Ours, 2026-12: which processor of an independent pillow failed on a document, beside
-- CommCare's per-pillow error row (src/store/errors/mod.rs, FailedProcessor): a retry of the
-- change runs only the processors recorded for its attempt count.
CREATE TABLE IF NOT EXISTS pillowtop_rs_failed_processor (
    pillow varchar(255) NOT NULL,
    doc_id varchar(255) NOT NULL,
    processor varchar(255) NOT NULL,
    attempts integer NOT NULL,
    date_recorded timestamp with time zone NOT NULL,
    PRIMARY KEY (pillow, doc_id, processor)
);

-- Ours, 2026-12: rebuilds of a processor's index (issue 15, src/store/reindex.rs): one row per
-- run, its step and what it did; at most one run of a processor that has not ended.
CREATE TABLE IF NOT EXISTS pillowtop_rs_reindex (
    id bigserial PRIMARY KEY,
    pillow varchar(255) NOT NULL,
    processor varchar(255) NOT NULL,
    old_index text NOT NULL,
    new_index text NOT NULL,
    alias text NOT NULL,
    step varchar(32) NOT NULL,
    options jsonb NOT NULL DEFAULT '{}',
    preflight jsonb NOT NULL DEFAULT '{}',
    kafka_position jsonb NOT NULL DEFAULT '{}',
    progress jsonb NOT NULL DEFAULT '{}',
    acks jsonb NOT NULL DEFAULT '{}',
    verify jsonb NOT NULL DEFAULT '{}',
    settings jsonb NOT NULL DEFAULT '{}',
    keep_old_until timestamp with time zone,
    log jsonb NOT NULL DEFAULT '[]',
    error text,
    started_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    finished_at timestamp with time zone
);
CREATE UNIQUE INDEX IF NOT EXISTS pillowtop_rs_reindex_one_at_a_time
    ON pillowtop_rs_reindex (pillow, processor) WHERE finished_at IS NULL;
"#;

/// Creates every table and index that is missing. Safe to run concurrently and repeatedly.
pub async fn ensure_schema(pg: &Pg) -> Result<()> {
    pg.run("creating the pillowtop tables", |c| async move {
        // Serialise concurrent creators (several processes starting at once): CREATE ... IF NOT
        // EXISTS is not race-free in PostgreSQL.
        // `SET LOCAL client_min_messages`: no "already exists, skipping" notices in the logs.
        let sql = format!("BEGIN; SET LOCAL client_min_messages TO warning; SELECT pg_advisory_xact_lock(7426853117); {SCHEMA_SQL} COMMIT;");
        c.batch_execute(&sql)
            .await
            .map_err(err("creating the pillowtop tables"))
    })
    .await
}
