"""A shop at a real size, as files a shop would hand over: its catalog and its event history.

Deterministic (seeded numpy) and streamed to disk in chunks, so a million items, a million users and twenty
million events take a few hundred MB of memory whatever the size:

- `items.csv`: the columns `manage.py import_items` takes (item_id, title, description, category, price, in_stock,
  brand, attributes as JSON). 24 departments of 10 categories each ("Dept 3 > Cat 3.7"); each department has its
  own brands; prices log-normal around each category's own level; 4 % out of stock.
- `events.csv`: the columns `manage.py import_events` takes (event_id, type, user_id, session_id, item_id,
  timestamp as unix seconds, value). Written day by day, in time order, over the 90 days that end a day before
  now (the day boundary of the generation date, so files of the same sizes made on the same day are equal).
  Users' activity and items' popularity follow power laws (Zipf-like weights over a random order); every user
  has a taste, one of 400 clusters of three categories and two favourite brands, and 80 % of their events are
  about items of those (the rest follow global popularity), so models have structure to learn. Types: views 80 %,
  clicks 10 %, add to cart 6 %, saves 1 %, purchases 3 % (with the item's price as value); a cart or a purchase
  is about an item the same user viewed earlier that day more often than not, as in a real funnel.

    .venv/bin/python benchmarks/scale_data.py --out .data/scale-files/1m \\
        --items 1000000 --users 1000000 --events 20000000
    .venv/bin/python benchmarks/scale_data.py --out .data/scale-files/10k --items 10000 --users 10000 --events 200000
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

DEPARTMENTS = 24
CATEGORIES_PER_DEPARTMENT = 10
BRANDS_PER_DEPARTMENT = 60
CLUSTERS = 400
DAYS = 90
TASTE_SHARE = 0.8  # of a user's events, about the categories and brands they favour
WORDS = ["linen", "cotton", "wool", "steel", "oak", "walnut", "travel", "classic", "compact", "deluxe", "light",
         "heavy", "slim", "wide", "round", "square", "soft", "hard", "mini", "maxi", "pro", "eco", "urban", "field",
         "studio", "coastal", "alpine", "retro", "modern", "basic"]  # fmt: skip
COLOURS = ["black", "white", "grey", "navy", "red", "green", "blue", "beige", "brown", "pink"]
SIZES = ["XS", "S", "M", "L", "XL"]
MATERIALS = ["cotton", "wool", "leather", "steel", "oak", "plastic", "glass", "linen"]
TYPES = np.array(["view", "click", "add_to_cart", "save", "purchase"])
TYPE_SHARES = np.array([0.80, 0.10, 0.06, 0.01, 0.03])


def _zipf_weights(rng: np.random.Generator, count: int, exponent: float) -> np.ndarray:
    """Weights 1/rank^exponent, the ranks in a random order (popularity not tied to the id)."""
    ranks = rng.permutation(count) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


class Catalog:
    """What the events need to know of the items: category, brand, price, and sampling by popularity."""

    def __init__(self, items: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        categories = DEPARTMENTS * CATEGORIES_PER_DEPARTMENT
        category_weights = _zipf_weights(rng, categories, 0.6)
        self.category = rng.choice(categories, size=items, p=category_weights / category_weights.sum())
        department = self.category // CATEGORIES_PER_DEPARTMENT
        # A brand belongs to a department; within it, a few brands have most items.
        brand_in_department = np.minimum(rng.zipf(1.6, size=items) - 1, BRANDS_PER_DEPARTMENT - 1)
        self.brand = department * BRANDS_PER_DEPARTMENT + brand_in_department
        category_price = np.exp(rng.normal(3.5, 1.0, size=categories))
        self.price = np.round(category_price[self.category] * np.exp(rng.normal(0, 0.5, size=items)), 2) + 0.99
        self.in_stock = rng.random(items) >= 0.04
        self.popularity = _zipf_weights(rng, items, 1.0)
        # Items ordered by category: a category is one contiguous range of the cumulative popularity.
        self.by_category = np.argsort(self.category, kind="stable")
        cumulative = np.cumsum(self.popularity[self.by_category])
        self.cumulative = cumulative
        bounds = np.searchsorted(self.category[self.by_category], np.arange(categories + 1))
        self.low = np.where(bounds[:-1] > 0, cumulative[np.maximum(bounds[:-1] - 1, 0)], 0.0)
        self.high = np.where(bounds[1:] > 0, cumulative[np.maximum(bounds[1:] - 1, 0)], 0.0)
        self.empty = bounds[1:] == bounds[:-1]
        # Items of each brand, for the users' favourite brands (by brand, cumulative popularity as above).
        self.by_brand = np.argsort(self.brand, kind="stable")
        self.brand_cumulative = np.cumsum(self.popularity[self.by_brand])
        brand_bounds = np.searchsorted(self.brand[self.by_brand], np.arange(DEPARTMENTS * BRANDS_PER_DEPARTMENT + 1))
        self.brand_low = np.where(
            brand_bounds[:-1] > 0, self.brand_cumulative[np.maximum(brand_bounds[:-1] - 1, 0)], 0.0
        )
        self.brand_high = np.where(
            brand_bounds[1:] > 0, self.brand_cumulative[np.maximum(brand_bounds[1:] - 1, 0)], 0.0
        )
        self.brand_empty = brand_bounds[1:] == brand_bounds[:-1]
        self.total = self.popularity.sum()

    def in_categories(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One item of each given category, by popularity within it (an empty category: any popular item)."""
        empty = self.empty[categories]
        low = np.where(empty, 0.0, self.low[categories])
        high = np.where(empty, self.cumulative[-1], self.high[categories])
        position = np.searchsorted(self.cumulative, low + rng.random(len(categories)) * (high - low), side="right")
        return self.by_category[np.minimum(position, len(self.cumulative) - 1)]

    def of_brands(self, rng: np.random.Generator, brands: np.ndarray) -> np.ndarray:
        empty = self.brand_empty[brands]
        low = np.where(empty, 0.0, self.brand_low[brands])
        high = np.where(empty, self.brand_cumulative[-1], self.brand_high[brands])
        position = np.searchsorted(self.brand_cumulative, low + rng.random(len(brands)) * (high - low), side="right")
        return self.by_brand[np.minimum(position, len(self.brand_cumulative) - 1)]

    def popular(self, rng: np.random.Generator, count: int) -> np.ndarray:
        position = np.searchsorted(self.cumulative, rng.random(count) * self.cumulative[-1], side="right")
        return self.by_category[np.minimum(position, len(self.cumulative) - 1)]


