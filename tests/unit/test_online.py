"""Online experiments: sticky assignment, what a request shows, the log writer under a failing
sink, the join's quarantine, and the always-valid test's error rate."""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pandas as pd
import pytest

from shopflow.core.errors import ConfigError
from shopflow.online.events import Event, Recent, event_records, problems_with
from shopflow.online.experiment import BUCKETS, ExperimentSpec, assign, bucket_of, read_experiment
from shopflow.online.join import join_logs
from shopflow.online.router import Ranked, explore, impression, unit_of
from shopflow.online.sequential import ab_sample_size, msprt, preference_sample_size
from shopflow.online.sinks import FileSink, read_files
from shopflow.online.writer import LogWriter

pytestmark = pytest.mark.unit
START = "2026-12-01T00:00:00+00:00"


def spec(mode: str = "interleave", share: float = 1.0) -> ExperimentSpec:
    return ExperimentSpec(
        id="exp-1",
        salt="salt-0123456789",
        mode=mode,
        champion="shopflow:a",
        challenger="shopflow:b",
        share=share,
        started_at=START,
    )


def test_assignment_is_sticky_salted_and_splits_as_designed():
    s = spec("ab", share=0.5)
    units = [f"u_{i:016x}" for i in range(20_000)]
    arms = [assign(s, u).arm for u in units]
    assert arms == [assign(s, u).arm for u in units]  # sticky: no state, same answer
    shares = pd.Series(arms).value_counts(normalize=True)
    assert abs(shares["outside"] - 0.5) < 0.02
    assert abs(shares["champion"] - 0.25) < 0.02 and abs(shares["challenger"] - 0.25) < 0.02
    other = ExperimentSpec(**{**s.model_dump(), "salt": "another-salt-xyz"})
    moved = np.mean([assign(other, u).arm != a for u, a in zip(units, arms, strict=True)])
    assert moved > 0.4  # a new salt reshuffles
    assert 0 <= bucket_of("s", "u") < BUCKETS
    assert assign(s, None).arm == "outside" and assign(None, "u").arm == "outside"


def test_a_bad_experiment_file_names_the_field(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({**spec().model_dump(), "share": 1.5}))
    with pytest.raises(ConfigError, match="share"):
        read_experiment(path)
    path.write_text(json.dumps({**spec().model_dump(), "challenger": "shopflow:a"}))
    with pytest.raises(ConfigError, match="both shopflow:a"):
        read_experiment(path)
    with pytest.raises(ConfigError, match="no experiment file"):
        read_experiment(tmp_path / "missing.json")


def test_exploration_swaps_the_top_result_with_logged_propensities():
    rng = np.random.default_rng(0)
    swaps = [explore(10, 0.2, rng) for _ in range(5000)]
    explored = [s for s in swaps if s[2] is not None]
    assert abs(len(explored) / 5000 - 0.2) < 0.02
    order, props, at = explored[0]
    assert order[0] == at - 1 and order[at - 1] == 0
    assert props[0] == pytest.approx(0.2 / 9) and props[at - 1] == pytest.approx(0.2 / 9)
    assert explore(10, 0.2, rng)[1][0] in (pytest.approx(0.8), pytest.approx(0.2 / 9))
    positions = pd.Series([s[2] for s in explored]).value_counts(normalize=True)
    assert set(positions.index) == set(range(2, 11))


def ranked(prefix: str, version: str) -> Ranked:
    ids = [f"{prefix}{i}" for i in range(10)]
    return Ranked(ids, list(np.linspace(1, 0, 10)), version, 5.0)


def test_interleaved_impressions_credit_each_item_to_its_team_and_replay_from_their_id():
    s = spec("interleave")
    unit = unit_of("u_0000000000000001", None)
    a = assign(s, unit[0])
    kwargs = {
        "surface": "search",
        "query": "q",
        "k": 10,
        "unit": unit,
        "assignment": a,
        "spec": s,
        "champion": ranked("c", "a"),
        "challenger": ranked("x", "b"),
        "exploration_rate": 0.0,
        "latency_ms": 10.0,
        "impression_id": "ab" * 16,
    }
    one = impression(**kwargs)
    assert [i.product_id for i in one.items] == [i.product_id for i in impression(**kwargs).items]
    teams = [i.team for i in one.items]
    assert teams.count("challenger") == 5 and teams.count("champion") == 5
    assert all((i.team == "challenger") == i.product_id.startswith("x") for i in one.items)
    shadow = impression(
        **{**kwargs, "spec": spec("shadow"), "assignment": assign(spec("shadow"), unit[0])}
    )
    assert [i.product_id for i in shadow.items] == [f"c{i}" for i in range(10)]
    assert shadow.shadow_product_ids == [f"x{i}" for i in range(10)]


