"""Score: candidate retrieval from many sources, LightGBM ranking, the contextual bandit (`engine/`, the hot path) and
their training.
"""
