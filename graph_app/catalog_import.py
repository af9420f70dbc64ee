"""Catalog feed import (control plane): a shop's items from CSV, JSON lines or a Google Merchant Center TSV feed.

A full feed upserts whole items through `items_upsert_many`; a stock feed, whose rows give only the id with price
and/or stock, changes just those fields through `items_patch_many` and reports the ids the catalog does not have.
Rows are validated by the rules of the item API: `graph_app.item_rows` reads the plainly valid ones (as the batch
endpoints do), and any other row goes through the API's serializer, so that a rejected row gets its messages.

Each batch first reads what the catalog holds for its ids, and rows that repeat it are not written (nor, when
they repeat it plainly, validated again): a second import of the same file changes nothing, and a daily feed
costs what it changes (a written item is most of its cost in PostgreSQL, its vector index first). A row written by
someone else between that read and the batch's write may be left as they wrote it. Reading, batches, rejects and
the resumable checkpoint are `personalization.file_import`'s; batches run in ITEM_IMPORT_WORKERS processes, and one
that writes an item (or renames an entity) of a batch still running waits for it, so the file's order decides.

Google Merchant Center columns: id, title, description, product_type (its first " > " segment is the category;
else google_product_category's), brand (an entity of kind "brand"), price ("12.99 USD": the currency goes into
the attributes), availability (in_stock, out_of_stock, preorder, backorder: all but out_of_stock can be ordered,
so count as in stock), link and image_link (attributes). Other columns of the specification are ignored.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson
from django.db import connection
from rest_framework import serializers

from graph_app.apis import ItemBatchRowSerializer
from graph_app.catalog_bulk import ItemPatch, items_patch_many, items_upsert_many, server_bound_cursor
from graph_app.item_rows import item_row_read, patch_row_read
from graph_app.item_vector_index import item_vector_index_build, item_vector_index_drop
from graph_app.services import ItemInput, content_projection
from personalization import file_import
from personalization.errors import flatten_errors
from personalization.file_import import ImportFileError, Problems, Rejected, SourceRow, checkpoint_path_for
from personalization.process_caches import process_cache
from personalization.validation import EXTERNAL_ID_MAX_LENGTH, StrictBooleanField

ITEM_IMPORT_BATCH_SIZE = 2000
# Batches run in this many worker processes (each with its own database connection) while the command reads the
# file: a batch's Python work and PostgreSQL's run side by side, on two cores or more.
ITEM_IMPORT_WORKERS = 2
# A stock feed's rows are small and mostly unchanged: larger batches spread each batch's round trips wider.
STOCK_IMPORT_BATCH_SIZE = 5000
FULL, STOCK = "full", "stock"
FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".tsv": "gmc", ".txt": "gmc"}
CSV_COLUMNS = (
    "item_id",
    "title",
    "description",
    "category",
    "price",
    "in_stock",
    "availability",
    "brand",
    "attributes",
    "entities",
)
STOCK_FIELDS = frozenset({"price", "in_stock", "availability"})
GMC_COLUMNS = (
    "id",
    "title",
    "description",
    "product_type",
    "google_product_category",
    "brand",
    "price",
    "availability",
    "link",
    "image_link",
)
GMC_STOCK_FIELDS = frozenset({"price", "availability"})
# Google's availability values (and the spellings with a space its older feeds used), as in stock or not.
AVAILABILITY_IN_STOCK = {"in_stock": True, "out_of_stock": False, "preorder": True, "backorder": True}
AVAILABILITY_MESSAGE = f"Must be one of {', '.join(AVAILABILITY_IN_STOCK)}."
BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
BRAND = "brand"
CATEGORY_SEPARATOR = ">"
# A price a row gives as the catalog stores it (max 12 digits, 2 decimals, not negative).
PLAIN_PRICE = re.compile(r"\d{1,10}(?:\.\d{1,2})?")
NOT_IN_CATALOG = "Not in the catalog: a stock feed changes existing items only."
NOTHING_TO_UPDATE = "Gives neither price nor stock (in_stock or availability): nothing to change."
GMC_PRICE_MESSAGE = 'Must be a number and an ISO 4217 currency code, like "12.99 USD".'


@dataclass
class ItemImportCounts(file_import.ImportCounts):
    created: int = 0
    updated: int = 0
    # Rows that repeat what the catalog holds: not written again.
    unchanged: int = 0
    # Stock feed rows of ids the catalog does not have.
    missing: int = 0
    # Rows replaced by a later row of the same id in the same batch (the last one counts).
    repeated: int = 0


@dataclass
class ItemImportReport(file_import.ImportReport[ItemImportCounts]):
    counts: ItemImportCounts = field(default_factory=ItemImportCounts)
    totals: ItemImportCounts = field(default_factory=ItemImportCounts)
    mode: str = FULL
    # A bulk load: the seconds the vector index took to build again after the rows were in.
    index_seconds: float | None = None


def import_format(path: Path, declared: str | None = None) -> str:
    return file_import.import_format(path, declared, by_suffix=FORMAT_BY_SUFFIX)


# --- Reading: each format's rows as the item API's fields, and the names its problems are reported under ---


@dataclass(slots=True)
class _Fields:
    data: dict[str, Any]
    problems: Problems
    # The API's field name -> the file's column, where they differ (problems name what the file calls it).
    columns: dict[str, str]


def _availability(value: str, problems: Problems) -> bool | None:
    in_stock = AVAILABILITY_IN_STOCK.get(value.strip().lower().replace(" ", "_"))
    if in_stock is None:
        problems.append(("availability", AVAILABILITY_MESSAGE))
    return in_stock


def _brand_add(data: dict[str, Any], brand: str) -> dict[str, str]:
    """The brand as an entity: its id the name folded (one entity for "Acme" and "ACME"), its name as written.
    Returns the API's names of its fields -> the file's column, for problems."""
    entities = data.setdefault("entities", [])
    if not isinstance(entities, list):
        return {}  # the validator names the entities problem
    external_id, name = _brand_entity(brand)
    entities.append({"kind": BRAND, "id": external_id, "name": name})
    return _brand_columns(len(entities) - 1)


@functools.lru_cache(maxsize=20_000)
def _brand_entity(brand: str) -> tuple[str, str]:
    """(id, name) of a brand as a feed writes it: a catalog names the same brands over and over."""
    name = " ".join(brand.split())
    return name.casefold(), name


@functools.cache
def _brand_columns(index: int) -> dict[str, str]:
    return {f"entities.{index}.id": "brand", f"entities.{index}.name": "brand"}


def _csv_fields(cells: dict[str, str], mode: str) -> _Fields:
    """A CSV row's cells as the API's fields: text where the API takes text, JSON cells parsed."""
    problems: Problems = []
    columns: dict[str, str] = {}
    # Trimmed as the API's fields trim them, so that padded cells take the fast path.
    data: dict[str, Any] = {name: cells[name].strip() for name in ("item_id", "title", "description", "category",
                                                                    "price") if name in cells}  # fmt: skip
    if "in_stock" in cells:
        text = cells["in_stock"]
        data["in_stock"] = BOOLEAN_TEXT.get(text.strip().lower(), text)  # other text: the validator's message
    elif "availability" in cells:
        in_stock = _availability(cells["availability"], problems)
        if in_stock is not None:
            data["in_stock"] = in_stock
    if mode == STOCK:
        return _Fields(data, problems, columns)
    for name in ("attributes", "entities"):
        if name in cells:
            try:
                data[name] = orjson.loads(cells[name])
            except orjson.JSONDecodeError:
                problems.append((name, "Not valid JSON."))
    if cells.get("brand", "").strip():
        columns = _brand_add(data, cells["brand"])
    return _Fields(data, problems, columns)


def _gmc_price(text: str) -> tuple[str, str] | None:
    """(number, currency) of Google's "12.99 USD" (or "USD 12.99"); the number is the validator's to judge."""
    parts = text.split()
    if len(parts) != 2:
        return None
    number, currency = parts if len(parts[1]) == 3 and parts[1].isalpha() else reversed(parts)
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        return None
    return number, currency.upper()


def _gmc_fields(cells: dict[str, str], mode: str) -> _Fields:
    """A Merchant Center row as the API's fields."""
    problems: Problems = []
    columns = {"item_id": "id"}
    data: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    if "id" in cells:
        data["item_id"] = cells["id"].strip()  # trimmed as the API trims it
    if "price" in cells:
        price = _gmc_price(cells["price"])
        if price is None:
            problems.append(("price", GMC_PRICE_MESSAGE))
        else:
            data["price"], attributes["currency"] = price
    if "availability" in cells:
        in_stock = _availability(cells["availability"], problems)
        if in_stock is not None:
            data["in_stock"] = in_stock
    if mode == STOCK:
        return _Fields(data, problems, columns)  # the currency of a stock feed is not stored (attributes are content)
    for name in ("title", "description"):
        if name in cells:
            data[name] = cells[name].strip()
    for column in ("product_type", "google_product_category"):
        if cells.get(column, "").strip():
            data["category"] = cells[column].split(CATEGORY_SEPARATOR, 1)[0].strip()
            columns["category"] = column
            break
    for column in ("link", "image_link"):
        if column in cells:
            attributes[column] = cells[column].strip()
    data["attributes"] = attributes
    if cells.get("brand", "").strip():
        columns.update(_brand_add(data, cells["brand"]))
    return _Fields(data, problems, columns)


