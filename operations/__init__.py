"""Operations: what drives several layers at once, so it sits above all of them (and above the console).

First-run bootstrap and the run commands (`bootstrap.py`, `startup.py`, `launcher.py`; cluster mode's plan in
`cluster.py`), demo data that goes through Signal's ingest into Graph (`demo.py`), the end-to-end offline evaluation
that ingests, trains and serves (`evaluation/`), and the commands that run them (`bootstrap_platform`,
`run_platform`, `platform_info`, `run_cluster`, `cluster_info`, `evaluate_replay`, `evaluate_movielens`,
`feature_skew_check`). Core stays free of layer imports; each layer stays free of the layers above it.
"""
