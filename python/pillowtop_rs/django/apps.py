"""The app configuration.

Label ``pillowtop_rs`` (not CommCare's ``pillowtop`` or ``pillow_retry``), so the app can be
installed in a project that still has CommCare's apps and its migrations never collide with
theirs in ``django_migrations``.

Coexistence with CommCare's apps. The models use CommCare's table names
(``pillowtop_kafkacheckpoint``, ``pillowtop_djangopillowcheckpoint``,
``pillow_retry_pillowerror``) and columns. Migration ``0001_initial`` creates a table only when it
is missing (the same DDL as ``src/store/schema.rs``), so:

* in a database CommCare's migrations already created, ``migrate`` records ``pillowtop_rs.0001``
  and changes nothing: the tables are reused as they are;
* in a fresh database, ``pillowtop_rs`` creates them. CommCare's own ``pillowtop`` /
  ``pillow_retry`` migrations must then not run afterwards (their ``CreateModel`` would fail with
  "relation already exists"): either do not install CommCare's apps, or ``migrate --fake`` them.
* With both apps installed, Django's system check ``models.E028`` ("db_table is used by multiple
  models") fires; add it to ``SILENCED_SYSTEM_CHECKS`` for the migration period, or remove one
  app. Both model sets describe the same rows, so either can be used to read them.
"""

from __future__ import annotations

from django.apps import AppConfig


class PillowtopRsConfig(AppConfig):
    """``pillowtop_rs.django``, label ``pillowtop_rs``."""

    name = "pillowtop_rs.django"
    label = "pillowtop_rs"
    verbose_name = "Pillowtop (pillowtop_rs)"
    default_auto_field = "django.db.models.AutoField"
