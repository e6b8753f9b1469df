"""The ingestion step end to end: accepted batches reach the lake, refused ones only quarantine."""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shoprec import lake
from shoprec.adapters import read_batch
from entrypoints.cli import cli
from shoprec.ingest import ingest, validate_only

FIXTURES = Path(__file__).parent / "fixtures"
SHOP = FIXTURES / "shop"


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under folder with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_beauty_ingests_exactly(settings, beauty_dir):
    report = ingest(beauty_dir, "s3rec", settings)
    assert report.status == "accepted", report.failures
    counts = {k: report.counts[k] for k in ("events", "users", "items", "catalog_items")}
    assert counts == {"events": 198_502, "users": 22_363, "items": 12_101, "catalog_items": 12_101}
    assert report.counts["first_event"] < report.counts["last_event"]
    assert report.counts["titles"] > 12_000
    stored = lake.read_events(settings.lake_dir)
    assert (len(stored), stored["user_id"].nunique(), stored["item_id"].nunique()) == (198_502, 22_363, 12_101)
    catalog = lake.read_items(settings.lake_dir)
    assert len(catalog) == 12_101 and catalog["title"].notna().sum() == report.counts["titles"]
    assert report.metadata["synthetic_timestamps"] is True
    assert json.loads(Path(report.validation).read_text())["success"] is True


@pytest.mark.parametrize("fmt, path, events", [
    ("retailrocket", FIXTURES / "retailrocket_events.csv", 40),
    ("sessions", FIXTURES / "session_log.csv", 36),
    ("events", SHOP, 48),
])
def test_fixture_layouts_ingest_into_the_lake(settings, fmt, path, events):
    report = ingest(path, fmt, settings)
    assert report.status == "accepted", report.failures
    assert report.counts["events"] == events == len(lake.read_events(settings.lake_dir))
    assert Path(report.docs).exists() and Path(report.validation).exists()
    assert lake.batch_records(settings.lake_dir)[0]["metadata"]["cleaning"]["rows_in"] == events


def test_reingesting_the_same_batch_changes_nothing(settings):
    first = ingest(SHOP, "events", settings)
    before = fingerprint(settings.lake_dir / "events")
    second = ingest(SHOP, "events", settings)
    assert second.batch_id == first.batch_id and fingerprint(settings.lake_dir / "events") == before


def _csv_with(tmp_path: Path, edit) -> Path:
    """A copy of the shop fixture whose events frame went through ``edit``."""
    folder = tmp_path / "batch"
    shutil.copytree(SHOP, folder)
    frame = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(folder / "events.csv", index=False)
    return folder


def _set(column, value, rows=slice(0, 3)):
    def edit(frame):
        frame.loc[frame.index[rows], column] = value
        return frame
    return edit


def _future(frame):
    frame.loc[:2, "timestamp"] = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)).isoformat()
    return frame


