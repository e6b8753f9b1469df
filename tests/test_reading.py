"""Bring your own data (#17): every reading option, every public layout, and bad input.

The reader (shoprec.reading) streams files in chunks through pyarrow; these tests check each
option on small hand-written files, each public layout on its fixture under
fixtures/layouts/, that one data set in any file type lands as the same lake, and that bad
input is refused with the file, line and column named, quarantined, and the lake unchanged.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from entrypoints.cli import cli
from shoprec import lake
from shoprec.adapters import FORMATS, read_batch
from shoprec.config import load_settings
from shoprec.ingest import ingest
from shoprec.adapters import open_source
from shoprec.reading import InputError, ReadOptions, detect_delimiter, guess_timestamp_unit
from shoprec.schema import EVENT_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = FIXTURES / "layouts"
SHOP = FIXTURES / "shop"
SESSION_LOG = FIXTURES / "session_log.csv"


def _events(fmt: str, path, **options) -> pd.DataFrame:
    return read_batch(fmt, path, options=ReadOptions(**options)).events


def _text(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _session_rows() -> list[list[str]]:
    return pd.read_csv(SESSION_LOG, dtype=str).values.tolist()


# ----------------------------------------------------------------------------- delimiters and headers


@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|", " "])
def test_delimiter_is_detected_and_reported(tmp_path, delimiter):
    rows = [["user_id", "item_id", "event_type", "timestamp"]] + [[f"u{i}", f"0{i}", "view", f"{1700000000 + i}"]
                                                                  for i in range(6)]
    path = _text(tmp_path / "events.txt", [delimiter.join(r) for r in rows])
    source = open_source("events", path, ReadOptions())
    part = source.layout.parts[0]
    assert (part.delimiter, part.delimiter_source) == (delimiter, "detected")
    events = pd.concat(list(source.event_chunks()))
    assert events["item_id"].tolist() == [f"0{i}" for i in range(6)]  # leading zeros kept


def test_given_delimiter_wins_and_is_reported_as_given(tmp_path):
    path = _text(tmp_path / "events.csv", ["user_id;item_id;event_type;timestamp", "u1;i,1;view;2024-01-01"])
    source = open_source("events", path, ReadOptions(delimiter=";"))
    assert (source.layout.parts[0].delimiter, source.layout.parts[0].delimiter_source) == (";", "given")
    assert next(source.event_chunks())["item_id"].tolist() == ["i,1"]


def test_detection_prefers_the_suffix_delimiter_when_it_fits():
    sample = "a,b|c\n1,2|3\n4,5|6\n"
    assert detect_delimiter(sample, ",") == ","
    assert detect_delimiter(sample, None) == ","  # equal field counts: the order , TAB ; | space
    assert detect_delimiter("only\none\ncolumn\n") is None


def test_no_header_with_columns_names_them(tmp_path):
    path = _text(tmp_path / "clicks.dat", [",".join(r) for r in _session_rows()])
    events = _events("sessions", path, header=False, columns=("timestamp", "user_id", "item_id", "session_id"))
    assert len(events) == 36 and events["item_id"].iloc[0] == "00007"


def test_columns_with_a_header_replace_its_names(tmp_path):
    path = _text(tmp_path / "log.csv", ["when,who,what,visit"] + [",".join(r) for r in _session_rows()])
    events = _events("sessions", path, columns=("timestamp", "user_id", "item_id", "session_id"))
    assert len(events) == 36 and set(events["user_id"]) >= {"u05"}


def test_header_less_file_without_columns_is_a_clear_error(tmp_path):
    path = _text(tmp_path / "clicks.dat", [",".join(r) for r in _session_rows()])
    with pytest.raises(InputError, match=r"clicks.dat: line 1: the first line looks like data.*--no-header --columns"):
        open_source("sessions", path, ReadOptions())
    with pytest.raises(InputError, match=r"--no-header needs the column names: --columns a,b,c \(the first line has 4"):
        open_source("sessions", path, ReadOptions(header=False))
    with pytest.raises(InputError, match="3 column name"):
        open_source("sessions", path, ReadOptions(header=False, columns=("a", "b", "c")))


# ----------------------------------------------------------------------------- mapping, constants, users


def test_mapping_covers_every_canonical_column(tmp_path):
    source = {"user_id": "visitor", "item_id": "sku", "event_type": "action", "timestamp": "when",
              "session_id": "visit", "price": "amount", "quantity": "units", "event_id": "uuid"}
    path = _text(tmp_path / "export.csv", [",".join(source.values()),
                                           "v1,007,purchase,2024-03-01 10:00:00,s1,9.5,2,e1",
                                           "v2,008,view,2024-03-01 10:01:00,s2,,,e2"])
    events = _events("events", path, mapping=source)
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert events.iloc[0][["user_id", "item_id", "session_id", "event_id"]].tolist() == ["v1", "007", "s1", "e1"]
    assert events["price"].iloc[0] == 9.5 and events["quantity"].iloc[0] == 2 and pd.isna(events["price"].iloc[1])
    assert events["timestamp"].iloc[1] == pd.Timestamp("2024-03-01 10:01:00", tz="UTC")


def test_a_mapping_to_an_unknown_column_or_a_missing_source_is_refused(tmp_path):
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp", "u,i,view,2024-01-01"])
    with pytest.raises(InputError, match="unknown column.*colour"):
        open_source("events", path, ReadOptions(mapping={"colour": "item_id"}))
    with pytest.raises(InputError, match=r"mapped source column\(s\) not in the file: visitor \(e.csv has columns"):
        open_source("events", path, ReadOptions(mapping={"user_id": "visitor"}))


def test_constants_fill_rows_without_a_value(tmp_path):
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp", "u,i,,2024-01-01", "u,j,purchase,2024-01-02"])
    events = _events("events", path, constants={"event_type": "view"})
    assert events["event_type"].tolist() == ["view", "purchase"]
    no_column = _text(tmp_path / "f.csv", ["user_id,item_id,timestamp", "u,i,2024-01-01"])
    assert _events("events", no_column, constants={"event_type": "add_to_cart"})["event_type"].tolist() == ["add_to_cart"]


def test_event_values_translate_and_ignore_drops(tmp_path):
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp,noise", "u,i,addtocart,2024-01-01,x"])
    with pytest.raises(InputError, match=r"unexpected column\(s\): noise"):
        open_source("events", path, ReadOptions())
    events = _events("events", path, event_values={"addtocart": "add_to_cart"}, ignore=("noise",))
    assert events["event_type"].tolist() == ["add_to_cart"]
    assert len(_events("events", path, ignore=("*",))) == 1  # '*': every column the mapping does not use


def _sessions_file(tmp_path: Path, users: list[str]) -> Path:
    lines = ["session_id,user_id,item_id,timestamp"]
    lines += [f"s{i},{u},i{i},2024-01-0{i + 1}" for i, u in enumerate(users)]
    return _text(tmp_path / "s.csv", lines)


def test_user_from_session_rules(tmp_path):
    no_user = _text(tmp_path / "n.csv", ["session_id,item_id,timestamp", "s1,i1,2024-01-01"])
    source = open_source("sessions", no_user, ReadOptions())
    assert source.layout.parts[0].user_from_session == "every row"
    assert next(source.event_chunks())["user_id"].tolist() == ["s1"]
    mostly_na = _sessions_file(tmp_path, ["NA", "u7", "NA"])
    assert _events("sessions", mostly_na)["user_id"].isna().sum() == 2  # default: nulls go to the gate
    assert _events("sessions", mostly_na, user_from_session=True)["user_id"].tolist() == ["s0", "u7", "s2"]
    empty = _sessions_file(tmp_path, ["", "NA", ""])
    assert _events("sessions", empty)["user_id"].tolist() == ["s0", "s1", "s2"]  # empty in the first rows
    assert _events("sessions", empty, user_from_session=False)["user_id"].isna().all()
    assert _events("sessions", mostly_na, mapping={"user_id": "session_id"})["user_id"].tolist() == ["s0", "s1", "s2"]
    with pytest.raises(InputError, match="needs a session column"):
        open_source("events", SHOP / "events.csv", ReadOptions(user_from_session=True, ignore=("session_id",)))


# ----------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize("unit, scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_epoch_timestamps_in_any_unit_are_told_by_magnitude(tmp_path, unit, scale):
    seconds = [1700000000, 1700000060]
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp"]
                 + [f"u,i,view,{s * scale}" for s in seconds])
    source = open_source("events", path, ReadOptions())
    assert (source.layout.parts[0].timestamp_unit, source.layout.parts[0].timestamp_unit_source) == (unit, "detected")
    expected = [pd.Timestamp(s, unit="s", tz="UTC") for s in seconds]
    assert next(source.event_chunks())["timestamp"].tolist() == expected


def test_given_unit_and_fractional_epochs(tmp_path):
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp", "u,i,view,1700000000.5"])
    assert _events("events", path)["timestamp"].iloc[0] == pd.Timestamp(1700000000.5, unit="s", tz="UTC")
    assert _events("events", path, timestamp_unit="ms")["timestamp"].iloc[0] == pd.Timestamp("1970-01-20 16:13:20.0005", tz="UTC")
    assert guess_timestamp_unit(pd.Series(["2016-05-09"])) == "text"


@pytest.mark.parametrize("text, expected", [
    ("2016-05-09T08:14:54Z", "2016-05-09 08:14:54"),
    ("2016-05-09 08:14:54", "2016-05-09 08:14:54"),
    ("2016-05-09T10:14:54+02:00", "2016-05-09 08:14:54"),
    ("2016-05-09", "2016-05-09 00:00:00"),
    ("May 9 2016 08:14:54", "2016-05-09 08:14:54"),
])
def test_date_strings_are_parsed_to_utc(tmp_path, text, expected):
    path = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp", f'u,i,view,"{text}"'])
    assert _events("events", path)["timestamp"].iloc[0] == pd.Timestamp(expected, tz="UTC")


# ----------------------------------------------------------------------------- files


def _shop_variants(folder: Path) -> dict[str, Path]:
    """The shop fixture's events as CSV, TSV, gzip, zstd, bz2, Parquet and JSON lines."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (SHOP / "events.csv").read_bytes()
    raw = pd.read_csv(SHOP / "events.csv", dtype=str, keep_default_na=False)
    paths = {"csv": folder / "events.csv", "tsv": folder / "events.tsv", "gzip": folder / "events.csv.gz",
             "zstd": folder / "events.csv.zst", "bz2": folder / "events.csv.bz2",
             "parquet": folder / "events.parquet", "jsonl": folder / "events.jsonl"}
    paths["csv"].write_bytes(data)
    raw.to_csv(paths["tsv"], sep="\t", index=False)
    paths["gzip"].write_bytes(gzip.compress(data))
    paths["bz2"].write_bytes(bz2.compress(data))
    with pa.output_stream(str(paths["zstd"]), compression="zstd") as out:
        out.write(data)
    pq.write_table(pa.Table.from_pandas(raw.replace("", None), preserve_index=False), paths["parquet"])
    raw.replace("", None).to_json(paths["jsonl"], orient="records", lines=True)
    return paths


