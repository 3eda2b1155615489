"""The event pages outside the admin (included under /events/): the live feed."""

from django.urls import path

from . import views

app_name = "event_pages"

urlpatterns = [
    path("live/", views.live_feed, name="live"),
]
