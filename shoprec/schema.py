"""The canonical data model: what an event and a catalog item are, everywhere in ShopRec.

Documented for people in docs/data-model.md; enforced here. Ids are strings exactly
as the source gives them, timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa

# column -> pandas dtype, in canonical order
EVENT_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "event_type": "string",
    "timestamp": "datetime64[ns, UTC]",
    "session_id": "string",
    "price": "Float64",
    "quantity": "Int64",
    # optional, from the client (or derived: shoprec.schema.derived_event_ids): what makes a
    # retried or repeated real-time event count once; batch sources leave it empty
    "event_id": "string",
}
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")

ITEM_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "title": "string",
    "category": "string",
    "brand": "string",
    "price": "Float64",
    "available": "boolean",
    "description": "string",
    "attributes": "object",  # list[str]
}
REQUIRED_ITEM_COLUMNS = ("item_id",)

EVENT_ARROW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("timestamp", pa.timestamp("ns", tz="UTC")),
        ("session_id", pa.string()),
        ("price", pa.float64()),
        ("quantity", pa.int64()),
        ("event_id", pa.string()),
    ]
)
ITEM_ARROW_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("available", pa.bool_()),
        ("description", pa.string()),
        ("attributes", pa.list_(pa.string())),
    ]
)


class SchemaError(ValueError):
    """A batch does not fit the canonical model (missing columns, uncastable values)."""


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()})


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in ITEM_COLUMNS.items()})


def normalise_id(value: object) -> str:
    """An id as every path stores it (batch, real-time, the erasure ledger): its text, without
    surrounding whitespace, so one user is one key everywhere."""
    return str(value).strip()


def normalise_ids(values: pd.Series) -> pd.Series:
    """``normalise_id`` of a column (pandas ``str.strip`` strips what ``str.strip`` strips)."""
    return values.astype("string").str.strip()


def _as_string_ids(series: pd.Series) -> pd.Series:
    """Ids stay as the source wrote them; only whole-number floats lose their '.0'."""
    if pd.api.types.is_float_dtype(series):
        whole = series.dropna()
        if (whole == whole.round()).all():
            series = series.astype("Int64")
    return normalise_ids(series)


def to_utc(series: pd.Series, unit: str | None = None) -> pd.Series:
    """Parse timestamps (strings, datetimes or epoch numbers with ``unit``) to UTC."""
    if unit is not None:
        return pd.to_datetime(series, unit=unit, utc=True, errors="coerce")
    return pd.to_datetime(series, utc=True, errors="coerce", format="mixed")


def conform_events(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame to the canonical event schema; optional columns are added empty.

    Values that cannot be cast become missing (the validation gate reports them);
    missing required columns or unexpected extra columns raise SchemaError.
    """
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"events are missing required column(s): {', '.join(missing)}")
    extra = [c for c in df.columns if c not in EVENT_COLUMNS]
    if extra:
        raise SchemaError(f"events have unexpected column(s): {', '.join(map(str, extra))}")
    out = {}  # one frame built at the end: inserting columns one by one was 40% of a 1-event push's check
    for col, dtype in EVENT_COLUMNS.items():
        if col not in df.columns:
            out[col] = pd.Series(pd.NA, index=df.index, dtype=dtype)
        elif col in ("user_id", "item_id", "session_id", "event_id"):
            out[col] = _as_string_ids(df[col])
        elif col == "event_type":
            out[col] = df[col].astype("string").str.strip().str.lower()
        elif col == "timestamp":
            ts = df[col]
            out[col] = ts.dt.tz_convert("UTC") if _is_tz_datetime(ts) else to_utc(ts)
        else:
            out[col] = _as_number(df[col], col, dtype)
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


def event_row_hashes(events: pd.DataFrame) -> bytes:
    """The events' row hashes, in order: what a batch id is made of (row by row, so a batch
    hashed in chunks gets the same id as hashed whole)."""
    return pd.util.hash_pandas_object(events, index=False).values.tobytes()


def item_row_hashes(items: pd.DataFrame) -> bytes:
    """The catalog rows' hashes, in order (attributes as ``a|b|c``)."""
    flat = items.drop(columns=["attributes"]).assign(attributes=items["attributes"].map(lambda a: "|".join(a)))
    return pd.util.hash_pandas_object(flat, index=False).values.tobytes()


def derived_event_ids(events: pd.DataFrame) -> pd.Series:
    """A deterministic id for each conformed event: a hash of user, item, type, timestamp and
    session, so the same event sent again (same fields, same time) gets the same id."""
    parts = zip(events["user_id"], events["item_id"], events["event_type"],
                (t.isoformat() for t in events["timestamp"]), events["session_id"].fillna(""))
    ids = [hashlib.sha256("\x1f".join(map(str, p)).encode()).hexdigest()[:32] for p in parts]
    return pd.Series(ids, index=events.index, dtype="string")


def _as_number(series: pd.Series, column: str, dtype: str) -> pd.Series:
    """Numbers of the canonical type; unreadable values become missing (the gate reports them),
    but a whole-number column refuses what Int64 cannot hold instead of failing inside pandas."""
    numbers = pd.to_numeric(series, errors="coerce")
    if dtype == "Int64":
        values = numbers.astype("float64")
        unfit = values.notna() & ((values != values.round()) | (values.abs() >= 2.0**63))
        if unfit.any():
            examples = ", ".join(repr(v) for v in series[unfit].unique()[:3])
            raise SchemaError(f"'{column}': {int(unfit.sum())} value(s) are not whole numbers within 64 bits, e.g. {examples}")
    return numbers.astype(dtype)


def conform_items(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a catalog frame to the canonical item schema (see conform_events)."""
    missing = [c for c in REQUIRED_ITEM_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"items are missing required column(s): {', '.join(missing)}")
    extra = [c for c in df.columns if c not in ITEM_COLUMNS]
    if extra:
        raise SchemaError(f"items have unexpected column(s): {', '.join(map(str, extra))}")
    out = pd.DataFrame(index=df.index)
    for col, dtype in ITEM_COLUMNS.items():
        if col not in df.columns:
            default = True if col == "available" else pd.NA
            out[col] = pd.Series(default, index=df.index, dtype=dtype) if col != "attributes" else [
                [] for _ in range(len(df))
            ]
        elif col == "item_id":
            out[col] = _as_string_ids(df[col])
        elif col == "attributes":
            out[col] = [list(map(str, a)) if isinstance(a, (list, tuple)) or hasattr(a, "tolist") else [] for a in df[col]]
        elif col == "price":
            out[col] = pd.to_numeric(df[col], errors="coerce").astype(dtype)
        elif col == "available":
            out[col] = df[col].astype("boolean")
        else:
            out[col] = df[col].astype("string")
    return out.reset_index(drop=True)


def _is_tz_datetime(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.DatetimeTZDtype)
