"""The temporal replay: a real shop's history (UCI Online Retail) loaded through the storefront API, trained by the
scheduled training chain, and served back through the API, scored against what each customer bought next.

- Clean purchases: customer present, quantity > 0, unit price > 0 (the data README's 397,884 rows).
- Split by time: purchases before the cut-off are history. Test customers have history and bought, after the
  cut-off, at least one item they had not bought before it; those items are their relevant ones (items first sold
  after the cut-off included: no row can recommend them, which keeps the rows comparable).
- The catalog is the items of the history (what the shop had sold by the cut-off): StockCode as item id, the
  item's most frequent description as title, its last word as category (the product type in this data:
  "... T-LIGHT HOLDER", "... CANDLE"), its latest unit price, in stock.
- The history is posted as it happened, one `purchase` event per invoice line, shifted so that its last purchase
  lands one day before now, as a live shop loading its history would; the event streams are then drained into
  the log and the scheduled training chain runs.
- `served`: `GET /api/v1/recommendations` (placement `home`, k 10). Offline baselines on the same split, never
  through the platform: `popularity` (items by distinct buyers of the history) and `item_knn` (item-based cosine
  kNN on the binary customer x item history, 100 neighbours an item); both remove the customer's own items.
- Context: post-cut invoices with at least two distinct catalog items; one of them is the context
  (`placement=product_page&item_id=...` for a fresh anonymous user), a hit is another item of the same invoice
  in the 10.

Everything is sorted before it is sampled, and each sample has its own random stream of the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import sparse

from operations.evaluation.metrics import TOP_K, top_k_metrics
from operations.evaluation.serving import serving_without_deadlines

Progress = Callable[[str], None]

RETAIL_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
DEFAULT_CUTOFF = date(2011, 9, 1)
DEFAULT_CUSTOMERS = 300
DEFAULT_BASKETS = 300
DEFAULT_SEED = 42
KNN_NEIGHBOURS = 100
STABILITY_SAMPLE = 50
HISTORY_ENDS_BEFORE_NOW = timedelta(days=1)
EVENTS_PER_REQUEST = 500  # the events API's maximum (signals_app.services.EVENT_BATCH_MAX)
ITEMS_PER_REQUEST = 1000  # the batch upsert's maximum (graph_app.services.ITEM_BATCH_MAX)
DRAIN_TIME_BUDGET_SECONDS = 30.0
HOME_PLACEMENT = "home"
CONTEXT_PLACEMENT = "product_page"
EVENTS_PATH = "/api/v1/events"
ITEMS_BATCH_PATH = "/api/v1/items/batch"
RECOMMENDATIONS_PATH = "/api/v1/recommendations"
# Independent random streams of one seed: changing the number of customers does not change the baskets drawn.
_CUSTOMER_STREAM, _BASKET_STREAM, _STABILITY_STREAM = 1, 2, 3


class ReplayError(Exception):
    """The data cannot be read, or the platform refused part of it."""


@dataclass(frozen=True, slots=True)
class Purchase:
    invoice: str
    line: int  # the row's position within its invoice in the file, from 1
    item_id: str
    description: str
    quantity: int
    at: datetime
    price: float
    customer: str


@dataclass(frozen=True)
class Basket:
    invoice: str
    customer: str
    context_item: str
    others: frozenset[str]


@dataclass(frozen=True)
class ReplaySplit:
    cutoff: datetime
    history: list[Purchase]
    future: list[Purchase]
    history_items: dict[str, frozenset[str]]  # every customer with history -> the items bought before the cut-off
    relevant: dict[str, frozenset[str]]  # test customer -> the new items bought after the cut-off
    eligible_customers: int
    baskets: list[Basket]
    eligible_baskets: int

    @property
    def test_customers(self) -> list[str]:
        return sorted(self.relevant)


@dataclass(frozen=True)
class ReplayConfig:
    cutoff: date = DEFAULT_CUTOFF
    customers: int = DEFAULT_CUSTOMERS  # 0: all
    baskets: int = DEFAULT_BASKETS  # 0: all
    seed: int = DEFAULT_SEED


# --- reading ---------------------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _customer_id(raw: str) -> str:
    """`17850.0` -> `17850` (the file writes the ids as floats)."""
    text = raw.strip()
    return text[:-2] if text.endswith(".0") else text


def purchases_read(*, path: Path) -> list[Purchase]:
    """The clean purchases of a file in the Online Retail layout (CSV, gzipped or not), in time order."""
    if not path.is_file():
        raise ReplayError(f"{path}: no such file (expected the UCI Online Retail CSV, e.g. online-retail.csv.gz)")
    purchases: list[Purchase] = []
    lines: Counter[str] = Counter()
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            missing = set(RETAIL_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ReplayError(f"{path}: missing columns {', '.join(sorted(missing))}")
            for row in reader:
                invoice = row["InvoiceNo"].strip()
                lines[invoice] += 1
                customer = _customer_id(row["CustomerID"] or "")
                quantity = int(row["Quantity"])
                price = float(row["UnitPrice"])
                if not customer or quantity <= 0 or price <= 0:
                    continue
                purchases.append(
                    Purchase(
                        invoice=invoice,
                        line=lines[invoice],
                        item_id=row["StockCode"].strip(),
                        description=(row["Description"] or "").strip(),
                        quantity=quantity,
                        at=datetime.fromisoformat(row["InvoiceDate"]).replace(tzinfo=UTC),
                        price=price,
                        customer=customer,
                    )
                )
    except (OSError, ValueError, KeyError, csv.Error) as error:
        raise ReplayError(f"{path}: cannot read it as the Online Retail CSV: {error}") from error
    purchases.sort(key=lambda purchase: (purchase.at, purchase.invoice, purchase.line))
    return purchases


def item_category(description: str) -> str:
    """The description's last word, the product type in this data ("WHITE HANGING HEART T-LIGHT HOLDER" -> holder)."""
    words = description.replace(",", " ").split()
    return words[-1].lower() if words else "other"