def test_events_are_checked_against_what_was_shown_and_retries_are_not_double_counted():
    shown, seen = Recent(10), Recent(10)
    shown.remember("a" * 32, ["p1", "p2"])
    good = Event(event_id="e1", impression_id="a" * 32, type="click", product_id="p2", position=2)
    wrong = Event(event_id="e2", impression_id="a" * 32, type="click", product_id="p1", position=2)
    past = Event(event_id="e3", impression_id="a" * 32, type="click", product_id="p1", position=5)
    assert problems_with([good], shown) == []
    found = problems_with([good, wrong, past], shown)
    assert "events[1].product_id" in found[0] and "events[2].position" in found[1]
    unseen = Event(
        event_id="e4", impression_id="b" * 32, type="purchase", product_id="p9", position=1
    )
    records, dups = event_records([good, unseen], shown, seen)
    assert dups == 0 and [r["impression_seen"] for r in records] == [True, False]
    records, dups = event_records([good], shown, seen)
    assert records == [] and dups == 1


class FlakySink:
    def __init__(self, fail: bool) -> None:
        self.fail, self.rows = fail, []

    def write(self, records):
        if self.fail:
            raise ConnectionError("sink is gone")
        self.rows.extend(records)

    def close(self):
        pass


def test_the_writer_never_raises_and_counts_what_a_dead_or_slow_sink_loses():
    dead = LogWriter(
        FlakySink(True), queue_size=50, batch_size=10, flush_interval_s=0.05, retries=1
    )
    dropped = dead.submit([{"kind": "impression", "i": i} for i in range(80)])
    assert len(dropped) == 30  # over the queue: counted at once
    assert dead.flush(10)
    counts = dead.snapshot()
    assert counts == {"impression.dropped": 30, "impression.lost": 50}
    dead.close()
    live = LogWriter(FlakySink(False), queue_size=1000, batch_size=7, flush_interval_s=0.05)
    live.submit([{"kind": "event", "i": i} for i in range(100)])
    assert live.flush(10) and live.snapshot() == {"event.written": 100}
    assert [r["i"] for r in live.sink.rows] == list(range(100))
    live.close()


def test_the_file_sink_partitions_by_hour_and_the_reader_skips_a_torn_line(tmp_path):
    sink = FileSink(tmp_path, rotate_mb=0.001)
    records = [
        {
            "kind": "impression",
            "impression_id": f"{i:032x}",
            "timestamp": f"2026-12-01T0{i % 2}:00:00+00:00",
            "pad": "x" * 100,
        }
        for i in range(40)
    ]
    sink.write(records)
    parts = sorted(tmp_path.glob("impressions/date=2026-12-01/hour=*/*.jsonl"))
    assert {p.parent.name for p in parts} == {"hour=00", "hour=01"}
    with parts[-1].open("a") as f:
        f.write('{"kind": "impre')  # a crash mid-write
    read, torn = read_files(tmp_path, "impression")
    assert len(read) == 40 and torn == 1
    sink.write(records[:5])
    assert len(sorted(tmp_path.glob("impressions/*/*/*.jsonl"))) > len(parts)  # rotated


def logged(s: ExperimentSpec, n_units: int = 3):
    imps, events = [], []
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    for u in range(n_units):
        unit = f"u_{u:016x}"
        a = assign(s, unit)
        imp = impression(
            surface="search",
            query="q",
            k=10,
            unit=(unit, "user"),
            assignment=a,
            spec=s,
            champion=ranked("c", "a"),
            challenger=ranked("x", "b"),
            exploration_rate=0.0,
            latency_ms=5.0,
        ).as_record()
        imp["timestamp"] = (t0 + dt.timedelta(minutes=u)).isoformat()
        imps.append(imp)
    return imps, events, t0


