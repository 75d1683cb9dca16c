from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/pillowtop/", include("pillowtop_rs.django.urls")),
    path("admin/", admin.site.urls),
]