# --- the split -------------------------------------------------------------------------------------------------


def _sample(population: Sequence[Any], size: int, *, seed: int, stream: int) -> list[Any]:
    """`size` members of a sorted population (all when size is 0 or larger), in population order."""
    if size <= 0 or size >= len(population):
        return list(population)
    chosen = np.random.default_rng([seed, stream]).choice(len(population), size=size, replace=False)
    return [population[index] for index in sorted(chosen.tolist())]


def _baskets(future: list[Purchase], catalog: set[str], *, size: int, seed: int) -> tuple[list[Basket], int]:
    invoices: dict[str, tuple[str, set[str]]] = {}
    for purchase in future:
        if purchase.item_id in catalog:
            invoices.setdefault(purchase.invoice, (purchase.customer, set()))[1].add(purchase.item_id)
    eligible = sorted(invoice for invoice, (_, items) in invoices.items() if len(items) >= 2)
    chosen = _sample(eligible, size, seed=seed, stream=_BASKET_STREAM)
    rng = np.random.default_rng([seed, _BASKET_STREAM, 1])
    baskets = []
    for invoice in chosen:
        customer, items = invoices[invoice]
        ordered = sorted(items)
        context = ordered[int(rng.integers(len(ordered)))]
        baskets.append(Basket(invoice, customer, context, frozenset(ordered) - {context}))
    return baskets, len(eligible)


def replay_split(*, purchases: list[Purchase], config: ReplayConfig) -> ReplaySplit:
    cutoff = datetime.combine(config.cutoff, datetime.min.time(), tzinfo=UTC)
    history = [purchase for purchase in purchases if purchase.at < cutoff]
    future = [purchase for purchase in purchases if purchase.at >= cutoff]
    owned: dict[str, set[str]] = defaultdict(set)
    for purchase in history:
        owned[purchase.customer].add(purchase.item_id)
    bought_after: dict[str, set[str]] = defaultdict(set)
    for purchase in future:
        if purchase.customer in owned:
            bought_after[purchase.customer].add(purchase.item_id)
    new_items = {customer: items - owned[customer] for customer, items in bought_after.items()}
    eligible = sorted(customer for customer, items in new_items.items() if items)
    chosen = _sample(eligible, config.customers, seed=config.seed, stream=_CUSTOMER_STREAM)
    catalog = {purchase.item_id for purchase in history}
    baskets, eligible_baskets = _baskets(future, catalog, size=config.baskets, seed=config.seed)
    return ReplaySplit(
        cutoff=cutoff,
        history=history,
        future=future,
        history_items={customer: frozenset(items) for customer, items in owned.items()},
        relevant={customer: frozenset(new_items[customer]) for customer in chosen},
        eligible_customers=len(eligible),
        baskets=baskets,
        eligible_baskets=eligible_baskets,
    )