def _jsonl_fields(data: dict[str, Any], mode: str) -> _Fields:
    problems: Problems = []
    if "availability" in data and "in_stock" not in data:
        availability = data.pop("availability")
        if not isinstance(availability, str):
            problems.append(("availability", AVAILABILITY_MESSAGE))
        else:
            in_stock = _availability(availability, problems)
            if in_stock is not None:
                data["in_stock"] = in_stock
    return _Fields(data, problems, {})


# --- Validation: graph_app.item_rows reads the plainly valid rows, the API's serializer judges the rest ---


def item_input_checked(data: dict[str, Any]) -> ItemInput | Problems:
    """The item API's own verdict on `data`: its ItemInput, or its problems as (field, message)."""
    checked = _serializer_check(ItemBatchRowSerializer, data)
    if isinstance(checked, list):
        return checked
    serializer = ItemBatchRowSerializer(data=data)  # rare: a valid row the fast check was not sure of
    serializer.is_valid(raise_exception=True)
    return serializer.to_input(serializer.validated_data["item_id"])


_checking_serializers: dict[type[serializers.Serializer], serializers.Serializer] = {}


@process_cache("graph.catalog_import")
def _catalog_import_forget() -> None:
    _brand_entity.cache_clear()
    _brand_columns.cache_clear()
    _checking_serializers.clear()


