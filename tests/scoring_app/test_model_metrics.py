"""Model age and versions on /metrics: the age is one series per kind whatever the version."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.services import model_version_canary, model_version_create, model_version_publish

pytestmark = pytest.mark.django_db
KIND = ModelVersion.Kind.RANKER


def _samples(api_client, name: str) -> list[tuple[dict[str, str], float]]:
    body = api_client.get("/metrics").content.decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    ]


def test_the_age_has_one_series_per_kind_and_the_versions_are_an_info_metric(api_client):
    first = model_version_publish(kind=KIND, artifact=b"one", metrics={})
    before = _samples(api_client, "model_age_seconds")
    second = model_version_publish(kind=KIND, artifact=b"two", metrics={})
    canary = model_version_canary(
        model_version=model_version_create(kind=KIND, artifact=b"three", metrics={}, feature_names=["a"]), percent=10
    )

    ages = _samples(api_client, "model_age_seconds")
    versions = _samples(api_client, "model_version_info")

    assert [labels for labels, _ in before] == [{"kind": "ranker"}]
    # The new version continues the same series: same labels, no version among them.
    assert [labels for labels, _ in ages] == [{"kind": "ranker"}]
    assert 0 <= ages[0][1] < 3600
    assert sorted(versions, key=lambda sample: sample[0]["state"]) == [
        ({"kind": "ranker", "state": "active", "version": second.version}, 1.0),
        ({"kind": "ranker", "state": "canary", "version": canary.version}, 1.0),
    ]
    assert first.version not in str(versions)