# --- what the shop sends ---------------------------------------------------------------------------------------


def catalog_rows(*, history: list[Purchase]) -> list[dict[str, Any]]:
    """One item per StockCode of the history: its most frequent description (ties: the first in sorted order) and
    its latest price."""
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, float] = {}
    for purchase in history:  # in time order: the last price written is the latest
        if purchase.description:
            descriptions[purchase.item_id][purchase.description] += 1
        prices[purchase.item_id] = purchase.price
    rows = []
    for item_id in sorted(prices):
        counts = descriptions.get(item_id, Counter())
        title = min(counts, key=lambda text: (-counts[text], text)) if counts else item_id
        rows.append(
            {
                "item_id": item_id,
                "title": title[:500],
                "category": item_category(title),
                "price": f"{prices[item_id]:.2f}",  # the API keeps two decimals
                "in_stock": True,
            }
        )
    return rows


def history_shift(*, history: list[Purchase], now: datetime) -> timedelta:
    """How far the history moves so that its last purchase is HISTORY_ENDS_BEFORE_NOW before now (whole seconds)."""
    latest = max(purchase.at for purchase in history)
    return timedelta(seconds=int((now - HISTORY_ENDS_BEFORE_NOW - latest).total_seconds()))


def event_rows(*, history: list[Purchase], shift: timedelta) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{purchase.invoice}-{purchase.line}",
            "type": "purchase",
            "user_id": purchase.customer,
            "item_id": purchase.item_id,
            "timestamp": (purchase.at + shift).isoformat(),
            "value": round(purchase.quantity * purchase.price, 2),
        }
        for purchase in history
    ]


# --- through the API -------------------------------------------------------------------------------------------


def storefront_client() -> Any:
    """Django's test client (in process: real URL routing, authentication, serializers and views) with a real key."""
    from django.test import Client

    from personalization.services import api_key_create

    raw_key = api_key_create(name="replay evaluation").raw_key
    return Client(headers={"Authorization": f"Bearer {raw_key}"})


