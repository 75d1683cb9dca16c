"""What the test processors write: one row per (processor, document), counting deliveries."""

from __future__ import annotations

from django.db import models


class ProcessedChange(models.Model):
    """A processor saw a change of ``doc_id`` ``times`` times."""

    processor = models.CharField(max_length=64)
    doc_id = models.CharField(max_length=255)
    domain = models.CharField(max_length=255, default="")
    times = models.IntegerField(default=1)

    class Meta:
        """One row per processor and document."""

        unique_together = ("processor", "doc_id")


class FormDocument(models.Model):
    """A form as the primary database holds it: the documents of the model store's pillow."""

    form_id = models.CharField(max_length=255, primary_key=True)
    domain = models.CharField(max_length=255)
    xmlns = models.CharField(max_length=255, default="")
    received_on = models.DateTimeField()
