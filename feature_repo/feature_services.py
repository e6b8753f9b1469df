"""Versioned groups of features: a model version names the service it was trained on."""

from feast import FeatureService

from feature_views import item_stats, item_text_embedding, user_recent_items, user_stats

recommender_v1 = FeatureService(
    name="recommender_v1",
    features=[user_recent_items, user_stats, item_stats, item_text_embedding],
    description="Inputs of the sequential recommender: user sequence and stats, item stats and text embeddings.",
)