def _post_json(client: Any, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    response = client.post(path, data=orjson.dumps(body), content_type="application/json")
    if response.status_code not in (200, 201, 202):
        raise ReplayError(f"POST {path}: HTTP {response.status_code}: {response.content[:500]!r}")
    return orjson.loads(response.content)


def catalog_load(*, client: Any, rows: list[dict[str, Any]]) -> dict[str, int]:
    totals = Counter({"created": 0, "updated": 0})
    for start in range(0, len(rows), ITEMS_PER_REQUEST):
        answer = _post_json(client, ITEMS_BATCH_PATH, {"items": rows[start : start + ITEMS_PER_REQUEST]})
        if answer["errors"]:
            raise ReplayError(f"the catalog was refused in part: {answer['errors'][:5]}")
        totals.update(created=answer["created"], updated=answer["updated"])
    return dict(totals)


def history_load(*, client: Any, events: list[dict[str, Any]], progress: Progress) -> dict[str, int]:
    totals = Counter({"accepted": 0, "duplicates": 0, "rejected": 0})
    requests = 0
    for start in range(0, len(events), EVENTS_PER_REQUEST):
        answer = _post_json(client, EVENTS_PATH, {"events": events[start : start + EVENTS_PER_REQUEST]})
        if answer["rejected"]:
            raise ReplayError(f"events refused: {answer['errors'][:5]}")
        totals.update(accepted=answer["accepted"], duplicates=answer["duplicates"])
        requests += 1
        if requests % 100 == 0:
            progress(f"events: {start + EVENTS_PER_REQUEST:,} of {len(events):,} posted")
    return {**totals, "requests": requests}


def events_drain_until_empty() -> dict[str, int]:
    """Write the event streams to the log, as the `events` workers do, until nothing is left to read."""
    from signals_app.interface import DrainReport, events_drain_all

    total = DrainReport()
    while True:
        report = events_drain_all(time_budget=DRAIN_TIME_BUDGET_SECONDS)
        total.add(report)
        if report.skipped:
            raise ReplayError(f"the drain stopped: {report.skipped}")
        if not report.read and not report.reclaimed:
            break
    return {"read": total.read, "stored": total.stored, "duplicates": total.duplicates,
            "dead_lettered": total.dead_lettered}  # fmt: skip


@dataclass(frozen=True)
class Served:
    items: list[str]
    path: str
    degraded: tuple[str, ...] = ()


def recommendations_get(*, client: Any, user_id: str, placement: str, k: int = TOP_K, item_id: str = "") -> Served:
    query = {"user_id": user_id, "placement": placement, "k": k}
    if item_id:
        query["item_id"] = item_id
    response = client.get(RECOMMENDATIONS_PATH, query)
    if response.status_code != 200:
        return Served([], f"http_{response.status_code}")
    slate = orjson.loads(response.content)
    return Served([row["item_id"] for row in slate["items"]], slate["path"], tuple(slate.get("degraded") or ()))


# --- offline baselines -----------------------------------------------------------------------------------------


@dataclass
class Baselines:
    """Popularity and item-based cosine kNN fitted on the history (offline, never through the platform)."""

    items: list[str]
    index: dict[str, int]
    popular: list[str]  # by distinct buyers, then item id
    neighbours: sparse.csr_matrix  # item x item: cosine of an item to each of its KNN_NEIGHBOURS nearest

    @classmethod
    def fit(cls, *, history_items: Mapping[str, Iterable[str]], neighbours: int = KNN_NEIGHBOURS) -> Baselines:
        items = sorted({item for owned in history_items.values() for item in owned})
        index = {item: position for position, item in enumerate(items)}
        rows, columns = [], []
        for row, customer in enumerate(sorted(history_items)):
            for item in sorted(history_items[customer]):
                rows.append(row)
                columns.append(index[item])
        matrix = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(history_items), len(items))
        )
        buyers = np.asarray(matrix.sum(axis=0)).ravel()
        popular = [items[position] for position in np.lexsort((np.arange(len(items)), -buyers))]
        norms = np.sqrt(np.maximum(buyers, 1.0)).astype(np.float32)
        similarity = (matrix.T @ matrix).toarray().astype(np.float32) / np.outer(norms, norms)
        np.fill_diagonal(similarity, 0.0)
        keep = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
        values = np.take_along_axis(similarity, keep, axis=1)
        row_ids = np.repeat(np.arange(len(items)), keep.shape[1])
        nearest = sparse.csr_matrix((values.ravel(), (row_ids, keep.ravel())), shape=similarity.shape)
        nearest.eliminate_zeros()
        return cls(items, index, popular, nearest)

    def popularity(self, *, exclude: Iterable[str] = (), k: int = TOP_K) -> list[str]:
        excluded = set(exclude)
        chosen: list[str] = []
        for item in self.popular:
            if item not in excluded:
                chosen.append(item)
                if len(chosen) == k:
                    break
        return chosen

    def _top(self, scores: np.ndarray, exclude: Iterable[str], k: int) -> list[str]:
        for item in exclude:
            if item in self.index:
                scores[self.index[item]] = 0.0
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.items[position] for position in order if scores[position] > 0]

    def item_knn(self, *, owned: Iterable[str], k: int = TOP_K) -> list[str]:
        """Sum of the similarities to the customer's items, over each item's neighbours; own items removed."""
        owned = [item for item in owned if item in self.index]
        profile = np.zeros(len(self.items), dtype=np.float32)
        profile[[self.index[item] for item in owned]] = 1.0
        scores = np.asarray(self.neighbours.T @ profile).ravel()
        return self._top(scores, owned, k)

    def item_knn_context(self, *, item: str, k: int = TOP_K) -> list[str]:
        if item not in self.index:
            return []
        scores = self.neighbours.getrow(self.index[item]).toarray().ravel()
        return self._top(scores, (item,), k)


# --- metrics ---------------------------------------------------------------------------------------------------


