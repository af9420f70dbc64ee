"""What other apps may use of Graph (Sentry's cross-app service idea): keyword-only functions and plain data, never
Graph's models or tables. Re-exports of the modules that implement them (the numerical libraries training uses
are imported inside the functions that fit, so importing this loads nothing serving does not).

- The catalog: items in batches, the catalog's copy in Redis, reads for grids and pins, rule conditions matched
  and counted (`graph_app.item_conditions`), the values a condition may name (`catalog_values`, a module of
  keyword-only searches and checks).
- Shoppers: created in bulk, their traits merged, their rows erased (the whole erasure is `operations.erasure`).
- Training rows: the served slates that were reacted to, as the materialization stored them, and how long after
  serving it labels them (`LABEL_WINDOW`); the online/offline feature comparison of the skew checks.
- The model registry (`graph_app.model_registry`): Graph trains embeddings into it, Score trains and serves rankers
  and bandits from it. Its ORM-returning services (`model_version_create`, ...) are the control plane's (training,
  admin); serving reads through `model_versions_serving_rows` / `model_artifact_read`, no ORM.
- Training: the embeddings and the neighbourhoods; the building blocks Score's ranker training shares to replay
  retrieval offline (interactions, holdout, ALS, item model, similar and user lists).
- The catalog queries of Score's retrieval sources (`graph_app.catalog_queries`): Graph's SQL, run by Graph's
  functions in Score's threads, under Score's deadlines and caches.
- The feature store's online side, read on the hot path: the feature matrix of a user's candidates
  (`features_fetch`), the catalog facts a serving process keeps, the features' definitions, a user's affinities;
  the item vector index and item neighbourhoods that retrieval queries. Its offline side (`features_offline`) builds
  the same features for training.
"""

from __future__ import annotations

from graph_app import catalog_values
from graph_app.catalog_bulk import items_upsert_many
from graph_app.catalog_queries import (
    CATEGORY_POPULAR_SQL,
    FRESH_SQL,
    IN_STOCK_FROM_CATALOG_SQL,
    POPULAR_FROM_CATALOG_SQL,
    SIMILAR_TO_ITEM_SQL,
    SIMILAR_TO_RECENT_SQL,
    USER_VECTOR_SQL,
    similar_to_item_rows,
    similar_to_recent_rows,
    user_vector_rows,
)
from graph_app.catalog_queries import category_popular_rows as catalog_category_popular_rows
from graph_app.catalog_queries import fresh_rows as catalog_fresh_rows
from graph_app.catalog_queries import popular_from_catalog_rows as catalog_popular_rows
from graph_app.erasure import ShopperRowsErased, erased_shopper_repr, shopper_rows_erase
from graph_app.features.definitions import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    RETRIEVAL_COLUMNS,
    RETRIEVAL_FEATURE_NAMES,
    retrieval_features,
)
from graph_app.features.materialize import LABEL_WINDOW
from graph_app.features.offline import FeatureRequest, features_offline, features_offline_sets
from graph_app.features.online import (
    FeatureMatrix,
    catalog_facts_preload,
    catalog_facts_read,
    catalog_stock_kept,
    features_fetch,
)
from graph_app.features.skew import DEFAULT_TOLERANCE, FeatureSkew, SkewReport, feature_skew_check, skew_compare
from graph_app.features.user_affinity import UserAffinity, affinity_decode
from graph_app.item_conditions import (
    ItemCondition,
    ItemCount,
    item_ids_matching,
    items_in_stock,
    items_matching_count,
    items_matching_estimate,
)
from graph_app.item_model import SCORE_DECIMALS as ITEM_MODEL_DECIMALS
from graph_app.item_model import ItemModel, item_model_fit, item_model_lists
from graph_app.item_vector_index import VectorIndexRebuilding, item_vector_index_serving
from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.selectors import (
    ServingVersion,
    model_artifact,
    model_artifact_arrays,
    model_version_active,
    model_version_kind,
    model_versions_of_kind,
    model_versions_serving,
)
from graph_app.model_registry.services import (
    model_version_canary,
    model_version_create,
    model_version_promote,
    model_version_publish,
    model_version_register,
    model_version_retire,
    model_version_rollback,
    models_serving_publish,
)
from graph_app.model_registry.serving import model_artifact_read, model_versions_serving_rows
from graph_app.neighbourhoods import NeighbourhoodsReport, neighbourhoods_refresh
from graph_app.neighbourhoods_online import (
    Neighbour,
    item_neighbours,
    neighbour_explanation,
    neighbours_decode,
    neighbours_queue,
)
from graph_app.online import catalog_online_rebuild, static_in_stock
from graph_app.progress import Progress, progress_observed
from graph_app.selectors import (
    ItemCard,
    ItemFacts,
    ServedRow,
    catalog_has_items,
    item_attributes_unknown,
    item_exists,
    item_ids_in_stock,
    item_titles,
    items_facts,
    items_popular_in_stock,
    items_unknown,
    shopper_ids_first,
    slates_reacted_to,
    slates_served_rows,
)
from graph_app.services import (
    ITEM_BATCH_MAX,
    EntityRef,
    ItemInput,
    content_projection,
    shopper_traits_merge,
    shoppers_create,
)
from graph_app.similar_lists import SCORE_DECIMALS as SIMILAR_DECIMALS
from graph_app.similar_lists import SIMILAR_PER_ITEM, similar_lists_compute
from graph_app.training import (
    TOP_K,
    AlsSettings,
    Holdout,
    Interactions,
    TrainingReport,
    active_als_settings,
    active_item_model_regularization,
    als_fit,
    embeddings_train,
    holdout_split,
    interactions_load,
    item_content_matrix,
    item_vectors_for,
    popularity_scores,
    search_fit_users,
    seeded_sample,
    top_k_items,
)
from graph_app.user_lists import USER_NEAREST_PER_USER

