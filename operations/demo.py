"""Demo data: a sample of the UCI Online Retail data set (CC BY 4.0, see demo_data/ATTRIBUTION.md).

Items get a category and tag entities derived from their descriptions; every invoice line becomes a purchase
event that goes through the same validation and deduplication as the API.
"""

from __future__ import annotations

import csv
import gzip
import statistics
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from graph_app.interface import (
    ITEM_BATCH_MAX,
    EntityRef,
    ItemInput,
    Progress,
    catalog_online_rebuild,
    content_projection,
    items_upsert_many,
    shoppers_create,
)
from graph_app.state.interface import event_log_partitions_create
from signals_app.interface import EVENT_BATCH_MAX, events_drain_all, events_ingest

DEMO_SAMPLE = Path(__file__).resolve().parent / "demo_data" / "online_retail_sample.csv.gz"
# Every 29th item (by a stable hash) is out of stock, so the demo shows stock filtering.
OUT_OF_STOCK_MODULUS = 29

CATEGORY_KEYWORDS = [
    ("christmas", {"CHRISTMAS", "XMAS", "ADVENT", "SANTA", "REINDEER", "SNOWFLAKE"}),
    ("lighting", {"T-LIGHT", "CANDLE", "LANTERN", "LIGHT", "LIGHTS", "NIGHTLIGHT", "CANDLES"}),
    ("bags", {"BAG", "BAGS", "CHARLOTTE", "SHOPPER", "JUMBO"}),
    (
        "kitchen",
        {
            "MUG",
            "CUP",
            "CUPS",
            "TEA",
            "CAKE",
            "LUNCH",
            "BOWL",
            "PLATE",
            "PLATES",
            "JAR",
            "BOTTLE",
            "NAPKINS",
            "TIN",
            "TINS",
            "SPOON",
            "BAKING",
            "PANTRY",
            "JAM",
            "CUTLERY",
        },
    ),
    (
        "stationery",
        {"CARD", "CARDS", "WRAP", "PAPER", "NOTEBOOK", "PENCIL", "PENCILS", "STICKER", "STICKERS", "ENVELOPE", "CHALK"},
    ),
    ("party", {"PARTY", "BUNTING", "BALLOON", "BALLOONS", "CANDLES", "BIRTHDAY"}),
    ("garden", {"GARDEN", "PLANT", "WATERING", "BIRD", "FLOWER"}),
    ("toys", {"TOY", "DOLLY", "GAME", "PLAYHOUSE", "SPACEBOY", "SKITTLES", "DOMINOES", "JIGSAW", "KIT"}),
    (
        "home decor",
        {
            "SIGN",
            "FRAME",
            "CLOCK",
            "DOORMAT",
            "CUSHION",
            "HANGING",
            "DECORATION",
            "HOOK",
            "MIRROR",
            "DRAWER",
            "HOLDER",
            "WICKER",
            "VASE",
            "HEART",
        },
    ),
]
THEME_TAGS = {
    "RETROSPOT",
    "VINTAGE",
    "POLKADOT",
    "SPACEBOY",
    "REGENCY",
    "PAISLEY",
    "WOODLAND",
    "FAIRY",
    "ROSE",
    "LOVE",
    "HEART",
    "CHRISTMAS",
    "ANTIQUE",
    "FELTCRAFT",
    "ENGLISH",
    "FRENCH",
    "GINGHAM",
    "SKULL",
    "OWL",
    "BIRD",
}
COLOUR_TAGS = {
    "RED",
    "PINK",
    "WHITE",
    "BLUE",
    "GREEN",
    "IVORY",
    "CREAM",
    "BLACK",
    "SILVER",
    "GOLD",
    "PURPLE",
    "ORANGE",
    "YELLOW",
}


@dataclass(frozen=True)
class DemoLoadReport:
    items: int
    users: int
    events_accepted: int
    events_duplicate: int


def _category(words: list[str]) -> str:
    for category, keywords in CATEGORY_KEYWORDS:
        if keywords.intersection(words):
            return category
    return "gifts"