def customer_metrics(
    *, recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, Iterable[str]], k: int = TOP_K
) -> dict[str, float]:
    """HR@k (share of customers with at least one relevant item in the k) and nDCG@k (binary relevance, ideal over
    min(relevant, k)), over the customers of `relevant`."""
    truth = {customer: set(items) for customer, items in relevant.items()}
    hits = sum(1 for customer, items in truth.items() if items & set(recommended.get(customer, ())[:k]))
    ndcg = top_k_metrics(recommended=recommended, relevant=truth, k=k)[f"nDCG@{k}"]
    return {f"HR@{k}": round(hits / max(len(truth), 1), 4), f"nDCG@{k}": round(ndcg, 4)}


def context_hit_rate(*, recommended: Sequence[Sequence[str]], baskets: Sequence[Basket], k: int = TOP_K) -> float:
    hits = sum(1 for items, basket in zip(recommended, baskets, strict=True) if basket.others & set(items[:k]))
    return round(hits / max(len(baskets), 1), 4)


def list_overlap(first: Sequence[str], second: Sequence[str]) -> float:
    """Shared items over the longer list's length (1.0 for two empty lists)."""
    longest = max(len(first), len(second))
    return len(set(first) & set(second)) / longest if longest else 1.0


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class _Clock:
    seconds: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self._started, 2)
        self._started = now


def _serve_customers(
    *, client: Any, split: ReplaySplit, seed: int, progress: Progress
) -> tuple[dict[str, list[str]], Counter[str], Counter[str], dict[str, float]]:
    customers = split.test_customers
    twice = set(_sample(customers, STABILITY_SAMPLE, seed=seed, stream=_STABILITY_STREAM))
    served: dict[str, list[str]] = {}
    paths: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    overlaps, identical = [], 0
    for number, customer in enumerate(customers, start=1):
        first = recommendations_get(client=client, user_id=customer, placement=HOME_PLACEMENT)
        served[customer] = first.items
        paths[first.path] += 1
        degraded.update(first.degraded)
        if customer in twice:
            second = recommendations_get(client=client, user_id=customer, placement=HOME_PLACEMENT)
            overlaps.append(list_overlap(first.items, second.items))
            identical += first.items == second.items
        if number % 100 == 0:
            progress(f"served: {number} of {len(customers)} customers")
    stability = {
        "customers": len(overlaps),
        "mean_overlap": round(float(np.mean(overlaps)), 4) if overlaps else None,
        "identical_share": round(identical / len(overlaps), 4) if overlaps else None,
    }
    return served, paths, degraded, stability


def _own_item_share(served: Mapping[str, Sequence[str]], split: ReplaySplit) -> float:
    """Mean share of a served list that the customer had already bought before the cut-off (never relevant here)."""
    shares = [
        len(set(items) & split.history_items.get(customer, frozenset())) / len(items)
        for customer, items in served.items()
        if items
    ]
    return round(float(np.mean(shares)), 4) if shares else 0.0


