from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="ProcessedChange",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("processor", models.CharField(max_length=64)),
                ("doc_id", models.CharField(max_length=255)),
                ("domain", models.CharField(default="", max_length=255)),
                ("times", models.IntegerField(default=1)),
            ],
            options={"unique_together": {("processor", "doc_id")}},
        ),
    ]