def test_every_file_type_reads_the_same_events(tmp_path):
    paths = _shop_variants(tmp_path)
    reference = _events("events", paths["csv"])
    for kind, path in paths.items():
        source = open_source("events", path, ReadOptions())
        assert source.layout.parts[0].compression == {"gzip": "gzip", "zstd": "zstd", "bz2": "bz2"}.get(kind), kind
        pd.testing.assert_frame_equal(_events("events", path), reference, obj=kind)


def test_a_folder_or_glob_of_files_is_read_in_name_order(tmp_path):
    rows = pd.read_csv(SHOP / "events.csv", dtype=str, keep_default_na=False)
    folder = tmp_path / "exports"
    folder.mkdir()
    for number, start in enumerate(range(0, 48, 16)):
        part = rows.iloc[start:start + 16]
        data = part.to_csv(index=False).encode()
        (folder / f"day-{number}.csv.gz").write_bytes(gzip.compress(data)) if number % 2 else \
            (folder / f"day-{number}.csv").write_bytes(data)
    whole = _events("events", SHOP / "events.csv")
    pd.testing.assert_frame_equal(_events("events", folder), whole)
    pd.testing.assert_frame_equal(_events("events", str(folder / "day-*")), whole)
    assert len(open_source("events", folder, ReadOptions()).layout.parts[0].files) == 3