def _serializer_check(kind: type[serializers.Serializer], data: dict[str, Any]) -> dict[str, Any] | Problems:
    """The serializer's validated data, or its problems with `data`, from one instance of it for the whole import
    (a new serializer copies its fields, which costs more than checking a row)."""
    checker = _checking_serializers.get(kind)
    if checker is None:
        checker = _checking_serializers[kind] = kind()
    try:
        return dict(checker.run_validation(data))
    except serializers.ValidationError as error:
        errors = flatten_errors(serializers.as_serializer_error(error))
        return [(name, messages[0]) for name, messages in errors.items()]


class StockRowSerializer(serializers.Serializer):  # type: ignore[misc]
    """A stock feed row, by the item API's rules for these fields (in_stock has no default: absent, unchanged)."""

    item_id = copy.deepcopy(ItemBatchRowSerializer._declared_fields["item_id"])
    price = copy.deepcopy(ItemBatchRowSerializer._declared_fields["price"])
    in_stock = StrictBooleanField(required=False)


def item_patch_checked(data: dict[str, Any]) -> ItemPatch | Problems:
    """A stock feed row (item_id with price and/or in_stock) as a patch of just those fields, by the API's rules."""
    stock: dict[str, Any] = {name: data[name] for name in ("item_id", "price", "in_stock") if name in data}
    if not stock.keys() & {"price", "in_stock"}:
        return [("item", NOTHING_TO_UPDATE)]
    patch = patch_row_read(stock)
    if patch is not None:
        return patch
    checked = _serializer_check(StockRowSerializer, stock)
    if isinstance(checked, list):
        return checked
    return ItemPatch(
        external_id=checked["item_id"],
        fields=frozenset(checked.keys() & {"price", "in_stock"}),
        price=checked.get("price"),
        in_stock=checked.get("in_stock", True),
    )