def replay_run(*, purchases: list[Purchase], config: ReplayConfig, progress: Progress) -> dict[str, Any]:
    """The whole protocol; call it inside `scratch_stores` (it loads, trains and serves for real)."""
    from scoring_app.interface import training_chain_run
    from surface_app.interface import surface_defaults_install

    clock = _Clock()
    split = replay_split(purchases=purchases, config=config)
    if not split.history or not split.relevant:
        raise ReplayError(f"no history before {config.cutoff} or no customer who bought new items after it")
    progress(
        f"split at {config.cutoff}: {len(split.history):,} history rows, {len(split.future):,} after; "
        f"{len(split.relevant)} test customers of {split.eligible_customers}, {len(split.baskets)} baskets"
    )
    clock.lap("split")

    surface_defaults_install()  # the placements (home, product_page, cart) a fresh platform gets on `make run`
    client = storefront_client()
    catalog = catalog_rows(history=split.history)
    loaded_items = catalog_load(client=client, rows=catalog)
    progress(f"catalog: {len(catalog):,} items through {ITEMS_BATCH_PATH}")
    clock.lap("catalog")

    shift = history_shift(history=split.history, now=datetime.now(UTC))
    events = event_rows(history=split.history, shift=shift)
    ingest = history_load(client=client, events=events, progress=progress)
    clock.lap("events")
    progress(f"events: {ingest['accepted']:,} accepted; draining the streams into the log")
    drained = events_drain_until_empty()
    progress(f"drain: {drained['stored']:,} stored in the log")
    clock.lap("drain")
    training = training_chain_run(progress=progress)
    clock.lap("training")

    with serving_without_deadlines():
        served, home_paths, home_degraded, stability = _serve_customers(
            client=client, split=split, seed=config.seed, progress=progress
        )
        clock.lap("serve")
        context_served, context_paths, context_degraded = [], Counter[str](), Counter[str]()
        for number, basket in enumerate(split.baskets, start=1):
            answer = recommendations_get(
                client=client, user_id=f"replay-visitor-{number}", placement=CONTEXT_PLACEMENT,
                item_id=basket.context_item,
            )  # fmt: skip
            context_served.append(answer.items)
            context_paths[answer.path] += 1
            context_degraded.update(answer.degraded)
        clock.lap("context")

    baselines = Baselines.fit(history_items=split.history_items)
    customers = split.test_customers
    popularity = {c: baselines.popularity(exclude=split.history_items[c]) for c in customers}
    item_knn = {c: baselines.item_knn(owned=split.history_items[c]) for c in customers}
    results = {
        "served": {
            **customer_metrics(recommended=served, relevant=split.relevant),
            "own_items_share": _own_item_share(served, split),
            "empty_lists": sum(1 for items in served.values() if not items),
        },
        "popularity": customer_metrics(recommended=popularity, relevant=split.relevant),
        "item_knn": customer_metrics(recommended=item_knn, relevant=split.relevant),
    }
    context = {
        "served": {
            f"HR@{TOP_K}": context_hit_rate(recommended=context_served, baskets=split.baskets),
            "empty_lists": sum(1 for items in context_served if not items),
        },
        "popularity": {
            f"HR@{TOP_K}": context_hit_rate(
                recommended=[baselines.popularity(exclude=(b.context_item,)) for b in split.baskets],
                baskets=split.baskets,
            )
        },
        "item_knn": {
            f"HR@{TOP_K}": context_hit_rate(
                recommended=[baselines.item_knn_context(item=b.context_item) for b in split.baskets],
                baskets=split.baskets,
            )
        },
    }
    clock.lap("baselines")
    return {
        "config": {
            "cutoff": config.cutoff.isoformat(),
            "seed": config.seed,
            "customers_requested": config.customers,
            "baskets_requested": config.baskets,
            "purchases": len(purchases),
            "history_rows": len(split.history),
            "future_rows": len(split.future),
            "customers_with_history": len(split.history_items),
            "eligible_customers": split.eligible_customers,
            "test_customers": len(customers),
            "relevant_items_mean": round(float(np.mean([len(v) for v in split.relevant.values()])), 2),
            "eligible_baskets": split.eligible_baskets,
            "baskets": len(split.baskets),
            "catalog_items": len(catalog),
            "category_rule": "the description's last word, lower case",
            "history_shift_days": round(shift.total_seconds() / 86400, 2),
            "k": TOP_K,
        },
        "rows": {
            "served": "the platform: GET /api/v1/recommendations after loading and training through it (headline)",
            "popularity": "offline baseline: items by distinct buyers before the cut-off, own items removed",
            "item_knn": f"offline baseline: item-based cosine kNN, {KNN_NEIGHBOURS} neighbours, own items removed",
        },
        "results": results,
        "context": context,
        "paths": {
            HOME_PLACEMENT: dict(sorted(home_paths.items())),
            CONTEXT_PLACEMENT: dict(sorted(context_paths.items())),
        },
        "degraded": {
            HOME_PLACEMENT: dict(sorted(home_degraded.items())),
            CONTEXT_PLACEMENT: dict(sorted(context_degraded.items())),
        },
        "stability": stability,
        "ingest": {"catalog": loaded_items, "events": ingest, "drain": drained},
        "training": [{"task": run.task, "seconds": run.seconds, "result": run.result} for run in training],
        "seconds_by_phase": {
            **clock.seconds,
            "training_by_task": {run.task: run.seconds for run in training},
        },
    }
