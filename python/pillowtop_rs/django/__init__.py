"""``pillowtop_rs.django``: the optional Django app (add it to ``INSTALLED_APPS``).

It provides CommCare's management commands (``run_ptop``, ``split_pillow_checkpoints``, ...),
models over CommCare's checkpoint and error tables, their migration (which adopts tables that
already exist), an admin for error rows, and ``pillowtop_rs.django.settings`` (connection
settings derived from the Django settings). See ``apps.py`` for how it coexists with CommCare's
own ``pillowtop`` and ``pillow_retry`` apps.
"""