def item_id(index: int) -> str:
    return f"sku-{index:07d}"


def user_id(index: int) -> str:
    return f"user-{index:07d}"


def write_items(path: Path, catalog: Catalog, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    count = len(catalog.category)
    words = rng.integers(0, len(WORDS), size=(count, 3))
    colours = rng.integers(0, len(COLOURS), size=count)
    sizes = rng.integers(0, len(SIZES), size=count)
    materials = rng.integers(0, len(MATERIALS), size=count)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "title", "description", "category", "price", "in_stock", "brand", "attributes"])
        for index in range(count):
            category = int(catalog.category[index])
            department = category // CATEGORIES_PER_DEPARTMENT
            first, second, third = (WORDS[word] for word in words[index])
            brand = f"Brand {department}-{int(catalog.brand[index]) % BRANDS_PER_DEPARTMENT}"
            writer.writerow(
                [
                    item_id(index),
                    f"{first.title()} {second} {third} {index}",
                    f"A {first} {second} {third} by {brand}, {COLOURS[colours[index]]}.",
                    f"Dept {department} > Cat {department}.{category % CATEGORIES_PER_DEPARTMENT}",
                    f"{catalog.price[index]:.2f}",
                    "true" if catalog.in_stock[index] else "false",
                    brand,
                    orjson.dumps(
                        {
                            "colour": COLOURS[colours[index]],
                            "size": SIZES[sizes[index]],
                            "material": MATERIALS[materials[index]],
                        }
                    ).decode(),
                ]
            )