def _raw(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder


def _truncated_parquet(tmp_path: Path) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    frame = pd.read_csv(SHOP / "events.csv", dtype=str)
    pq.write_table(pa.Table.from_pandas(frame), folder / "events.parquet")
    data = (folder / "events.parquet").read_bytes()
    (folder / "events.parquet").write_bytes(data[: len(data) * 2 // 3])
    return folder


CORRUPTIONS = {
    "nulls": (lambda t: _csv_with(t, _set("user_id", "")), "validate", "user_id is missing: 3 of 48 rows"),
    "wrong types": (lambda t: _csv_with(t, _set("price", "cheap")), "read", "'price': 3 value(s) are not numbers"),
    "unknown event type": (lambda t: _csv_with(t, _set("event_type", "click")), "validate", "event_type is not one of"),
    "future timestamps": (lambda t: _csv_with(t, _future), "validate", "in the future"),
    "negative prices": (lambda t: _csv_with(t, _set("price", "-4.5")), "validate", "price is negative"),
    "missing column": (lambda t: _csv_with(t, lambda f: f.drop(columns=["item_id"])), "read", "missing required column(s): item_id"),
    "extra column": (lambda t: _csv_with(t, lambda f: f.assign(colour="red")), "read", "unexpected column(s): colour"),
    "empty file": (lambda t: _raw(t, "events.csv", b""), "read", "events.csv is empty"),
    "non-UTF-8 bytes": (lambda t: _raw(t, "events.csv", (SHOP / "events.csv").read_bytes().replace(b"404", b"4\xe904")),
                        "read", "not UTF-8 text: byte 0xe9"),
    "truncated Parquet": (_truncated_parquet, "read", "not a readable Parquet file"),
    "unknown items": (lambda t: _csv_with(t, _set("item_id", "nope", slice(0, 10))), "validate", "item_id is not in the catalog: 10 of 48"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupted_batch_is_refused_quarantined_and_lake_unchanged(settings, tmp_path, kind):
    lake.write_batch(settings.lake_dir, read_batch("events", SHOP))  # the lake already holds a batch
    before = fingerprint(settings.lake_dir)
    make, stage, message = CORRUPTIONS[kind]
    path = make(tmp_path)

    report = ingest(path, "events", settings)

    assert report.status == "refused" and report.stage == stage
    assert any(message in f for f in report.failures), report.failures
    assert message in report.summary()
    assert fingerprint(settings.lake_dir) == before
    quarantined = Path(report.quarantine)
    assert quarantined.parent == settings.quarantine_dir
    assert fingerprint(quarantined / "input") == fingerprint(path)  # the raw input, byte for byte
    result = json.loads((quarantined / "validation.json").read_text())
    assert result["success"] is False and any(message in f for f in result["failures"])
    assert html.escape(message) in (quarantined / "report.html").read_text()
    assert (quarantined / "data-docs" / "index.html").exists() == (stage == "validate")


def test_validate_only_writes_nothing(settings, tmp_path):
    report = validate_only(_csv_with(tmp_path, _set("event_type", "click")), "events", settings)
    assert report.status == "refused" and "event_type is not one of" in report.summary()
    assert validate_only(SHOP, "events", settings).status == "valid"
    assert not settings.lake_dir.exists() and not settings.quarantine_dir.exists()


def test_cli_help_lists_options():
    runner = CliRunner()
    for command in ("ingest", "validate", "generate"):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "--json" in result.output
    assert "--map" in runner.invoke(cli, ["ingest", "--help"]).output


def test_cli_ingest_json_and_refusal_exit_code(settings, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["ingest", "--format", "events", str(SHOP), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["counts"]["events"] == 48
    bad = runner.invoke(cli, ["ingest", "-f", "events", str(_csv_with(tmp_path, _set("price", "-1")))])
    assert bad.exit_code == 1 and "REFUSED" in bad.output and "price is negative" in bad.output
    checked = runner.invoke(cli, ["validate", "-f", "events", str(SHOP), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.output)["status"] == "valid"
    # the lake now holds the shop's catalog: a log of other items is refused, not mixed in
    foreign = runner.invoke(cli, ["validate", "-f", "sessions", str(FIXTURES / "session_log.csv")])
    assert foreign.exit_code == 1 and "item_id is not in the catalog: 36 of 36 rows" in foreign.output


def test_cli_column_mapping(settings, tmp_path):
    path = tmp_path / "clicks.csv"
    pd.DataFrame({"visitor": ["a", "b"], "product": ["p1", "p2"], "action": ["view", "view"],
                  "ts": [1700000000000, 1700000001000]}).to_csv(path, index=False)
    args = ["ingest", "-f", "events", str(path), "--map", "user_id=visitor", "--map", "item_id=product",
            "--map", "event_type=action", "--map", "timestamp=ts", "--timestamp-unit", "ms"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert lake.read_events(settings.lake_dir)["user_id"].tolist() == ["a", "b"]
    assert CliRunner().invoke(cli, ["ingest", "-f", "events", str(path), "--map", "nonsense"]).exit_code == 2


def test_cli_generate_then_ingest(settings, tmp_path):
    runner = CliRunner()
    out = tmp_path / "shop"
    generated = runner.invoke(cli, ["generate", "--events", "2000", "--seed", "3", "--out", str(out), "--json"])
    assert generated.exit_code == 0, generated.output
    assert json.loads(generated.output)["events"] == 2000
    ingested = runner.invoke(cli, ["ingest", "-f", "events", str(out), "--json"])
    assert ingested.exit_code == 0, ingested.output
    assert json.loads(ingested.output)["status"] == "accepted"


def test_cli_out_of_staging_memory_is_a_clear_error_that_writes_nothing(settings, tmp_path, monkeypatch):
    """Not the batch's fault, so not quarantined: the error names the settings, nothing is written."""
    runner = CliRunner()
    out = tmp_path / "shop"
    assert runner.invoke(cli, ["generate", "--events", "20000", "--seed", "3", "--out", str(out)]).exit_code == 0
    monkeypatch.setenv("SHOPREC_INGEST__STAGING_MEMORY_LIMIT", "1MB")
    monkeypatch.setenv("SHOPREC_INGEST__STAGING_THREADS", "1")
    result = runner.invoke(cli, ["ingest", "-f", "events", str(out)])
    assert result.exit_code == 1 and "SHOPREC_INGEST__STAGING_MEMORY_LIMIT" in result.output, result.output
    assert "Traceback" not in result.output
    assert not list(settings.lake_dir.rglob("*.parquet")) and not list(settings.quarantine_dir.glob("*"))
    assert out.joinpath("events.parquet").exists()  # the batch is where it was, for a retry


def test_cli_ingests_a_catalog_only_batch(settings, tmp_path):
    """A shop's catalog update alone (items.csv, no events) passes the gate into the lake."""
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-f", "events", str(SHOP)]).exit_code == 0
    update = tmp_path / "catalog-update"
    update.mkdir()
    items = pd.read_csv(SHOP / "items.csv", dtype=str)
    items.loc[0, "available"] = "False"
    items.to_csv(update / "items.csv", index=False)
    result = runner.invoke(cli, ["ingest", "--format", "events", str(update), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "accepted" and report["counts"]["events"] == 0
    assert report["item_states_pushed"] is None  # no feature store set up in this home
    catalog = lake.read_items(settings.lake_dir).set_index("item_id")
    assert not catalog.loc[items.loc[0, "item_id"], "available"]
    assert len(lake.read_events(settings.lake_dir)) == 48


# --- chunked (streamed) ingestion -----------------------------------------------------------------
def _export_with_duplicates(tmp_path: Path) -> Path:
    """A generated shop as a CSV export, with 2% of its rows sent twice (cleaning has work to do)."""
    from simulator.shop import generate

    batch = generate(4000, seed=3, days=4)
    events = pd.concat([batch.events, batch.events.sample(80, random_state=1)]).sort_index(kind="stable")
    folder = tmp_path / "export"
    folder.mkdir()
    events.to_csv(folder / "events.csv", index=False)
    batch.items.assign(attributes=batch.items["attributes"].map("|".join)).to_csv(folder / "items.csv", index=False)
    return folder


def _lake_content(lake_dir: Path) -> dict[str, pa.Table]:
    files = sorted(lake_dir.glob("events/date=*/*.parquet")) + sorted(lake_dir.glob("items/*.parquet"))
    return {str(f.relative_to(lake_dir)): pq.read_table(f) for f in files}


def test_chunked_ingest_lands_the_same_lake_as_a_whole_file_ingest(tmp_path, monkeypatch):
    from shoprec.config import load_settings

    export = _export_with_duplicates(tmp_path)
    whole = load_settings(home=tmp_path / "whole").with_overrides(cleaning={"k_core": 3}, ingest={"chunk_rows": 10**9})
    chunked = whole.with_overrides(home=tmp_path / "chunked", ingest={"chunk_rows": 97})
    one, many = ingest(export, "events", whole), ingest(export, "events", chunked)

    assert one.status == many.status == "accepted", (one.failures, many.failures)
    assert one.batch_id == many.batch_id and one.counts == many.counts and one.cleaning == many.cleaning
    assert one.cleaning["duplicates_removed"] >= 80 and one.cleaning["k_core_events_removed"] > 0
    assert one.lake_files == many.lake_files and len(one.lake_files) >= 5  # 4+ day files and the catalog
    expected, got = _lake_content(whole.lake_dir), _lake_content(chunked.lake_dir)
    assert list(expected) == list(got)
    for name, table in expected.items():
        assert got[name].equals(table), name
    gate = json.loads(Path(many.validation).read_text())["results"]["events"]
    assert gate["rows"] == one.cleaning["rows_in"] and gate["chunks_failed"] == 0  # every row was checked


def test_a_bad_row_in_the_last_chunk_refuses_and_quarantines_the_whole_batch(tmp_path):
    from shoprec.config import load_settings

    export = _export_with_duplicates(tmp_path)
    events = pd.read_csv(export / "events.csv", dtype=str, keep_default_na=False)
    events.loc[len(events) - 2, "event_type"] = "teleport"
    events.to_csv(export / "events.csv", index=False)
    settings = load_settings(home=tmp_path / "home").with_overrides(ingest={"chunk_rows": 500})

    report = ingest(export, "events", settings)

    assert report.status == "refused" and report.stage == "validate"
    failure = next(f for f in report.failures if "event_type is not one of" in f)
    assert f"1 of {len(events)} rows" in failure and "teleport" in failure
    assert f"row {len(events) - 1:,} of the batch" in failure  # 1-based: the second-to-last row
    assert not list(settings.lake_dir.glob("events/**/*.parquet"))  # the good chunks did not land either
    assert (Path(report.quarantine) / "input" / "events.csv").exists()


def test_a_refused_glob_batch_quarantines_every_file_it_read_and_its_catalog(settings, tmp_path):
    events = pd.read_csv(SHOP / "events.csv", dtype=str, keep_default_na=False)
    half = len(events) // 2
    events.iloc[:half].to_csv(tmp_path / "part-1.csv", index=False)
    bad = events.iloc[half:].copy()
    bad.iloc[0, bad.columns.get_loc("event_type")] = "teleport"
    bad.to_csv(tmp_path / "part-2.csv", index=False)

    report = ingest(str(tmp_path / "part-*.csv"), "events", settings, catalog=SHOP / "items.csv")

    assert report.status == "refused" and report.stage == "validate", report.failures
    copied = Path(report.quarantine) / "input"
    assert sorted(p.name for p in copied.iterdir()) == ["items.csv", "part-1.csv", "part-2.csv"]
    assert (copied / "part-2.csv").read_bytes() == (tmp_path / "part-2.csv").read_bytes()
