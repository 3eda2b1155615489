"""The approval page and the endpoint its buttons post to (included under /hitl/)."""

from django.urls import path

from . import views

app_name = "hitl"

urlpatterns = [
    path("", views.approvals_page, name="approvals"),
    path("requests/<str:call_id>/", views.request_page, name="request"),
    path("requests/<str:call_id>/decide/", views.decide, name="decide"),
    path("standing/<int:standing_id>/revoke/", views.revoke_standing, name="revoke_standing"),
]