def _renamed(problems: Problems, columns: dict[str, str]) -> Problems:
    return [(columns.get(name, name), message) for name, message in problems]


# --- Modes and headers ---


def _csv_header_check(header: list[str], mode: str) -> list[str]:
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown or "item_id" not in header:
        raise ImportFileError(
            f"The CSV header must name item fields ({', '.join(CSV_COLUMNS)}), with item_id; "
            f"unknown: {', '.join(unknown) or 'none'}."
        )
    if mode == FULL and "title" not in header:
        raise ImportFileError(
            "The CSV header needs title (a full catalog), or only item_id with price, in_stock or availability "
            "(a stock feed)."
        )
    return header


def _gmc_header_check(header: list[str], mode: str) -> list[str]:
    header = _gmc_names(header)
    if "id" not in header:
        raise ImportFileError(
            f"A Merchant Center feed's header must name its columns ({', '.join(GMC_COLUMNS)}), with id."
        )
    if mode == FULL and "title" not in header:
        raise ImportFileError(
            "The Merchant Center feed's header needs title (a full feed), or only id with price or availability "
            "(a stock feed)."
        )
    return header


def _gmc_names(header: list[str]) -> list[str]:
    """Google's attribute names, however a feed's header spells them ("Image link" is image_link)."""
    return [name.strip().lower().replace(" ", "_") for name in header]


def import_mode(path: Path, file_format: str, *, partial: bool) -> str:
    """STOCK when asked, or when the file gives nothing but ids, prices and stock; else FULL."""
    if partial:
        return STOCK
    if file_format == "jsonl":
        first = file_import.first_json_object(path) or {"title": None}
        names, id_name, stock_fields = set(first), "item_id", STOCK_FIELDS
    else:
        header = file_import.csv_header(path, delimiter="\t" if file_format == "gmc" else ",")
        names = set(_gmc_names(header) if file_format == "gmc" else header)
        id_name, stock_fields = ("id", GMC_STOCK_FIELDS) if file_format == "gmc" else ("item_id", STOCK_FIELDS)
        if not names:
            return FULL
    if "title" not in names and names & stock_fields and names <= {id_name, *stock_fields}:
        return STOCK
    return FULL


def _row_reader(file_format: str, mode: str) -> Callable[..., Iterator[tuple[SourceRow, int, int]]]:
    if file_format == "jsonl":

        def jsonl(stream: IO[bytes], *, offset: int, line: int) -> Iterator[tuple[SourceRow, int, int]]:
            return file_import.jsonl_rows(stream, offset=offset, line=line, record_name="item")

        return jsonl
    check = _gmc_header_check if file_format == "gmc" else _csv_header_check

    def table(stream: IO[bytes], *, offset: int, line: int) -> Iterator[tuple[SourceRow, int, int]]:
        return file_import.csv_rows(
            stream,
            offset=offset,
            line=line,
            record_name="item",
            header_check=lambda header: check(header, mode),
            delimiter="\t" if file_format == "gmc" else ",",
        )

    return table


_FIELDS_OF: dict[str, Callable[[dict[str, Any], str], _Fields]] = {
    "csv": _csv_fields,
    "gmc": _gmc_fields,
    "jsonl": _jsonl_fields,
}


def row_item(row: SourceRow, file_format: str, mode: str) -> ItemInput | ItemPatch | Problems:
    """What one row of the file asks for (an item, or in a stock feed a patch), or its problems."""
    if row.raw is None:
        return row.problems
    found = _FIELDS_OF[file_format](row.raw, mode)
    if found.problems:
        return _renamed(row.problems + found.problems, found.columns)
    if mode == STOCK:
        patch = item_patch_checked(found.data)
        return patch if isinstance(patch, ItemPatch) else _renamed(patch, found.columns)
    item = item_row_read(found.data) or item_input_checked(found.data)
    return item if isinstance(item, ItemInput) else _renamed(item, found.columns)


# --- Writes: only what the file changes ---


