"""The model registry: trained artifacts (embeddings, ranker, bandit) and their life from candidate to retired.

Here, in Graph, because Graph's own training stores its embeddings in it and Score serves from it: the layers
above reach it through `graph_app.interface`."""
