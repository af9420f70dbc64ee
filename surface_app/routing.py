from django.urls import path

from surface_app.consumers import RecommendationsConsumer

websocket_urlpatterns = [
    path("ws/v1/recommendations/", RecommendationsConsumer.as_asgi()),
]