def _items_stored(external_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """The stored values an upsert would write, by item id: (id, title, description, category, price, in stock,
    attributes as JSON text, whether it has a vector, its entity links as JSON text [[kind, id, name, weight]])."""
    with server_bound_cursor() as cursor:
        cursor.execute(_ITEMS_STORED_SQL, [orjson.dumps(external_ids).decode()])
        return {row[0]: row for row in cursor.fetchall()}


# The ids as one JSON array (one parameter, where psycopg writes an array element by element). Each item's links
# in a subquery of its own: grouping the join made a parallel plan at a million items, whose workers took longer
# to start than the lookup of a batch's ids.
_ITEMS_STORED_SQL = """
SELECT i.external_id, i.title, i.description, i.category, i.price, i.in_stock, i.attributes::text,
       i.embedding IS NOT NULL,
       (SELECT coalesce(json_agg(json_build_array(e.kind, e.external_id, e.name, l.weight)), '[]'::json)::text
        FROM graph_app_itementity l JOIN graph_app_entity e ON e.id = l.entity_id WHERE l.item_id = i.id)
FROM graph_app_item i
WHERE i.external_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%b::jsonb)))
"""


def _item_unchanged(item: ItemInput, stored: tuple[Any, ...] | None) -> bool:
    """Whether upserting `item` would leave it as stored (a vector to make, or an entity to rename, is a change).
    The JSON (as text: orjson decodes it faster than psycopg's loader) only when the rest is the same."""
    if stored is None:
        return False
    _, title, description, category, price, in_stock, attributes, has_vector, links = stored
    if (item.title, item.description, item.category, item.price, item.in_stock, has_vector) != (
        title,
        description,
        category,
        price,
        in_stock,
        True,
    ):
        return False
    if item.attributes != orjson.loads(attributes):
        return False
    stored_links = {(kind, entity_id): (name, weight) for kind, entity_id, name, weight in orjson.loads(links)}
    wanted = {(ref.kind, ref.external_id): ref for ref in item.entities}  # the last reference counts
    return wanted.keys() == stored_links.keys() and all(
        ref.weight == stored_links[key][1] and ref.name in ("", stored_links[key][0]) for key, ref in wanted.items()
    )


def _row_repeats(data: dict[str, Any], stored: tuple[Any, ...]) -> bool:
    """Whether a row's fields, before validation, are exactly what the catalog holds for its item: then it would
    change nothing, and it needs no checking (the stored item passed the same checks). Anything not plainly equal
    (text to trim, a price written otherwise, an entity without its name) is left to validation."""
    _, title, description, category, price, in_stock, attributes, has_vector, links = stored
    raw_price, raw_in_stock = data.get("price"), data.get("in_stock", True)
    if (data.get("title"), data.get("description", ""), data.get("category", ""), has_vector) != (
        title,
        description,
        category,
        True,
    ):
        return False
    if type(raw_in_stock) is not bool or raw_in_stock != in_stock:
        return False
    if raw_price is None or price is None:
        if raw_price is not price:
            return False
    elif type(raw_price) is not str or not PLAIN_PRICE.fullmatch(raw_price) or Decimal(raw_price) != price:
        return False
    if data.get("attributes", {}) != orjson.loads(attributes):
        return False
    entities = data.get("entities", [])
    stored_links = {(kind, entity_id): (name, weight) for kind, entity_id, name, weight in orjson.loads(links)}
    if type(entities) is not list or len(entities) != len(stored_links):
        return False
    for entity in entities:
        if type(entity) is not dict or not entity.keys() <= {"kind", "id", "name", "weight"}:
            return False
        link = stored_links.get((entity.get("kind"), entity.get("id")))
        if link is None or entity.get("name", link[0]) != link[0] or entity.get("weight", 1.0) != link[1]:
            return False
        if type(entity.get("weight", 1.0)) not in (int, float):
            return False
    return True


def _queryable_id(value: Any) -> bool:
    """An id not validated yet that is safe to look up (PostgreSQL refuses NUL and unencodable text)."""
    if type(value) is not str or not value or len(value) > EXTERNAL_ID_MAX_LENGTH or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _items_batch(
    rows: list[SourceRow], *, file_format: str, projection: Any, rewrite: bool
) -> tuple[ItemImportCounts, Rejected]:
    """A batch of full rows. In file order, each id's last row counts; a row that repeats what the catalog holds
    is left alone, before validation or after it; the others are validated and written together."""
    rejected: Rejected = []
    mapped: list[tuple[SourceRow, _Fields]] = []
    for row in rows:
        if row.raw is None:
            rejected.append((row, row.problems))
            continue
        found = _FIELDS_OF[file_format](row.raw, FULL)
        if found.problems:
            rejected.append((row, _renamed(row.problems + found.problems, found.columns)))
        else:
            mapped.append((row, found))
    ids: set[str] = {found.data["item_id"] for _, found in mapped if _queryable_id(found.data.get("item_id"))}
    stored = {} if rewrite else _items_stored(list(ids))
    latest: dict[str, ItemInput] = {}
    same: set[str] = set()
    valid = 0
    for row, found in mapped:
        current = None if rewrite else stored.get(found.data.get("item_id"))  # type: ignore[arg-type]
        if current is not None and _row_repeats(found.data, current):
            item_id: str = found.data["item_id"]
        else:
            item = item_row_read(found.data) or item_input_checked(found.data)
            if not isinstance(item, ItemInput):
                rejected.append((row, _renamed(item, found.columns)))
                continue
            item_id = item.external_id
            if not _item_unchanged(item, stored.get(item_id)):
                same.discard(item_id)
                latest[item_id] = item
                valid += 1
                continue
        latest.pop(item_id, None)  # a later row putting back what is stored undoes an earlier change
        same.add(item_id)
        valid += 1
    outcome = items_upsert_many(rows=list(latest.values()), projection=projection)
    counts = ItemImportCounts(rejected=len(rejected), created=len(outcome.created), updated=len(outcome.updated))
    counts.unchanged = len(same)
    counts.repeated = valid - len(same) - len(latest)
    rejected.sort(key=lambda pair: pair[0].line)
    return counts, rejected


def _stock_write(
    wanted: list[tuple[SourceRow, ItemPatch]], counts: ItemImportCounts, *, rewrite: bool
) -> list[SourceRow]:
    """Patch the items whose price or stock the rows change; the rows (the last of each id) of ids not in the
    catalog are returned."""
    latest: dict[str, ItemPatch] = {}
    last_row: dict[str, SourceRow] = {}
    for row, patch in wanted:
        earlier = latest.get(patch.external_id)
        if earlier is not None:  # a repeated id: each field as its last row gives it
            patch = ItemPatch(
                external_id=patch.external_id,
                fields=earlier.fields | patch.fields,
                price=patch.price if "price" in patch.fields else earlier.price,
                in_stock=patch.in_stock if "in_stock" in patch.fields else earlier.in_stock,
            )
        latest[patch.external_id] = patch
        last_row[patch.external_id] = row
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT external_id, price, in_stock FROM graph_app_item WHERE external_id = ANY(%s::text[])",
            [list(latest)],
        )
        stored = {external_id: (price, in_stock) for external_id, price, in_stock in cursor.fetchall()}
    changed = [
        patch
        for external_id, patch in latest.items()
        if external_id in stored
        and (
            rewrite
            or ("price" in patch.fields and patch.price != stored[external_id][0])
            or ("in_stock" in patch.fields and patch.in_stock != stored[external_id][1])
        )
    ]
    outcome = items_patch_many(patches=changed)
    absent = [external_id for external_id in latest if external_id not in stored]
    missing = absent + outcome.missing  # and those deleted since the read
    counts.updated, counts.missing = len(outcome.updated), len(missing)
    counts.unchanged = len(latest) - len(changed) - len(absent)
    counts.repeated = len(wanted) - len(latest)
    return sorted((last_row[external_id] for external_id in missing), key=lambda row: row.line)