def write_events(
    path: Path, catalog: Catalog, *, users: int, events: int, seed: int, end: datetime, progress: bool
) -> None:
    rng = np.random.default_rng(seed + 2)
    activity = _zipf_weights(rng, users, 0.9)
    activity_cumulative = np.cumsum(activity)
    cluster_of_user = rng.integers(0, CLUSTERS, size=users)
    # A cluster: three categories of one or two departments, and two brands of its first one.
    first_department = rng.integers(0, DEPARTMENTS, size=CLUSTERS)
    other_department = np.where(
        rng.random(CLUSTERS) < 0.5, first_department, rng.integers(0, DEPARTMENTS, size=CLUSTERS)
    )
    cluster_categories = np.stack(
        [
            first_department * CATEGORIES_PER_DEPARTMENT + rng.integers(0, CATEGORIES_PER_DEPARTMENT, size=CLUSTERS),
            first_department * CATEGORIES_PER_DEPARTMENT + rng.integers(0, CATEGORIES_PER_DEPARTMENT, size=CLUSTERS),
            other_department * CATEGORIES_PER_DEPARTMENT + rng.integers(0, CATEGORIES_PER_DEPARTMENT, size=CLUSTERS),
        ],
        axis=1,
    )
    cluster_brands = first_department[:, None] * BRANDS_PER_DEPARTMENT + np.minimum(
        rng.zipf(1.6, size=(CLUSTERS, 2)) - 1, BRANDS_PER_DEPARTMENT - 1
    )
    type_cumulative = np.cumsum(TYPE_SHARES)
    start = end - timedelta(days=DAYS)
    per_day = np.full(DAYS, events // DAYS)
    per_day[: events % DAYS] += 1
    written = 0
    started = time.monotonic()
    with path.open("w") as stream:
        stream.write("event_id,type,user_id,session_id,item_id,timestamp,value\n")
        for day in range(DAYS):
            count = int(per_day[day])
            user = np.searchsorted(activity_cumulative, rng.random(count) * activity_cumulative[-1], side="right")
            user = np.minimum(user, users - 1)
            cluster = cluster_of_user[user]
            choice = rng.random(count)
            item = catalog.popular(rng, count)
            by_category = choice < TASTE_SHARE * 0.75
            item[by_category] = catalog.in_categories(
                rng,
                cluster_categories[cluster[by_category], rng.choice(3, size=int(by_category.sum()), p=[0.5, 0.3, 0.2])],
            )
            by_brand = (choice >= TASTE_SHARE * 0.75) & (choice < TASTE_SHARE)
            item[by_brand] = catalog.of_brands(
                rng, cluster_brands[cluster[by_brand], rng.integers(0, 2, int(by_brand.sum()))]
            )
            kind = np.searchsorted(type_cumulative, rng.random(count) * type_cumulative[-1], side="right")
            kind = np.minimum(kind, len(TYPES) - 1)
            seconds = np.sort(rng.random(count)) * 86400.0
            order = rng.permutation(count)  # which user and item go with which moment of the day
            user, item, kind = user[order], item[order], kind[order]
            # The funnel: a cart or a purchase is mostly about the item the same user viewed last (that day).
            funnel = (kind >= 2) & (rng.random(count) < 0.7)
            last_item: dict[int, int] = {}
            user_list, item_list, funnel_list = user.tolist(), item.tolist(), funnel.tolist()
            for position in range(count):
                someone = user_list[position]
                if funnel_list[position] and someone in last_item:
                    item_list[position] = last_item[someone]
                else:
                    last_item[someone] = item_list[position]
            item = np.array(item_list)
            day_start = (start + timedelta(days=day)).timestamp()
            timestamps = day_start + seconds
            kinds = TYPES[kind].tolist()
            prices = catalog.price[item].tolist()
            lines = []
            session_day = day * 4
            for position, (someone, thing, name, moment) in enumerate(
                zip(user_list, item_list, kinds, timestamps.tolist(), strict=True)
            ):
                session = session_day + int(seconds[position] // 21600)  # four sessions a day at most
                value = f"{prices[position]:.2f}" if name == "purchase" else ""
                lines.append(
                    f"e{written + position:09d},{name},user-{someone:07d},s{someone}-{session},"
                    f"sku-{thing:07d},{moment:.3f},{value}\n"
                )
            stream.write("".join(lines))
            written += count
            if progress:
                elapsed = time.monotonic() - started
                left = elapsed / written * (events - written)
                print(
                    f"\revents: {written:,}/{events:,} ({written / elapsed:,.0f}/s, about {left:.0f} s left)   ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for items.csv and events.csv.")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # A day before now, at midnight UTC: the same files all day long.
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    started = time.monotonic()
    catalog = Catalog(args.items, args.seed)
    write_items(args.out / "items.csv", catalog, args.seed)
    print(f"items.csv: {args.items:,} items in {time.monotonic() - started:.1f} s", file=sys.stderr)
    write_events(
        args.out / "events.csv",
        catalog,
        users=args.users,
        events=args.events,
        seed=args.seed,
        end=end,
        progress=not args.no_progress,
    )
    print(f"events.csv: {args.events:,} events, done in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