# The registry's vocabularies (choices, not the model): kinds of model and states of a version.
ModelKind = ModelVersion.Kind
ModelState = ModelVersion.State


__all__ = [
    "CATEGORY_POPULAR_SQL",
    "DEFAULT_TOLERANCE",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "FRESH_SQL",
    "IN_STOCK_FROM_CATALOG_SQL",
    "ITEM_BATCH_MAX",
    "ITEM_MODEL_DECIMALS",
    "LABEL_WINDOW",
    "POPULAR_FROM_CATALOG_SQL",
    "RETRIEVAL_COLUMNS",
    "RETRIEVAL_FEATURE_NAMES",
    "SIMILAR_DECIMALS",
    "SIMILAR_PER_ITEM",
    "SIMILAR_TO_ITEM_SQL",
    "SIMILAR_TO_RECENT_SQL",
    "TOP_K",
    "USER_NEAREST_PER_USER",
    "USER_VECTOR_SQL",
    "AlsSettings",
    "EntityRef",
    "FeatureMatrix",
    "FeatureRequest",
    "FeatureSkew",
    "Holdout",
    "Interactions",
    "ItemCard",
    "ItemCondition",
    "ItemCount",
    "ItemFacts",
    "ItemInput",
    "ItemModel",
    "ModelKind",
    "ModelState",
    "Neighbour",
    "NeighbourhoodsReport",
    "Progress",
    "ServedRow",
    "ServingVersion",
    "ShopperRowsErased",
    "SkewReport",
    "TrainingReport",
    "UserAffinity",
    "VectorIndexRebuilding",
    "active_als_settings",
    "active_item_model_regularization",
    "affinity_decode",
    "als_fit",
    "catalog_category_popular_rows",
    "catalog_facts_preload",
    "catalog_facts_read",
    "catalog_fresh_rows",
    "catalog_has_items",
    "catalog_online_rebuild",
    "catalog_popular_rows",
    "catalog_stock_kept",
    "catalog_values",
    "content_projection",
    "embeddings_train",
    "erased_shopper_repr",
    "feature_skew_check",
    "features_fetch",
    "features_offline",
    "features_offline_sets",
    "holdout_split",
    "interactions_load",
    "item_attributes_unknown",
    "item_content_matrix",
    "item_exists",
    "item_ids_in_stock",
    "item_ids_matching",
    "item_model_fit",
    "item_model_lists",
    "item_neighbours",
    "item_titles",
    "item_vector_index_serving",
    "item_vectors_for",
    "items_facts",
    "items_in_stock",
    "items_matching_count",
    "items_matching_estimate",
    "items_popular_in_stock",
    "items_unknown",
    "items_upsert_many",
    "model_artifact",
    "model_artifact_arrays",
    "model_artifact_read",
    "model_version_active",
    "model_version_canary",
    "model_version_create",
    "model_version_kind",
    "model_version_promote",
    "model_version_publish",
    "model_version_register",
    "model_version_retire",
    "model_version_rollback",
    "model_versions_of_kind",
    "model_versions_serving",
    "model_versions_serving_rows",
    "models_serving_publish",
    "neighbour_explanation",
    "neighbourhoods_refresh",
    "neighbours_decode",
    "neighbours_queue",
    "popularity_scores",
    "progress_observed",
    "retrieval_features",
    "search_fit_users",
    "seeded_sample",
    "shopper_ids_first",
    "shopper_rows_erase",
    "shopper_traits_merge",
    "shoppers_create",
    "similar_lists_compute",
    "similar_to_item_rows",
    "similar_to_recent_rows",
    "skew_compare",
    "slates_reacted_to",
    "slates_served_rows",
    "static_in_stock",
    "top_k_items",
    "user_vector_rows",
]