def test_files_of_one_source_must_share_a_layout(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    _text(folder / "a.csv", ["user_id,item_id,event_type,timestamp", "u,i,view,2024-01-01"])
    _text(folder / "b.csv", ["user,item_id,event_type,timestamp", "u,i,view,2024-01-01"])
    with pytest.raises(InputError, match="b.csv has columns user, item_id.*must share a layout"):
        _events("events", folder)
    (folder / "b.csv").unlink()
    pq.write_table(pa.table({"user_id": ["u"]}), folder / "c.parquet")
    with pytest.raises(InputError, match="parquet and text files"):
        _events("events", folder)


def test_chunks_are_bounded_and_streamed(tmp_path):
    lines = ["user_id,item_id,event_type,timestamp"] + [f"u{i % 7},i{i % 11},view,{1700000000 + i}" for i in range(100_000)]
    path = _text(tmp_path / "big.csv", lines + ["u,i,view,1700000000,ragged"])  # ~3 MB: several reader blocks
    chunks = open_source("events", path, ReadOptions()).event_chunks(20_000)
    sizes = [len(next(chunks)) for _ in range(2)]  # chunks come before the reader reaches the bad last line
    assert sizes == [20_000, 20_000]
    with pytest.raises(InputError, match="big.csv line 100002: expected 4 columns, got 5"):
        list(chunks)
    good = _text(tmp_path / "good.csv", lines[:1001])
    parts = list(open_source("events", good, ReadOptions()).event_chunks(300))
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), _events("events", good))


