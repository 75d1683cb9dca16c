from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("testapp", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="FormDocument",
            fields=[
                ("form_id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("domain", models.CharField(max_length=255)),
                ("xmlns", models.CharField(default="", max_length=255)),
                ("received_on", models.DateTimeField()),
            ],
        ),
    ]
