"""URL routes of the experiments app: feedback from apps, and results and exports for analysts."""

from django.urls import path

from experiments import admin_api, api

urlpatterns = [
    path("v1/feedback", api.FeedbackView.as_view(), name="feedback"),
    path(
        "v1/admin/experiments/<str:experiment_id>/results",
        admin_api.ExperimentResultsView.as_view(),
        name="admin-experiment-results",
    ),
    path(
        "v1/admin/experiments/<str:experiment_id>/requests",
        admin_api.ExperimentRequestsView.as_view(),
        name="admin-experiment-requests",
    ),
]