# ----------------------------------------------------------------------------- bad input


def test_errors_name_the_file_line_and_column(tmp_path):
    rows = [",".join(r) for r in _session_rows()]
    header = "timestamp,user_id,item_id,session_id"
    bad_time = rows[:6] + [rows[6].replace("2016-05-09T", "9999-99-99T")] + rows[7:]
    with pytest.raises(InputError, match=r"t.csv line 8, column 'timestamp': 1 value\(s\) are not timestamps, e.g. '9999"):
        _events("sessions", _text(tmp_path / "t.csv", [header] + bad_time))
    with pytest.raises(InputError, match=r"m.csv line 8, column 'when' \(timestamp\)"):
        _events("sessions", _text(tmp_path / "m.csv", ["when,user_id,item_id,session_id"] + bad_time),
                mapping={"timestamp": "when"})
    epoch = _text(tmp_path / "e.csv", ["user_id,item_id,event_type,timestamp", "u,i,view,1700000000", "u,i,view,soon"])
    with pytest.raises(InputError, match=r"e.csv line 3, column 'timestamp': 1 value\(s\) are not timestamps in epoch s"):
        _events("events", epoch)
    ragged = _text(tmp_path / "r.csv", [header] + rows[:3] + [rows[3] + ",x"] + rows[4:])
    with pytest.raises(InputError, match=r"r.csv line 5: expected 4 columns, got 5"):
        _events("sessions", ragged)
    semicolons = _text(tmp_path / "s.csv", [header.replace(",", ";")] + [r.replace(",", ";") for r in rows])
    with pytest.raises(InputError, match=r"s.csv: line 1: the line has one column .*wrong delimiter\? it looks ';'-separated"):
        _events("sessions", semicolons, delimiter=",")
    price = _text(tmp_path / "p.csv", ["user_id,item_id,event_type,timestamp,price", "u,i,view,2024-01-01,1", "u,i,view,2024-01-01,cheap"])
    with pytest.raises(InputError, match=r"p.csv line 3, column 'price': 1 value\(s\) are not numbers"):
        _events("events", price)
    latin = tmp_path / "l.csv"
    latin.write_bytes(b"user_id,item_id,event_type,timestamp\nu,i,view,2024-01-01\ncaf\xe9,i,view,2024-01-01\n")
    with pytest.raises(InputError, match=r"l.csv is not UTF-8 text: byte 0xe9 at offset 60 \(line 3\)"):
        _events("events", latin)
    assert _events("events", latin, encoding="latin-1")["user_id"].tolist() == ["u", "café"]


def _home(monkeypatch, tmp_path: Path, name: str):
    monkeypatch.setenv("SHOPREC_HOME", str(tmp_path / name))
    return load_settings()


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_data_in_any_file_type_lands_as_the_same_lake(tmp_path, monkeypatch):
    paths = _shop_variants(tmp_path / "in")
    lakes = {}
    for kind in ("csv", "tsv", "gzip", "zstd", "parquet"):
        settings = _home(monkeypatch, tmp_path, kind)
        report = ingest(paths[kind], "events", settings, catalog=SHOP / "items.csv")
        assert report.status == "accepted", (kind, report.failures)
        lakes[kind] = (report.batch_id, fingerprint(settings.lake_dir / "events"), fingerprint(settings.lake_dir / "items"),
                       lake.read_events(settings.lake_dir))
    first = lakes["csv"]
    assert len(first[3]) == 48
    for kind, (batch_id, events, items, frame) in lakes.items():
        assert (batch_id, events, items) == first[:3], kind
        pd.testing.assert_frame_equal(frame, first[3])


