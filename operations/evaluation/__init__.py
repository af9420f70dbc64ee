"""Offline quality evaluation of the platform on public data sets (`manage.py evaluate_movielens`).

`movielens` reads the files, `split` and `metrics` reproduce the Microsoft Recommenders protocol, `scratch`
isolates the run from live data, `ingest` loads the data through the platform's own services, and `pipeline`
trains and scores the rows that are compared (popularity, embeddings, two-stage).
"""
