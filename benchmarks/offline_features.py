"""The ranker's offline features on a loaded store, as its judged users ask for them: each user's candidates as of
that user's own instant (the last event minus a millisecond), in one call of
`graph_app.features.offline.features_offline`, as the ranker asks for a candidate set's rows.

Candidates per user: the store's most popular items (the "popular" source every user gets) and items of the user's
own log, CANDIDATES in all. Users: a seeded sample of the log's users with at least 5 events.

    PERSONALIZATION_DATA_DIR=.data/bench-scale .venv/bin/python benchmarks/offline_features.py --users 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import django_setup, machine_description

CANDIDATES = 150
POPULAR = 100
SEED_SQL = """
SELECT user_id FROM (SELECT user_id FROM signals_app_event WHERE item_id <> '' GROUP BY user_id HAVING count(*) >= 5
                     ORDER BY md5(user_id) LIMIT %s) AS u ORDER BY user_id
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    django_setup()
    from django.db import connection

    from graph_app.features.offline import FeatureRequest, features_offline

    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL, [args.users])
        users = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT item_id FROM graph_app_itempopularity ORDER BY score DESC LIMIT %s", [POPULAR])
        popular = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT user_id, max(occurred_at), array_agg(DISTINCT item_id) FROM signals_app_event "
            "WHERE user_id = ANY(%s) AND item_id <> '' GROUP BY user_id",
            [users],
        )
        logs = {user: (last, items) for user, last, items in cursor.fetchall()}
    requests = []
    for user in users:
        last, items = logs[user]
        candidates = list(dict.fromkeys([*popular, *items]))[:CANDIDATES]
        as_of = last - timedelta(milliseconds=1)
        requests += [FeatureRequest(user, item, "home", as_of) for item in candidates]
    started = time.perf_counter()
    features_offline(requests=requests)
    seconds = time.perf_counter() - started
    print(json.dumps({"machine": machine_description(), "users": len(users), "rows": len(requests),
                      "seconds": round(seconds, 1),
                      "rows_per_second": round(len(requests) / seconds)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