# --- Batches side by side: what each writes ---


def _batch_claims(rows: list[SourceRow], *, file_format: str, mode: str) -> dict[Hashable, Hashable]:
    """The items a batch writes, and the names it gives entities: a batch naming an item of a batch still running,
    or naming one of its entities otherwise, waits for it (the file's later row wins, as one batch after another).
    Read from the raw cells, trimmed as the API trims: two spellings that may be one item count as one."""
    id_name = "id" if file_format == "gmc" else "item_id"
    batch = rows[0].line  # any two batches naming the same item conflict
    claims: dict[Hashable, Hashable] = {}
    for row in rows:
        raw = row.raw
        if raw is None or raw.get(id_name) is None:
            continue
        claims["item", str(raw[id_name]).strip()] = batch
        if mode != FULL:
            continue
        if "entities" in raw:
            claims.update(_entity_names(raw["entities"], file_format))
        brand = raw.get("brand") if file_format != "jsonl" else None
        if brand and brand.strip():
            external_id, name = _brand_entity(brand)
            claims["entity", BRAND, external_id] = name
    return claims


def _entity_names(entities: Any, file_format: str) -> dict[Hashable, str]:
    """The entities a row names (with a name, which would rename them), trimmed: ("entity", kind, id) -> name."""
    if file_format == "csv" and isinstance(entities, str):
        try:
            entities = orjson.loads(entities)
        except orjson.JSONDecodeError:
            return {}
    if not isinstance(entities, list):
        return {}
    return {
        ("entity", str(entity.get("kind")).strip(), str(entity.get("id")).strip()): str(entity["name"]).strip()
        for entity in entities
        if isinstance(entity, dict) and str(entity.get("name", "")).strip()
    }