def test_the_join_attributes_good_events_and_quarantines_each_bad_kind():
    s = spec("interleave")
    imps, _, t0 = logged(s)
    first = imps[0]
    item = first["items"][0]

    def event(eid, **kw):
        base = {
            "event_id": eid,
            "impression_id": first["impression_id"],
            "type": "click",
            "product_id": item["product_id"],
            "position": 1,
            "timestamp": (t0 + dt.timedelta(seconds=30)).isoformat(),
            "received_at": (t0 + dt.timedelta(seconds=31)).isoformat(),
        }
        return {**base, **kw}

    events = [
        event("ok"),
        event("ok"),  # a retried batch reached the log twice
        event("unknown", impression_id="f" * 32),
        event("early", timestamp=(t0 - dt.timedelta(seconds=5)).isoformat()),
        event("late", timestamp=(t0 + dt.timedelta(hours=2)).isoformat()),
        event("elsewhere", position=2),
    ]
    tampered = {**imps[1], "arm": "champion"}  # not the arm its unit hashes to
    joined = join_logs(
        pd.DataFrame([imps[0], tampered, imps[2], imps[0]]), pd.DataFrame(events), 30, s
    )
    c = joined.counts
    assert c["impression_duplicates"] == 1 and c["impressions_quarantined"] == 1
    assert c["events_attributed"] == 1 and c["event_duplicates"] == 1
    reasons = dict(zip(joined.quarantine["id"], joined.quarantine["reason"], strict=True))
    assert reasons == {
        tampered["impression_id"]: "arm_mismatch",
        "unknown": "unknown_impression",
        "early": "before_impression",
        "late": "after_window",
        "elsewhere": "not_shown",
    }
    row = joined.events.iloc[0]
    assert row["team"] == item["team"] and row["unit"] == first["unit"]


def test_msprt_keeps_false_positives_under_alpha_when_read_every_night():
    rng = np.random.default_rng(7)
    false = 0
    for _ in range(300):
        x = rng.choice([-1.0, 1.0], 2000)
        nightly = [msprt(x[:n], tau=0.1).p_value for n in range(100, 2001, 100)]
        false += min(nightly) <= 0.05
    assert false / 300 <= 0.05
    planted = rng.choice([-1.0, 1.0], 3000, p=[0.42, 0.58])
    result = msprt(planted, tau=0.1)
    assert result.p_value < 0.01 and result.mean > 0


def test_sample_sizes_match_the_textbook():
    # two-proportion z-test, 10% vs 12%, alpha 0.05, power 0.8: 3,841 per arm (Fleiss)
    assert ab_sample_size(0.10, 0.12, 0.05, 0.8) / 2 == pytest.approx(3841, rel=0.01)
    assert preference_sample_size(0.5, 1.0, 0.05, 0.8) == float("inf")
    assert preference_sample_size(0.6, 0.5, 0.05, 0.8) == pytest.approx(
        2 * preference_sample_size(0.6, 1.0, 0.05, 0.8)
    )


def test_logs_are_written_in_the_background_within_the_flush_interval(tmp_path):
    writer = LogWriter(FileSink(tmp_path), flush_interval_s=0.05)
    started = time.perf_counter()
    writer.submit([{"kind": "event", "event_id": "e", "timestamp": START, "received_at": START}])
    assert time.perf_counter() - started < 0.05  # submit never waits for the disk
    assert writer.flush(5)
    writer.close()
    assert len(read_files(tmp_path, "event")[0]) == 1


def search_impression(s, unit: str, challenger, **extra):
    """A search impression of `unit` under experiment `s`: the champion ranks c0.., the
    challenger `challenger` (None: it was not asked, or failed), no exploration."""
    return impression(
        surface="search",
        query="q",
        k=10,
        unit=(unit, "user"),
        assignment=assign(s, unit),
        spec=s,
        champion=ranked("c", "a"),
        challenger=challenger,
        exploration_rate=0.0,
        latency_ms=5.0,
        **extra,
    )


def interleaved_logs(p_challenger: float, units: int, seed: int = 0):
    """Interleaved impressions of `units` units, each with one click on the team a biased coin
    picks: the challenger with probability `p_challenger`."""
    s = spec("interleave")
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    imps, events = [], []
    for u in range(units):
        unit = f"u_{u:016x}"
        imp = search_impression(s, unit, ranked("x", "b")).as_record()
        stamp = t0 + dt.timedelta(seconds=u)
        imp["timestamp"] = stamp.isoformat()
        imps.append(imp)
        team = "challenger" if rng.random() < p_challenger else "champion"
        item = next(i for i in imp["items"] if i["team"] == team)
        events.append(
            {
                "event_id": f"e{u}",
                "impression_id": imp["impression_id"],
                "type": "click",
                "product_id": item["product_id"],
                "position": item["position"],
                "timestamp": (stamp + dt.timedelta(seconds=5)).isoformat(),
                "received_at": (stamp + dt.timedelta(seconds=6)).isoformat(),
            }
        )
    return s, join_logs(pd.DataFrame(imps), pd.DataFrame(events), 30, s)