def _item_input(code: str, description: str, prices: list[float]) -> ItemInput:
    words = description.upper().replace(",", " ").split()
    category = _category(words)
    entities = [EntityRef(kind="category", external_id=category, name=category.title())]
    entities += [
        EntityRef(kind="theme", external_id=word.lower(), name=word.title())
        for word in sorted(THEME_TAGS.intersection(words))
    ]
    entities += [
        EntityRef(kind="colour", external_id=word.lower(), name=word.title())
        for word in sorted(COLOUR_TAGS.intersection(words))
    ]
    return ItemInput(
        external_id=code,
        title=description.title(),
        description=f"{description.title()}. From the UK online gift retailer sample.",
        category=category,
        price=Decimal(str(round(statistics.median(prices), 2))),
        in_stock=zlib.crc32(code.encode()) % OUT_OF_STOCK_MODULUS != 0,
        attributes={"stock_code": code, "source": "uci-online-retail"},
        entities=tuple(entities),
    )


def demo_data_load(*, sample: Path = DEMO_SAMPLE, now: datetime | None = None) -> DemoLoadReport:
    with gzip.open(sample, "rt", encoding="utf-8", newline="") as handle:
        # Stock codes that do not start with a digit are fees, not products (POST is postage, M manual, ...).
        rows = [row for row in csv.DictReader(handle) if row["StockCode"][:1].isdigit()]
    descriptions: dict[str, str] = {}
    prices: dict[str, list[float]] = defaultdict(list)
    countries: dict[str, str] = {}
    for row in rows:
        descriptions.setdefault(row["StockCode"], row["Description"])
        prices[row["StockCode"]].append(float(row["UnitPrice"]))
        countries[row["CustomerID"]] = row["Country"]

    projection = content_projection()
    inputs = [_item_input(code, descriptions[code], prices[code]) for code in sorted(descriptions)]
    progress = Progress("demo: items stored", total=len(inputs))
    for start in range(0, len(inputs), ITEM_BATCH_MAX):
        batch = inputs[start : start + ITEM_BATCH_MAX]
        items_upsert_many(rows=batch, projection=projection)
        progress.advance(len(batch))
    progress.finish()
    # The ingest script reads item entities from Redis: publish the catalog before replaying the history.
    catalog_online_rebuild()
    shoppers_create(
        traits_by_user={_user_id(customer): {"country": country} for customer, country in sorted(countries.items())}
    )

    # Shift the 2010-2011 invoice dates so that the newest falls an hour before now.
    dates = [datetime.fromisoformat(row["InvoiceDate"]).replace(tzinfo=UTC) for row in rows]
    shift = ((now or datetime.now(UTC)) - timedelta(hours=1)) - max(dates)
    events = []
    line_numbers: dict[tuple[str, str], int] = defaultdict(int)
    for position, (row, date) in enumerate(zip(rows, dates, strict=True)):
        line_key = (row["InvoiceNo"], row["StockCode"])
        line_numbers[line_key] += 1
        events.append(
            {
                "event_id": f"retail-{row['InvoiceNo']}-{row['StockCode']}-{line_numbers[line_key]}",
                "type": "purchase",
                "user_id": _user_id(row["CustomerID"]),
                "item_id": row["StockCode"],
                # Invoice lines share a minute: a microsecond per line keeps the file's order in event time too.
                "timestamp": (date + shift + timedelta(microseconds=position)).isoformat(),
                "value": round(float(row["UnitPrice"]) * float(row["Quantity"]), 2),
                "context": {"invoice": row["InvoiceNo"], "quantity": int(float(row["Quantity"]))},
            }
        )
    # History gets its monthly partitions of the log first (instead of piling up in the DEFAULT one).
    event_log_partitions_create(months={(date + shift).date() for date in dates})
    accepted = duplicates = 0
    progress = Progress("demo: purchases ingested", total=len(events))
    for start in range(0, len(events), EVENT_BATCH_MAX):
        batch = events[start : start + EVENT_BATCH_MAX]
        report = events_ingest(raw_events=batch, backfill=True)
        accepted += report.accepted
        duplicates += report.duplicates
        progress.advance(len(batch))
    progress.finish()
    # Write the streams to the durable log now, so that training can start from it right away.
    progress = Progress("demo: purchases written to the log", total=accepted)
    while drained := events_drain_all().read:
        progress.advance(drained)
    progress.finish()
    return DemoLoadReport(
        items=len(descriptions), users=len(countries), events_accepted=accepted, events_duplicate=duplicates
    )


def _user_id(customer_id: str) -> str:
    return f"customer-{int(float(customer_id))}"
