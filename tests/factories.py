from __future__ import annotations

from datetime import timedelta

import factory
import numpy as np
from django.utils import timezone

from graph_app.models import Entity, Item, ItemEntity, ItemPopularity, Shopper
from graph_app.online import catalog_rows_publish
from graph_app.state.models import Event


class ItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Item
        skip_postgeneration_save = True

    external_id = factory.Sequence(lambda n: f"sku-{n}")
    title = factory.Sequence(lambda n: f"Item {n}")
    category = "mugs"
    price = "9.99"
    in_stock = True

    @factory.post_generation
    def online(obj: Item, create: bool, extracted: object, **kwargs: object) -> None:
        """As the catalog services do: the item's facts and vector copied to Redis, where serving reads them."""
        if create:
            catalog_rows_publish([(obj.external_id, obj.price, obj.in_stock, obj.created_at, obj.embedding)])

    @factory.post_generation
    def popularity(obj: Item, create: bool, extracted: float | None, **kwargs: object) -> None:
        """`popularity=5`: the score a popularity refresh would have stored for the item."""
        if create and extracted is not None:
            ItemPopularity.objects.create(item_id=obj.external_id, category=obj.category, score=extracted)


class ShopperFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Shopper

    external_id = factory.Sequence(lambda n: f"user-{n}")


class EntityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Entity

    kind = "brand"
    external_id = factory.Sequence(lambda n: f"brand-{n}")


class ItemEntityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ItemEntity

    item = factory.SubFactory(ItemFactory)
    entity = factory.SubFactory(EntityFactory)


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    event_id = factory.Sequence(lambda n: f"event-{n}")
    type = "view"
    user_id = "user-1"
    item_id = "sku-1"
    occurred_at = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=1))


def unit(*weights: float) -> list[float]:
    """A unit embedding (64 dimensions) whose first components are proportional to `weights`."""
    vector = np.zeros(64)
    vector[: len(weights)] = weights
    return (vector / np.linalg.norm(vector)).tolist()