def test_the_decision_promotes_a_preferred_challenger_stops_a_worse_one_and_waits_on_noise():
    from shopflow.core.config import load_params
    from shopflow.online.decision import decide

    cfg = load_params().online.decision
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    s, better = interleaved_logs(0.65, 600)
    verdict = decide(better, s, cfg, now)
    assert verdict["decision"] == "promote" and verdict["preference"]["win_rate"] > 0.55
    s, worse = interleaved_logs(0.35, 600)
    assert decide(worse, s, cfg, now)["decision"] == "stop"
    s, same = interleaved_logs(0.5, 600, seed=3)
    assert decide(same, s, cfg, now)["decision"] == "continue"
    late = now + dt.timedelta(days=cfg.max_days)
    stopped = decide(same, s, cfg, late)
    assert stopped["decision"] == "stop" and "undecided" in stopped["reasons"][0]


def test_a_preferred_challenger_slower_than_the_latency_ratio_allows_is_stopped():
    from shopflow.core.config import load_params
    from shopflow.online.decision import decide

    cfg = load_params().online.decision
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    s, better = interleaved_logs(0.65, 600)
    for factor in (1.2, 3.0):  # the challenger's latency as a multiple of the champion's
        imps = better.impressions
        slower = imps.assign(challenger_latency_ms=imps["champion_latency_ms"] * factor)
        verdict = decide(type(better)(slower, better.events, better.quarantine), s, cfg, now)
        ratio = verdict["guardrails"]["p95_latency_ratio"]
        assert ratio["value"] == pytest.approx(factor)
        assert ratio["ok"] == (factor <= cfg.max_p95_ratio)
        if ratio["ok"]:
            assert verdict["decision"] == "promote"
        else:
            assert verdict["decision"] == "stop"
            assert "p95_latency_ratio" in verdict["reasons"][0]


def test_empty_logs_join_and_decide_without_error():
    from shopflow.core.config import load_params
    from shopflow.online.decision import decide

    s = spec()
    imps, _, t0 = logged(s)
    lone_event = {
        "event_id": "e",
        "impression_id": "a" * 32,
        "type": "click",
        "product_id": "p",
        "position": 1,
        "timestamp": t0.isoformat(),
        "received_at": t0.isoformat(),
    }
    cfg = load_params().online.decision
    for impressions, events in (
        (pd.DataFrame(), pd.DataFrame()),
        (pd.DataFrame(imps), pd.DataFrame()),
        (pd.DataFrame(), pd.DataFrame([lone_event])),
    ):
        joined = join_logs(impressions, events, 30, s)
        assert joined.counts["events_attributed"] == 0
        assert (
            decide(joined, s, cfg, dt.datetime(2026, 12, 2, tzinfo=dt.UTC))["decision"]
            == "continue"
        )


def test_a_failing_challenger_shows_the_champion_and_its_error_rate_stops_the_experiment():
    from shopflow.core.config import load_params
    from shopflow.online.decision import decide

    s, joined = interleaved_logs(0.65, 300)
    unit = "u_00000000000000ff"
    failed = search_impression(s, unit, None, challenger_error="RuntimeError: out of memory")
    assert [i.product_id for i in failed.items] == [f"c{i}" for i in range(10)]
    assert {i.team for i in failed.items} == {None} and failed.challenger_version is None
    broken = pd.concat(
        [joined.impressions, pd.DataFrame([failed.as_record()] * 10)], ignore_index=True
    )
    cfg = load_params().online.decision
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    verdict = decide(
        type(joined)(broken.assign(timestamp=pd.Timestamp(now)), joined.events, joined.quarantine),
        s,
        cfg,
        now,
    )
    rate = verdict["guardrails"]["challenger_error_rate"]
    assert rate["failed"] == 10 and not rate["ok"]
    assert verdict["decision"] == "stop" and "challenger_error_rate" in verdict["reasons"][0]
