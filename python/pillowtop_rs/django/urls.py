"""URLs of the status page (``include("pillowtop_rs.django.urls")``, namespace ``pillowtop_rs``)."""

from __future__ import annotations

from django.urls import path

from pillowtop_rs.django import views

app_name = "pillowtop_rs"

urlpatterns = [
    path("", views.status_page, name="status"),
    path("api/pillows", views.status_api, name="status-api"),
]