BAD_INPUTS = {
    "wrong delimiter": (lambda rows: [r.replace(",", ";") for r in rows], {"delimiter": ","}, "wrong delimiter? it looks ';'-separated"),
    "ragged row": (lambda rows: rows[:9] + [rows[9] + ",extra"] + rows[10:], {}, "line 10: expected 4 columns, got 5"),
    "header-less without --columns": (lambda rows: rows[1:], {}, "line 1: the first line looks like data"),
    "header-less, --no-header without names": (lambda rows: rows[1:], {"header": False}, "--no-header needs the column names"),
    "unparseable timestamp": (lambda rows: rows[:20] + [rows[20].replace("2016-05-", "2016-13-")] + rows[21:], {},
                              "line 21, column 'timestamp': 1 value(s) are not timestamps"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_refused_quarantined_and_leaves_the_lake_unchanged(settings, tmp_path, kind):
    assert ingest(SESSION_LOG, "sessions", settings).status == "accepted"
    before = fingerprint(settings.lake_dir)
    edit, options, message = BAD_INPUTS[kind]
    path = _text(tmp_path / "batch.csv", edit(SESSION_LOG.read_text().splitlines()))

    report = ingest(path, "sessions", settings, ReadOptions(**options))

    assert report.status == "refused" and report.stage == "read"
    assert any(message in f and "batch.csv" in f for f in report.failures), report.failures
    assert fingerprint(settings.lake_dir) == before
    quarantined = Path(report.quarantine)
    assert (quarantined / "input" / "batch.csv").read_bytes() == path.read_bytes()
    assert message in json.loads((quarantined / "validation.json").read_text())["failures"][0]


# ----------------------------------------------------------------------------- public layouts


LAYOUT_CASES = {
    # name: (format, path, events, {event type: count}, catalog items, a check on (events, items))
    "retailrocket": ("retailrocket", LAYOUTS / "retailrocket", 40, {"view": 29, "add_to_cart": 5, "purchase": 6}, 10,
                     lambda e, i: not i.set_index("item_id").loc["10572", "available"]
                     and i.set_index("item_id").loc["10572", "category"] == "1051"),
    "diginetica": ("diginetica", LAYOUTS / "diginetica", 39, {"view": 37, "purchase": 2}, 14,
                   lambda e, i: (e["user_id"] == e["session_id"]).all()
                   and e["timestamp"].iloc[0] == pd.Timestamp("2016-05-10", tz="UTC") + pd.Timedelta(milliseconds=53784)),
    "yoochoose": ("yoochoose", LAYOUTS / "yoochoose", 31, {"view": 29, "purchase": 2}, 0,
                  lambda e, i: e.loc[e["event_type"] == "purchase", "price"].isna().sum() == 1
                  and str(e["timestamp"].iloc[0]) == "2014-04-07 15:51:43.277000+00:00"),
    "amazon 2018": ("amazon", LAYOUTS / "amazon2018", 33, {"purchase": 33}, 11,
                    lambda e, i: "0001527665" in set(i["item_id"])
                    and i["price"].dropna().tolist() == [12.99, 1024.0, 7.49, 12.99, 7.49, 12.99]
                    and e["timestamp"].min() == pd.Timestamp(1441000000, unit="s", tz="UTC")),
    "amazon 2023": ("amazon", LAYOUTS / "amazon2023", 25, {"purchase": 25}, 10,
                    lambda e, i: e["timestamp"].min() == pd.Timestamp(1588687728923, unit="ms", tz="UTC")
                    and i["brand"].notna().all()),
    "movielens .dat": ("movielens", LAYOUTS / "movielens-1m", 25, {"purchase": 25}, 8,
                       lambda e, i: "Misérables, Les (1995)" in set(i["title"])
                       and i.set_index("item_id").loc["260", "title"].startswith("Star Wars: Episode IV")),
    "movielens .csv": ("movielens", LAYOUTS / "movielens-latest", 25, {"purchase": 25}, 8,
                       lambda e, i: i.set_index("item_id").loc["1", "attributes"] == ["Animation", "Children's", "Comedy"]),
    "movielens u.data": ("movielens", LAYOUTS / "movielens-100k" / "u.data", 25, {"purchase": 25}, 0,
                         lambda e, i: e["user_id"].str.startswith("10").all()),
    "recbole": ("recbole", LAYOUTS / "recbole", 25, {"purchase": 25}, 8,
                lambda e, i: i.set_index("item_id").loc["2", "title"] == "Jumanji"
                and i.set_index("item_id").loc["2", "category"] == "Adventure"),
    "session log TSV": ("sessions", LAYOUTS / "session-log-tsv" / "session_log.tsv", 36, {"view": 36}, 0,
                        lambda e, i: e["item_id"].str.fullmatch(r"\d{5}").all()),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_public_layouts_read_from_their_fixtures(case):
    fmt, path, n_events, types, n_items, check = LAYOUT_CASES[case]
    batch = read_batch(fmt, path)
    assert len(batch.events) == n_events
    assert batch.events["event_type"].value_counts().to_dict() == types
    assert len(batch.items) == n_items
    assert batch.events[["user_id", "item_id", "timestamp"]].notna().all().all()
    assert check(batch.events, batch.items)


@pytest.mark.parametrize("case", ["retailrocket", "diginetica", "yoochoose", "amazon 2018", "recbole"])
def test_public_layouts_pass_the_gate_into_the_lake(settings, case):
    fmt, path, n_events, *_ = LAYOUT_CASES[case]
    report = ingest(path, fmt, settings)
    assert report.status == "accepted", report.failures
    assert report.layout["format"] == fmt and len(lake.read_events(settings.lake_dir)) == report.counts["events"] > 0


def test_every_format_takes_the_same_overrides(tmp_path):
    """A user's option on top of a preset: a RecBole file with another delimiter, YOOCHOOSE clicks as
    purchases, and MovieLens ratings as views."""
    inter = LAYOUTS / "recbole" / "ml-mini.inter"
    comma = _text(tmp_path / "ml.inter", [line.replace("\t", ",") for line in inter.read_text().splitlines()])
    assert len(_events("recbole", comma, delimiter=",")) == 25
    clicks = _events("yoochoose", LAYOUTS / "yoochoose" / "yoochoose-clicks.dat", constants={"event_type": "purchase"})
    assert set(clicks["event_type"]) == {"purchase"}
    ratings = _events("movielens", LAYOUTS / "movielens-latest" / "ratings.csv", constants={"event_type": "view"})
    assert set(ratings["event_type"]) == {"view"}
    assert set(FORMATS) >= {"events", "sessions", "catalog", "retailrocket", "diginetica", "yoochoose", "amazon",
                            "movielens", "recbole", "s3rec"}


def test_retailrocket_item_properties_alone_are_a_catalog_update():
    batch = read_batch("retailrocket", LAYOUTS / "retailrocket" / "item_properties_part2.csv")
    assert len(batch.events) == 0 and len(batch.items) > 0
    assert set(batch.items.columns) >= {"item_id", "category", "available"}


# ----------------------------------------------------------------------------- catalog and CLI


def test_catalog_with_its_own_mapping(tmp_path):
    catalog = _text(tmp_path / "products.tsv", ["sku\tname\tcost\tin_stock"]
                    + [f"i{n:03d}\tThing {n}\t{n}.5\t{'no' if n == 3 else 'yes'}" for n in range(12)])
    options = ReadOptions(mapping={"item_id": "sku", "title": "name", "price": "cost", "available": "in_stock"})
    batch = read_batch("events", SHOP / "events.csv", catalog=catalog, catalog_options=options)
    items = batch.items.set_index("item_id")
    assert len(items) == 12 and items.loc["i003", "price"] == 3.5 and not items.loc["i003", "available"]
    bad = _text(tmp_path / "bad.csv", ["item_id,price", "i1,1", "i2,free"])
    with pytest.raises(InputError, match=r"bad.csv line 3, column 'price': 1 value\(s\) are not numbers"):
        read_batch("catalog", bad)


def test_cli_reading_options_and_catalog_only_update(settings, tmp_path):
    runner = CliRunner()
    log = _text(tmp_path / "views.dat", [";".join([r[2], r[3], "NA", r[0]]) for r in _session_rows()])
    args = ["ingest", "-f", "events", str(log), "--delimiter", ";", "--no-header", "--columns", "item,session,user,when",
            "--map", "item_id=item", "--map", "session_id=session", "--map", "user_id=user", "--map", "timestamp=when",
            "--set", "event_type=view", "--user-from-session", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "accepted" and report["counts"]["events"] == 36
    assert report["layout"]["parts"][0]["delimiter_source"] == "given"
    stored = lake.read_events(settings.lake_dir)
    assert (stored["user_id"] == stored["session_id"]).all()
    prices = _text(tmp_path / "prices.csv", ["sku,price,available"] + [f"{i},{n}.25,{str(n % 2 == 0).lower()}"
                                                                      for n, i in enumerate(sorted(set(stored['item_id'])))])
    update = runner.invoke(cli, ["ingest", "-f", "catalog", str(prices), "--map", "item_id=sku", "--json"])
    assert update.exit_code == 0, update.output
    assert json.loads(update.output)["counts"]["events"] == 0
    assert lake.read_items(settings.lake_dir)["price"].notna().all()
    assert len(lake.read_events(settings.lake_dir)) == 36


def test_cli_dry_run_shows_layout_mapping_rows_and_verdict_and_writes_nothing(settings):
    runner = CliRunner()
    path = LAYOUTS / "diginetica"
    result = runner.invoke(cli, ["ingest", "-f", "diginetica", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "delimiter ';' (preset)" in out and "user_id <- sessionId" in out and "timestamp <- timestamp" in out
    assert "first 5 row(s) as they would land" in out and "178943" in out
    assert "the gate would say: VALID diginetica" in out and "nothing was written" in out
    assert not settings.lake_dir.exists() and not settings.quarantine_dir.exists()
    as_json = json.loads(runner.invoke(cli, ["ingest", "-f", "sessions", str(SESSION_LOG), "--dry-run", "--json"]).output)
    assert as_json["preview"][0]["item_id"] == "00007" and as_json["gate"]["status"] == "valid"
    bad = runner.invoke(cli, ["ingest", "-f", "sessions", str(SESSION_LOG), "--dry-run", "--delimiter", ";"])
    assert bad.exit_code == 1 and "cannot read the source" in bad.output and not settings.quarantine_dir.exists()


def test_cli_rejects_malformed_options():
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-f", "events", str(SHOP), "--set", "event_type"]).exit_code == 2
    assert runner.invoke(cli, ["ingest", "-f", "events", str(SHOP), "--delimiter", "::"]).exit_code == 2
    help_text = runner.invoke(cli, ["ingest", "--help"]).output
    for flag in ("--delimiter", "--no-header", "--columns", "--map", "--set", "--timestamp-unit", "--user-from-session",
                 "--catalog", "--catalog-map", "--dry-run"):
        assert flag in help_text


def test_the_fast_iso_path_gives_what_pandas_gives_and_refuses_what_it_cannot_parse():
    from shoprec.reading.timestamps import parse_timestamps

    text = pd.Series(["2024-03-01T12:34:56Z", "2024-03-01T12:34:56.123456789+02:00", None, "2024-03-01T00:00:00-0500"],
                     dtype="string")
    expected = pd.to_datetime(text, utc=True, format="ISO8601")
    pd.testing.assert_series_equal(parse_timestamps(text, None), expected, check_names=False)
    mixed = pd.Series(["2024-03-01T12:34:56Z", "March 2, 2024", "not a date"], dtype="string")
    parsed = parse_timestamps(mixed, None)  # the cast refuses the chunk; pandas parses what it can
    assert parsed[1] == pd.Timestamp("2024-03-02", tz="UTC") and pd.isna(parsed[2])


def test_a_pandas_index_stored_in_parquet_is_not_read_as_a_column(tmp_path):
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "event_type": ["view", "view"],
                          "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)}, index=[7, 9])
    frame.to_parquet(tmp_path / "events.parquet")  # a non-range index: stored as __index_level_0__
    events = read_batch("events", tmp_path / "events.parquet").events
    assert events["user_id"].tolist() == ["a", "b"] and "__index_level_0__" not in events.columns


def test_parquet_files_with_their_columns_in_another_order_are_read_by_name(tmp_path):
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "event_type": ["view", "view"],
                          "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)})
    frame.iloc[:1].to_parquet(tmp_path / "part-1.parquet", index=False)
    frame.iloc[1:][["item_id", "user_id", "timestamp", "event_type"]].to_parquet(tmp_path / "part-2.parquet", index=False)
    events = read_batch("events", tmp_path).events
    assert events["user_id"].tolist() == ["a", "b"] and events["item_id"].tolist() == ["x", "y"]
