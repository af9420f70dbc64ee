from django.contrib import admin
from django.urls import include, path

from graph_app.apis import ItemBatchDeleteApi, ItemBatchUpsertApi, ItemDetailApi
from operations.apis import UserApi
from personalization import views as platform_views
from signals_app import segment_apis
from signals_app.apis import EventIngestApi, IdentifyApi
from surface_app.apis import RecommendationsApi, SimilarItemsApi
from surface_app.experiments.apis import (
    ExperimentCreateApi,
    ExperimentDetailApi,
    ExperimentResultsApi,
    ExperimentStartApi,
    ExperimentStopApi,
)
from surface_app.views import demo_page

api_v1 = [
    path("items/batch", ItemBatchUpsertApi.as_view(), name="items-batch"),
    path("items/batch/delete", ItemBatchDeleteApi.as_view(), name="items-batch-delete"),
    path("items/<str:item_id>/similar", SimilarItemsApi.as_view(), name="items-similar"),
    path("items/<str:item_id>", ItemDetailApi.as_view(), name="item-detail"),
    path("events", EventIngestApi.as_view(), name="events"),
    path("segment/track", segment_apis.SegmentTrackApi.as_view(), name="segment-track"),
    path("segment/batch", segment_apis.SegmentBatchApi.as_view(), name="segment-batch"),
    # A Segment or RudderStack source's data plane URL is <base>/api/v1/segment: its libraries add /v1/batch, ...
    path("segment/v1/batch", segment_apis.SegmentSourceBatchApi.as_view(), name="segment-source-batch"),
    path("segment/v1/b", segment_apis.SegmentBrowserBatchApi.as_view(), name="segment-source-b"),
    *(
        path(f"segment/v1/{name}", view.as_view(), name=f"segment-source-{name}")
        for name, view in segment_apis.SOURCE_CALL_APIS.items()
    ),
    path("users/<str:user_id>/identify", IdentifyApi.as_view(), name="user-identify"),
    path("users/<str:user_id>", UserApi.as_view(), name="user-traits"),
    path("recommendations", RecommendationsApi.as_view(), name="recommendations"),
    path("experiments", ExperimentCreateApi.as_view(), name="experiments"),
    path("experiments/<str:experiment_id>/start", ExperimentStartApi.as_view(), name="experiment-start"),
    path("experiments/<str:experiment_id>/stop", ExperimentStopApi.as_view(), name="experiment-stop"),
    path("experiments/<str:experiment_id>/results", ExperimentResultsApi.as_view(), name="experiment-results"),
    path("experiments/<str:experiment_id>", ExperimentDetailApi.as_view(), name="experiment-detail"),
    path("schema/", platform_views.ApiSchemaView.as_view(), name="schema"),
    path("docs/", platform_views.ApiDocsView.as_view(url_name="v1:schema"), name="docs"),
]

urlpatterns = [
    path("api/v1/", include((api_v1, "v1"))),
    path("admin/console/", include(("rules_admin.urls", "console"))),
    path("admin/", admin.site.urls),
    path("demo/", demo_page, name="demo"),
    path("healthz", platform_views.healthz, name="healthz"),
    path("readyz", platform_views.readyz, name="readyz"),
    path("metrics", platform_views.metrics, name="metrics"),
]

# An API URL that matches no route answers in the API's error shape, as its schema declares.
handler404 = "personalization.exception_handler.not_found"
