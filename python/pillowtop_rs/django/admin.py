"""Admin for error rows (CommCare's ``pillow_retry/admin.py``) and a read-only checkpoint view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from pillowtop_rs.django.models import KafkaCheckpoint, PillowError

if TYPE_CHECKING:  # ModelAdmin is generic only in django-stubs
    PillowErrorAdminBase = admin.ModelAdmin[PillowError]
    KafkaCheckpointAdminBase = admin.ModelAdmin[KafkaCheckpoint]
else:
    PillowErrorAdminBase = KafkaCheckpointAdminBase = admin.ModelAdmin


@admin.register(PillowError)
class PillowErrorAdmin(PillowErrorAdminBase):
    """Filter by pillow and error type, search by doc id, "Reset Attempts"."""

    model = PillowError
    list_display = (
        "pillow",
        "doc_id",
        "error_type",
        "date_created",
        "date_last_attempt",
        "date_next_attempt",
        "current_attempt",
        "total_attempts",
    )
    list_filter = ("pillow", "error_type")
    search_fields = ("doc_id",)
    actions = ("delete_selected", "reset_attempts")

    @admin.action(description="Reset Attempts")
    def reset_attempts(self, request: HttpRequest, queryset: QuerySet[PillowError]) -> None:
        """Give each selected error one more try now (``current_attempt = 0``)."""
        n = queryset.update(current_attempt=0, date_next_attempt=timezone.now())
        self.message_user(request, f"Reset the attempts of {n} error(s).", messages.SUCCESS)


@admin.register(KafkaCheckpoint)
class KafkaCheckpointAdmin(KafkaCheckpointAdminBase):
    """Read-only: checkpoints are changed with the checkpoint commands, not by hand."""

    list_display = ("checkpoint_id", "topic", "partition", "offset", "last_modified")
    list_filter = ("checkpoint_id", "topic")
    search_fields = ("checkpoint_id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Refuse: rows come from pillows."""
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: KafkaCheckpoint | None = None
    ) -> bool:
        """Refuse: use the checkpoint commands."""
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: KafkaCheckpoint | None = None
    ) -> bool:
        """Refuse: use the checkpoint commands."""
        return False
