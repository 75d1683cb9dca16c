"""Models over CommCare's checkpoint and error tables (same names, columns and constraints).

The Rust core writes these tables directly; the models are for reading them from Django (the
admin, the retry queue, operators' shells). See ``apps.py`` for the coexistence with CommCare's
``pillowtop`` and ``pillow_retry`` apps, and ``migrations/0001_initial.py`` for how the tables are
created only when missing.
"""

from __future__ import annotations

import datetime

from django.db import models
from django.utils import timezone

#: CommCare's ``PILLOW_RETRY_QUEUE_MAX_PROCESSING_ATTEMPTS``.
MAX_PROCESSING_ATTEMPTS = 3
#: CommCare's ``PILLOW_RETRY_MULTI_ATTEMPTS_CUTOFF``.
MULTI_ATTEMPTS_CUTOFF = 9
#: CommCare's ``PILLOW_RETRY_REPROCESS_INTERVAL`` (minutes).
REPROCESS_INTERVAL_MINUTES = 5


class KafkaCheckpoint(models.Model):
    """One row per (checkpoint id, topic, partition); ``offset`` is the next offset to read."""

    checkpoint_id = models.CharField(max_length=126, db_index=True)
    topic = models.CharField(max_length=126)
    partition = models.IntegerField()
    offset = models.BigIntegerField()
    doc_modification_time = models.DateTimeField(null=True)
    last_modified = models.DateTimeField(auto_now=True)

    class Meta:
        """CommCare's table name and unique constraint."""

        db_table = "pillowtop_kafkacheckpoint"
        unique_together = ("checkpoint_id", "topic", "partition")

    def __str__(self) -> str:
        return f"{self.checkpoint_id} {self.topic},{self.partition}={self.offset}"


class DjangoPillowCheckpoint(models.Model):
    """A text (Couch-era) checkpoint: one row per checkpoint id."""

    checkpoint_id = models.CharField(primary_key=True, max_length=100)
    sequence = models.TextField()
    timestamp = models.DateTimeField(auto_now=True)
    old_sequence = models.TextField(null=True, blank=True)
    sequence_format = models.CharField(
        max_length=20, choices=(("text", "text"), ("json", "json")), default="text"
    )

    class Meta:
        """CommCare's table name and unique constraint."""

        db_table = "pillowtop_djangopillowcheckpoint"

    def __str__(self) -> str:
        return f"{self.checkpoint_id} {self.sequence}"


class PillowErrorQuerySet(models.QuerySet["PillowError"]):
    """CommCare's selection and reset queries."""

    def due(
        self, now: datetime.datetime | None = None, excluded_pillows: tuple[str, ...] = ()
    ) -> PillowErrorQuerySet:
        """CommCare's ``get_errors_to_process``: due rows that still have attempts left."""
        now = now or timezone.now()
        return (
            self.filter(date_next_attempt__lte=now)
            .filter(
                models.Q(current_attempt=0)
                | models.Q(
                    total_attempts__lte=MULTI_ATTEMPTS_CUTOFF,
                    current_attempt__lte=MAX_PROCESSING_ATTEMPTS,
                )
            )
            .exclude(pillow__in=excluded_pillows)
            .order_by("date_next_attempt", "id")
        )

    def reset_attempts(self) -> int:
        """Apply the admin's "Reset Attempts": one more try for each row, now."""
        return self.update(current_attempt=0, date_next_attempt=timezone.now())


class PillowError(models.Model):
    """One row per (document id, pillow name): the last failure and its retry schedule."""

    id = models.BigAutoField(primary_key=True)
    doc_id = models.CharField(max_length=255)
    pillow = models.CharField(max_length=255, db_index=True)
    date_created = models.DateTimeField()
    date_last_attempt = models.DateTimeField()
    date_next_attempt = models.DateTimeField(db_index=True, null=True)
    total_attempts = models.IntegerField(default=0)
    current_attempt = models.IntegerField(default=0, db_index=True)
    error_type = models.CharField(max_length=255, null=True, db_index=True)
    error_traceback = models.TextField(null=True)
    change = models.JSONField(null=True)
    change_metadata = models.JSONField(null=True)

    objects = PillowErrorQuerySet.as_manager()

    class Meta:
        """CommCare's table name and unique constraint."""

        db_table = "pillow_retry_pillowerror"
        unique_together = ("doc_id", "pillow")

    def __str__(self) -> str:
        return f"{self.pillow} {self.doc_id} ({self.error_type})"

    def add_attempt(self, error_type: str, traceback: str, attempts: int = 1) -> None:
        """CommCare's ``add_attempt``: add ``attempts``; schedule 5 min × attempt², or park."""
        self.current_attempt += attempts
        self.total_attempts += attempts
        self.date_last_attempt = timezone.now()
        self.error_type = error_type
        self.error_traceback = traceback
        if self.current_attempt <= MAX_PROCESSING_ATTEMPTS:
            self.date_next_attempt = self.date_last_attempt + datetime.timedelta(
                minutes=REPROCESS_INTERVAL_MINUTES * self.current_attempt**2
            )
        else:
            self.date_next_attempt = None
