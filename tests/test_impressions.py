"""Impressions: the log (crash safety from the event log's machinery), attribution, the rates and the online test."""

from __future__ import annotations

import pandas as pd
import pytest

from shoprec import event_log, impressions as im, ledger
from shoprec.config import load_settings
from shoprec.impressions import ArmStats, Impression, Rate, arm_stats, attribute_frames, wilson
from shoprec.schema import conform_events
from training import online_test
from training.online_test import decide, two_proportion_z

T0 = pd.Timestamp("2026-12-01T10:00:00Z")
WINDOW = pd.Timedelta(minutes=30)


def at(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def impression(rid, minutes, user="u1", items=("i1", "i2", "i3"), session=None, arm="champion", shadow=False,
               version="v1", experiment="exp"):
    return Impression(rid, at(minutes), user, session, list(items), version, arm, experiment, shadow, False)


def impressions_frame(rows: list[Impression]) -> pd.DataFrame:
    return im.IMPRESSIONS.conform(im.impressions_table(rows).to_pandas())


def events_frame(rows: list[tuple]) -> pd.DataFrame:
    """(user, item, type, minutes[, price, quantity, session]) -> canonical events."""
    full = [(r + (None, None, None))[:7] for r in rows]
    return conform_events(pd.DataFrame({
        "user_id": [r[0] for r in full], "item_id": [r[1] for r in full], "event_type": [r[2] for r in full],
        "timestamp": [at(r[3]) for r in full], "price": [r[4] for r in full], "quantity": [r[5] for r in full],
        "session_id": [r[6] for r in full]}))


def links_frame(events: pd.DataFrame, named: dict[int, str]) -> pd.DataFrame:
    """Links of event rows (index -> recommendation id), made as the service makes them."""
    records = events.astype(object).where(events.notna(), None).to_dict("records")
    return im.LINKS.conform(im.links_table([(rid, records[i], T0) for i, rid in named.items()]).to_pandas())


def attributed(imps, events, links=None) -> pd.DataFrame:
    links = im.LINKS.empty() if links is None else links
    return attribute_frames(impressions_frame(imps), events, links, WINDOW).set_index("recommendation_id")


# --- attribution ------------------------------------------------------------------------------


def test_a_view_of_a_shown_item_within_the_window_is_a_click_of_the_latest_impression():
    imps = [impression("r1", 0), impression("r2", 5), impression("r3", 6, items=("i9",))]
    out = attributed(imps, events_frame([("u1", "i2", "view", 10)]))
    assert out["clicked"].to_dict() == {"r1": False, "r2": True, "r3": False}  # r3 did not show i2
    assert list(out.columns) == [c for c in im.ATTRIBUTION_COLUMNS if c != "recommendation_id"]


def test_outside_the_window_before_the_impression_or_another_user_is_not_attributed():
    imps = [impression("r1", 0)]
    events = events_frame([("u1", "i1", "view", 31),  # 31 minutes later: expired
                           ("u1", "i2", "view", -1),  # before the impression
                           ("u2", "i3", "view", 5),  # someone else
                           ("u1", "i7", "view", 5)])  # an item it did not show
    assert not attributed(imps, events)["clicked"].any()
    assert attributed(imps, events_frame([("u1", "i1", "view", 29.9)]))["clicked"].all()


def test_an_explicit_recommendation_id_wins_over_a_later_impression():
    imps = [impression("r1", 0), impression("r2", 5)]
    events = events_frame([("u1", "i1", "view", 10)])
    out = attributed(imps, events, links_frame(events, {0: "r1"}))
    assert out["clicked"].to_dict() == {"r1": True, "r2": False}


def test_an_unknown_or_expired_or_mismatched_explicit_id_falls_back_to_the_window_rule():
    imps = [impression("r1", 0), impression("r2", 40)]
    events = events_frame([("u1", "i1", "view", 45), ("u1", "i2", "view", 50), ("u1", "i3", "view", 52)])
    # unknown id; r1 expired (45 > 0 + 30); r2 did not show i9 (not an event here) -> all to r2 by the window rule
    out = attributed(imps, events, links_frame(events, {0: "nope", 1: "r1", 2: "r2"}))
    assert out["clicked"].to_dict() == {"r1": False, "r2": True}
    events = events_frame([("u1", "i1", "view", 45)])
    out = attributed([impression("r1", 0)], events, links_frame(events, {0: "r1"}))
    assert not out.loc["r1", "clicked"]  # expired, and no impression to fall back on


def test_an_explicit_id_counts_only_for_the_viewer_it_was_shown_to():
    imps = [impression("r1", 0, user="u1")]
    # u2 names u1's recommendation (a shared link, or a forged id), with an event id u1 also used
    events = events_frame([("u2", "i1", "view", 5)]).assign(event_id="e1")
    assert not attributed(imps, events, links_frame(events, {0: "r1"}))["clicked"].any()
    theirs = events_frame([("u1", "i2", "view", 6)]).assign(event_id="e1")
    both = pd.concat([events, theirs], ignore_index=True)
    assert attributed(imps, both, links_frame(both, {0: "r1", 1: "r1"}))["clicked"].to_dict() == {"r1": True}


def test_repeated_clicks_count_once_and_revenue_sums_the_purchases():
    imps = [impression("r1", 0)]
    events = events_frame([("u1", "i1", "view", 1), ("u1", "i1", "view", 2), ("u1", "i1", "add_to_cart", 3),
                           ("u1", "i1", "purchase", 4, 10.0, 2), ("u1", "i2", "purchase", 5, 5.5, None)])
    row = attributed(imps, events).loc["r1"]
    assert (row["clicked"], row["added"], row["purchased"]) == (True, True, True)
    assert row["revenue"] == pytest.approx(25.5)  # 10 x 2 + 5.5 x 1 (no quantity: one)
    stats = arm_stats(attribute_frames(impressions_frame(imps), events, im.LINKS.empty(), WINDOW))
    assert stats[0].ctr.successes == 1 and stats[0].impressions == 1


def test_an_anonymous_answer_is_matched_by_session_and_a_shadow_one_never_steals_an_event():
    imps = [impression("anon", 0, user=None, session="s1"),
            impression("shown", 1, user="u5"), impression("shadow", 1, user="u5", arm="b", shadow=True)]
    events = events_frame([("u9", "i1", "view", 2, None, None, "s1"), ("u5", "i2", "view", 3)])
    out = attributed(imps, events)
    assert out["clicked"].to_dict() == {"anon": True, "shown": True, "shadow": True}
    assert out.loc["shadow", "shadow"] and not out.loc["shown", "shadow"]


# --- the log ------------------------------------------------------------------------------------


def test_the_impression_log_survives_a_torn_write_and_compaction_keeps_each_once(tmp_path):
    sink = im.BackgroundLog(tmp_path, im.IMPRESSIONS, im.impressions_table)
    for k in range(20):
        assert sink.offer(impression(f"r{k}", k))
    sink.flush()
    sink.offer(impression("r3", 3))  # logged twice (e.g. a retried write): read once
    sink.flush()
    segment = next((tmp_path / "wal").glob("seg-*"))
    with open(segment, "ab") as handle:  # a crash in the middle of the next record
        handle.write(event_log.encode_record(im.impressions_table([impression("torn", 0)]), im.IMPRESSIONS)[:-7])
    frame = event_log.read_events(tmp_path, im.IMPRESSIONS)
    assert sorted(frame["recommendation_id"]) == sorted(f"r{k}" for k in range(20))
    assert list(frame.loc[frame["recommendation_id"] == "r5", "item_ids"].iloc[0]) == ["i1", "i2", "i3"]
    report = event_log.compact(tmp_path, fmt=im.IMPRESSIONS)
    assert report.events_written == 20 and report.duplicates_dropped == 1
    assert list((tmp_path / "impressions").glob("date=*/part-*.parquet"))
    assert len(event_log.read_events(tmp_path, im.IMPRESSIONS)) == 20


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    sink = im.BackgroundLog(tmp_path, im.IMPRESSIONS, im.impressions_table, max_queue=1)
    offered = [sink.offer(impression(f"r{k}", k)) for k in range(200)]
    sink.flush()
    assert sink.dropped == offered.count(False) > 0
    assert len(event_log.read_events(tmp_path, im.IMPRESSIONS)) == offered.count(True)


def test_an_erasure_scrubs_the_users_impressions_and_links(tmp_path):
    sink = im.BackgroundLog(tmp_path / "impressions", im.IMPRESSIONS, im.impressions_table)
    for k in range(6):
        sink.offer(impression(f"r{k}", k, user="gone" if k % 2 else "stays"))
    sink.flush()
    links = im.BackgroundLog(tmp_path / "links", im.LINKS, im.links_table)
    links.offer(("r1", {"user_id": "gone", "item_id": "i1", "event_type": "view", "timestamp": T0.isoformat()}, T0))
    links.flush()
    is_gone = lambda ids: ids == "gone"  # noqa: E731
    segment = next((tmp_path / "impressions" / "wal").glob("seg-*"))
    assert event_log.scrub_segment(segment, is_gone) == 3
    assert set(event_log.read_events(tmp_path / "impressions", im.IMPRESSIONS)["user_id"]) == {"stays"}
    links.offer(("r0", {"user_id": "stays", "item_id": "i1", "event_type": "view", "timestamp": T0.isoformat()}, T0))
    links.flush()
    assert event_log.scrub_segment(next((tmp_path / "links" / "wal").glob("seg-*")), is_gone) == 1
    assert event_log.read_events(tmp_path / "links", im.LINKS)["user_id"].tolist() == ["stays"]


def test_an_erased_user_who_still_asks_is_never_logged_again(tmp_path):
    settings = load_settings(home=tmp_path)
    sink = im.BackgroundLog(im.impression_log_dir(settings), im.IMPRESSIONS, im.impressions_table,
                            refine=im.without_erased(settings))
    sink.offer(impression("before", 0, user="gone"))
    sink.flush()
    ledger.record(settings, "gone")
    for k in range(4):
        sink.offer(impression(f"after{k}", k + 1, user="gone" if k % 2 else "stays"))
    sink.flush()
    logged = im.read_impressions(settings)
    assert logged["recommendation_id"].tolist() == ["before", "after0", "after2"]  # the erasure scrubs "before"


# --- statistics ------------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    assert wilson(50, 100) == Rate(50, 100, 0.5, pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    r = wilson(1, 5)
    assert (r.low, r.high) == (pytest.approx(0.0362, abs=1e-4), pytest.approx(0.6245, abs=1e-4))
    assert wilson(0, 10).low == pytest.approx(0.0, abs=1e-12) and wilson(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0).rate is None


def test_two_proportion_z_known_values():
    test = two_proportion_z(wilson(100, 1000), wilson(130, 1000))
    assert test.z == pytest.approx(2.1026, abs=1e-3) and test.p_value == pytest.approx(0.0355, abs=1e-3)
    assert two_proportion_z(wilson(0, 50), wilson(0, 50)).z is None


def stats(arm: str, clicks: int, n: int, shadow: bool = False) -> ArmStats:
    return ArmStats("exp", arm, shadow, ["v"], n, wilson(clicks, n), wilson(0, n), wilson(0, n), 0.0)


def experiment_settings(home=None, **extra):
    challengers = extra.pop("challengers", [{"name": "b", "version": "v2", "percent": 50}])
    home = {} if home is None else {"home": home}
    return load_settings(**home, experiments={"name": "exp", "challengers": challengers,
                                              "min_impressions_per_arm": 500, **extra})


def test_decide_continues_below_the_horizon_promotes_a_winner_stops_a_loser_and_a_draw():
    settings = experiment_settings()
    verdict = lambda a, b, n=1000: decide([stats("champion", a, n), stats("b", b, n)], settings).arms[0].verdict  # noqa: E731
    assert verdict(100, 200, n=400) == "continue"  # a clear gap, but under 500 impressions
    assert verdict(100, 140) == "promote"  # z = 2.8
    assert verdict(140, 100) == "stop"
    assert verdict(100, 110) == "stop"  # z = 0.73: no significant difference at the horizon
    decision = decide([stats("champion", 100, 1000), stats("b", 140, 1000)], settings)
    assert decision.promoted.version == "v2" and decision.arms[0].z == pytest.approx(2.752, abs=1e-3)


def test_two_challengers_split_alpha_and_only_the_best_winner_is_promoted():
    settings = experiment_settings(challengers=[{"name": "b", "version": "v2", "percent": 30},
                                                {"name": "c", "version": "v3", "percent": 30}])
    decision = decide([stats("champion", 100, 1000), stats("b", 150, 1000), stats("c", 170, 1000)], settings)
    assert [(a.arm, a.verdict) for a in decision.arms] == [("b", "stop"), ("c", "promote")]
    assert decision.arms[0].z_critical == pytest.approx(2.2414, abs=1e-3)  # alpha 0.05 / 2 challengers, two-sided
    borderline = decide([stats("champion", 100, 1000), stats("b", 133, 1000)], settings)  # z = 2.30 > 2.24
    assert borderline.arms[0].verdict == "promote"


def test_a_shadow_experiment_never_promotes():
    settings = experiment_settings(shadow=True)
    decision = decide([stats("champion", 100, 1000), stats("b", 300, 1000, shadow=True)], settings)
    assert decision.arms[0].verdict == "continue" and decision.promoted is None


def test_recorded_verdicts_are_final_per_experiment_and_arm(tmp_path):
    settings = experiment_settings(home=tmp_path)
    assert online_test.finished(settings, "exp") == {}
    online_test.record(decide([stats("champion", 100, 400), stats("b", 200, 400)], settings), settings)  # continue
    assert online_test.finished(settings, "exp") == {}
    online_test.record(decide([stats("champion", 140, 1000), stats("b", 100, 1000)], settings), settings)
    online_test.record(decide([stats("champion", 100, 1000), stats("b", 140, 1000)], settings), settings)
    assert online_test.finished(settings, "exp") == {"b": "stop"}  # the first final verdict stands
    # a stopped arm is judged no more: its frozen rate cannot win later against the champion's
    late = decide([stats("champion", 100, 5000), stats("b", 140, 1000)], settings, online_test.finished(settings, "exp"))
    assert late.arms == [] and late.promoted is None
    assert online_test.finished(settings, "another") == {}