# --- The import ---


def items_import(
    *,
    path: Path,
    file_format: str | None = None,
    partial: bool = False,
    rewrite: bool = False,
    batch_size: int | None = None,
    rejects_path: Path | None = None,
    checkpoint_path: Path | None = None,
    restart: bool = False,
    max_batches: int | None = None,
    progress: IO[str] | None = None,
    bulk_load: bool = False,
    workers: int = ITEM_IMPORT_WORKERS,
) -> ItemImportReport:
    """Import the file's items into the catalog, resuming from its checkpoint unless `restart`. Items whose stored
    values the file repeats are not written again, unless `rewrite`. A `bulk_load` drops the items' vector index
    for the import and builds it again after it, whether the import finished or stopped. Batches run in `workers`
    processes (1: in this one; so do they inside a transaction the caller holds)."""
    file_format = import_format(path, file_format)
    mode = import_mode(path, file_format, partial=partial)
    if bulk_load and mode != FULL:
        raise ImportFileError("--bulk-load is for full rows: a stock feed writes no vectors.")
    checkpoint_path = checkpoint_path or checkpoint_path_for(path)
    checkpoint = file_import.checkpoint_open(
        path=path,
        checkpoint_path=checkpoint_path,
        file_format=file_format,
        counts_type=ItemImportCounts,
        restart=restart,
        restart_hint="items already imported are updated again, to the same values",
        mode=mode,
    )
    report = ItemImportReport(file_format=file_format, totals=checkpoint.totals, mode=mode)
    projection = content_projection() if mode == FULL else None

    def import_batch(rows: list[SourceRow]) -> tuple[ItemImportCounts, Rejected]:
        if mode == FULL:
            return _items_batch(rows, file_format=file_format, projection=projection, rewrite=rewrite)
        wanted: list[tuple[SourceRow, Any]] = []
        rejected: Rejected = []
        for row in rows:
            result = row_item(row, file_format, mode)
            if isinstance(result, list):
                rejected.append((row, result))
            else:
                wanted.append((row, result))
        counts = ItemImportCounts(rejected=len(rejected))
        missing_rows = _stock_write(wanted, counts, rewrite=rewrite)
        id_column = "id" if file_format == "gmc" else "item_id"
        rejected += [(row, [(id_column, NOT_IN_CATALOG)]) for row in missing_rows]
        rejected.sort(key=lambda pair: pair[0].line)
        return counts, rejected

    if bulk_load:
        item_vector_index_drop()
    try:
        file_import.file_import_run(
            path=path,
            report=report,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
            read_rows=_row_reader(file_format, mode),
            import_batch=import_batch,
            batch_size=batch_size or (STOCK_IMPORT_BATCH_SIZE if mode == STOCK else ITEM_IMPORT_BATCH_SIZE),
            rejects_path=rejects_path,
            max_batches=max_batches,
            progress=progress,
            noun="items",
            workers=workers,
            batch_claims=functools.partial(_batch_claims, file_format=file_format, mode=mode),
        )
    finally:
        if bulk_load:  # also after an error or an interrupt: serving must not stay on exact search
            report.index_seconds = item_vector_index_build(progress=progress)
    return report
