"""Graph: items, users, knowledge-graph entities and relations, embeddings (pgvector), the feature store, the model
registry, and the online state and logs every layer reads (`graph_app/state/`).
"""
