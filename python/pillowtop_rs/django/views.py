"""The status page in the Django admin: the page ``pillowtop serve`` serves, and its JSON.

Include the URLs under the admin (staff only)::

    urlpatterns = [
        path("admin/pillowtop/", include("pillowtop_rs.django.urls")),
        path("admin/", admin.site.urls),
    ]

The JSON is CommCare's ``get_all_pillows_json`` fields per checkpoint plus the processes, the
partitions' lag in offsets and seconds and the error rows by type. The changes/s chart is drawn
from the page's own samples while it is open (``pillowtop serve`` keeps an hour server-side).
"""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from pillowtop_rs import _native, registry
from pillowtop_rs.django import cli
from pillowtop_rs.exceptions import PillowtopError

__all__ = ["status_api", "status_page"]


@staff_member_required
def status_page(request: HttpRequest) -> HttpResponse:
    """Every pillow's status (the page reads ``status_api`` every 5 s)."""
    return HttpResponse(
        _native.status_page(reverse("pillowtop_rs:status-api")), content_type="text/html"
    )


@staff_member_required
def status_api(request: HttpRequest) -> HttpResponse:
    """Return the status as JSON (pillow names from ``PILLOWTOPS``)."""
    names: dict[str, str] = {}
    for config in registry.get_all_pillow_configs():
        try:
            names[cli.checkpoint_id(registry.build_pillow(config))] = config.name
        except PillowtopError:
            continue  # a pillow that does not build is shown under its checkpoint id
    body = _native.status_json(cli.postgres_url(), cli.kafka_bootstrap(), names)
    return HttpResponse(body, content_type="application/json")
