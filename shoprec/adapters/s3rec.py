"""The S3-Rec sequence format (Amazon Beauty, Sports, Toys, Yelp, ...).

A folder holds ``<Name>.txt`` (``user item item ...`` per line, oldest first) and
optionally ``<Name>_item_text.tsv`` (``item_id<TAB>asin<TAB>title``) and
``<Name>_item2attributes.json`` (``{"item_id": [attribute_id, ...]}``).

The format has no timestamps. We synthesize order-preserving ones: the k-th item of
the user on line u gets ``SYNTHETIC_EPOCH + k days + u seconds``. Only the order
within a user is real; the batch metadata says so (``synthetic_timestamps``).
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pandas as pd

from shoprec.reading import (
    EventSource,
    FrameSource,
    InputError,
    PartLayout,
    ReadOptions,
    SourceLayout,
    catalog_part,
    read_catalog,
)

SYNTHETIC_EPOCH = pd.Timestamp("2014-01-01", tz="UTC")


def find_dataset(path: Path) -> tuple[Path, str]:
    """Return (folder, name) for a folder or a ``<Name>.txt`` path."""
    path = Path(path)
    if path.is_file():
        return path.parent, path.stem
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    candidates = [p for p in path.glob("*.txt") if not p.name.startswith(".")]
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates) or "none"
        raise ValueError(f"expected exactly one <Name>.txt sequence file in {path}, found: {names}")
    return path, candidates[0].stem


def read_sequences(txt: Path) -> pd.DataFrame:
    """One row per interaction: user_id, item_id, position (0 = oldest), line number."""
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    lines: list[int] = []
    with builtins.open(txt, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise ValueError(f"{txt.name} line {line_no + 1}: a user with no items: {line.strip()!r}")
            user, seq = tokens[0], tokens[1:]
            users.extend([user] * len(seq))
            items.extend(seq)
            positions.extend(range(len(seq)))
            lines.extend([line_no] * len(seq))
    return pd.DataFrame({"user_id": users, "item_id": items, "position": positions, "line": lines})


def read_items(folder: Path, name: str) -> pd.DataFrame | None:
    text = folder / f"{name}_item_text.tsv"
    attrs = folder / f"{name}_item2attributes.json"
    frame = None
    if text.exists():
        with builtins.open(text, encoding="utf-8") as fh:
            has_header = fh.readline().startswith("item_id\t")
        frame = pd.read_csv(
            text, sep="\t", header=None, names=["item_id", "asin", "title"],
            skiprows=1 if has_header else 0,
            dtype=str, keep_default_na=False, quoting=3, encoding="utf-8",
        )
        frame["description"] = frame.pop("asin").map(lambda a: f"asin:{a}" if a else pd.NA)
        frame["title"] = frame["title"].replace("", pd.NA)
    if attrs.exists():
        mapping = json.loads(attrs.read_text(encoding="utf-8"))
        attr_frame = pd.DataFrame(
            {"item_id": list(mapping), "attributes": [list(map(str, v)) for v in mapping.values()]}
        )
        frame = attr_frame if frame is None else frame.merge(attr_frame, on="item_id", how="left")
    if frame is not None and "attributes" in frame:
        frame["attributes"] = frame["attributes"].map(lambda a: a if isinstance(a, list) else [])
    return frame


def read_source(path) -> tuple[pd.DataFrame, pd.DataFrame | None, Path, str]:
    """(events, items, sequence file, data set name); errors name the file and the line."""
    try:
        folder, name = find_dataset(Path(path))
        seq = read_sequences(folder / f"{name}.txt")
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    seq["timestamp"] = (
        SYNTHETIC_EPOCH
        + pd.to_timedelta(seq["position"].to_numpy(), unit="D")
        + pd.to_timedelta(seq["line"].to_numpy(np.int64), unit="s")
    )
    events = seq[["user_id", "item_id", "timestamp"]].assign(event_type="purchase")
    return events, read_items(folder, name), folder / f"{name}.txt", name


def open(path, options: ReadOptions, catalog=None, catalog_options=None) -> EventSource:
    """The whole sequence file as one source (its format has no chunked reader; Beauty is 200k
    events); reading options do not apply to it."""
    events, items, txt, name = read_source(path)
    given = catalog_part(catalog, catalog_options)
    if given is not None:
        items = read_catalog(given)
    part = PartLayout(role="events", files=(str(txt),), file_type="s3rec sequences", compression=None,
                      delimiter=" ", delimiter_source="preset", header=False, columns=("user", "item ..."),
                      mapping={"user_id": "user", "item_id": "item ..."}, constants={"event_type": "purchase"},
                      timestamp_unit="synthetic", timestamp_unit_source="preset", user_from_session="off")
    layout = SourceLayout("s3rec", (part,), note="timestamps synthesized from the order")
    metadata = {
        "format": "s3rec",
        "dataset": name,
        "synthetic_timestamps": True,
        "timestamp_rule": "k-th item of the user on line u: 2014-01-01 + k days + u seconds; only per-user order is real",
    }
    return FrameSource("s3rec", events, items, layout, metadata)
