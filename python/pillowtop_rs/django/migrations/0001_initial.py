"""CommCare's checkpoint and error tables, created only when missing.

The database side runs the same DDL as the Rust core's ``src/store/schema.rs`` (``IF NOT EXISTS``
guards, the same advisory lock), so an existing CommCare database is reused as it is and a
pillow that starts while ``migrate`` runs does not race it. The state side is plain
``CreateModel`` operations, so Django knows the models. PostgreSQL only.
"""

from __future__ import annotations

from django.db import migrations, models

#: The lock ``src/store/schema.rs`` takes around the same statements.
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7426853117)"

#: Statements copied from ``src/store/schema.rs`` (a test checks that they stay identical).
KAFKA_CHECKPOINT_SQL = """DO $$ BEGIN IF to_regclass('pillowtop_kafkacheckpoint') IS NULL THEN
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
END IF; END $$;"""  # noqa: E501

DJANGO_CHECKPOINT_SQL = """CREATE TABLE IF NOT EXISTS pillowtop_djangopillowcheckpoint (
    checkpoint_id varchar(100) PRIMARY KEY,
    "sequence" text NOT NULL,
    "timestamp" timestamp with time zone NOT NULL,
    old_sequence text NULL,
    sequence_format varchar(20) NOT NULL DEFAULT 'text'
);"""

PILLOW_ERROR_SQL = """DO $$ BEGIN IF to_regclass('pillow_retry_pillowerror') IS NULL THEN
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
END IF; END $$;"""  # noqa: E501

SCHEMA_STATEMENTS = (SCHEMA_LOCK, KAFKA_CHECKPOINT_SQL, DJANGO_CHECKPOINT_SQL, PILLOW_ERROR_SQL)


class Migration(migrations.Migration):
    """Create the tables when missing; record the models."""

    initial = True

    dependencies = []

    operations = [
        migrations.SeparateDatabaseAndState(
            # Reversing leaves the tables alone: they may be CommCare's.
            database_operations=[
                migrations.RunSQL(SCHEMA_STATEMENTS, reverse_sql=migrations.RunSQL.noop)
            ],
            state_operations=[
                migrations.CreateModel(
                    name="KafkaCheckpoint",
                    fields=[
                        (
                            "id",
                            models.AutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("checkpoint_id", models.CharField(db_index=True, max_length=126)),
                        ("topic", models.CharField(max_length=126)),
                        ("partition", models.IntegerField()),
                        ("offset", models.BigIntegerField()),
                        ("doc_modification_time", models.DateTimeField(null=True)),
                        ("last_modified", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "pillowtop_kafkacheckpoint",
                        "unique_together": {("checkpoint_id", "topic", "partition")},
                    },
                ),
                migrations.CreateModel(
                    name="DjangoPillowCheckpoint",
                    fields=[
                        (
                            "checkpoint_id",
                            models.CharField(max_length=100, primary_key=True, serialize=False),
                        ),
                        ("sequence", models.TextField()),
                        ("timestamp", models.DateTimeField(auto_now=True)),
                        ("old_sequence", models.TextField(blank=True, null=True)),
                        (
                            "sequence_format",
                            models.CharField(
                                choices=[("text", "text"), ("json", "json")],
                                default="text",
                                max_length=20,
                            ),
                        ),
                    ],
                    options={"db_table": "pillowtop_djangopillowcheckpoint"},
                ),
                migrations.CreateModel(
                    name="PillowError",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("doc_id", models.CharField(max_length=255)),
                        ("pillow", models.CharField(db_index=True, max_length=255)),
                        ("date_created", models.DateTimeField()),
                        ("date_last_attempt", models.DateTimeField()),
                        ("date_next_attempt", models.DateTimeField(db_index=True, null=True)),
                        ("total_attempts", models.IntegerField(default=0)),
                        ("current_attempt", models.IntegerField(db_index=True, default=0)),
                        (
                            "error_type",
                            models.CharField(db_index=True, max_length=255, null=True),
                        ),
                        ("error_traceback", models.TextField(null=True)),
                        ("change", models.JSONField(null=True)),
                        ("change_metadata", models.JSONField(null=True)),
                    ],
                    options={
                        "db_table": "pillow_retry_pillowerror",
                        "unique_together": {("doc_id", "pillow")},
                    },
                ),
            ],
        )
    ]
