"""Cut the demo sample out of the UCI Online Retail data set (CC BY 4.0) in ../shared/data.

Keeps the clean purchase lines (customer known, quantity and price positive) of the most bought items by a
deterministic sample of their customers. Run once; the output ships with the project with its attribution:
    python scripts/make_demo_sample.py
"""

from __future__ import annotations

import collections
import csv
import gzip
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "data" / "online-retail" / "online-retail.csv.gz"
TARGET = ROOT / "operations" / "demo_data" / "online_retail_sample.csv.gz"
ITEMS_KEPT = 600
CUSTOMERS_KEPT = 500
SEED = 7
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def main() -> int:
    if not SOURCE.exists():
        print(f"{SOURCE} not found", file=sys.stderr)
        return 1
    with gzip.open(SOURCE, "rt", encoding="utf-8", errors="replace") as handle:
        rows = [
            row
            for row in csv.DictReader(handle)
            if row["CustomerID"]
            and not row["InvoiceNo"].startswith("C")
            and float(row["Quantity"]) > 0
            and float(row["UnitPrice"]) > 0
            and row["Description"].strip()
        ]
    item_counts = collections.Counter(row["StockCode"] for row in rows)
    kept_items = {code for code, _ in item_counts.most_common(ITEMS_KEPT)}
    rows = [row for row in rows if row["StockCode"] in kept_items]
    customers = sorted({row["CustomerID"] for row in rows})
    random.Random(SEED).shuffle(customers)
    kept_customers = set(customers[:CUSTOMERS_KEPT])
    rows = [row for row in rows if row["CustomerID"] in kept_customers]
    with gzip.open(TARGET, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row[column].strip() for column in COLUMNS})
    print(f"{len(rows)} lines, {len(kept_items)} items, {len(kept_customers)} customers -> {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
