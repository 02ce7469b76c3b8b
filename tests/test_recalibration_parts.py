"""Pieces of the recalibration: the export as of a past date, drift, thresholds from targets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.ingest import as_of_view, load_crm
from training.drift import categorical_drift, conversion_shift, feature_drift, numeric_drift
from training.thresholds import f1_threshold, grade_bands, precision_threshold, top_share_threshold


def test_as_of_view_hides_the_future(small_crm_dir):
    crm = load_crm(small_crm_dir)
    moment = pd.Timestamp("2025-08-01")
    past = as_of_view(crm, moment)
    assert (past.leads["created_at"] < moment).all() and (past.activities["occurred_at"] < moment).all()
    assert (past.outcomes["closed_at"].dropna() < moment).all()
    closed_later = crm.outcomes[crm.outcomes["closed_at"] >= moment]["lead_id"]
    still_open = past.outcomes.set_index("lead_id").reindex(closed_later).dropna(subset=["status"])["status"]
    assert (still_open == "open").all() and len(still_open) > 0
    assert past.export_end == moment
    left_out = len(crm.activities) - len(past.activities)
    assert past.quarantine.notes[-1] == (
        f"the export as of 2025-08-01 (rows before it): {len(crm.leads) - len(past.leads):,} lead(s) created on or "
        f"after it and {left_out:,} activity row(s) on or after it, or of those leads, left out; "
        f"{len(still_open):,} outcome(s) closed on or after it read as still open then"
    )


def test_psi_is_zero_for_the_same_population_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(size=20_000)
    assert numeric_drift(base, rng.normal(size=20_000))[0] < 0.01
    assert numeric_drift(base, rng.normal(0.5, 1, size=20_000))[0] > 0.2
    with_missing = np.where(rng.random(20_000) < 0.3, np.nan, rng.normal(size=20_000))
    assert numeric_drift(base, with_missing)[0] > 0.5  # a new mass of missing values is drift
    a = pd.Series(rng.choice(["x", "y", None], 5000, p=[0.5, 0.3, 0.2]))
    assert categorical_drift(a, a.sample(frac=1, random_state=1))[0] == pytest.approx(0, abs=1e-12)
    assert categorical_drift(a, pd.Series(rng.choice(["x", "z"], 5000)))[0] > 1


def test_feature_drift_flags_and_orders():
    rng = np.random.default_rng(1)
    before = pd.DataFrame({"steady": rng.normal(size=5000), "moved": rng.normal(size=5000),
                           "kind": rng.choice(["a", "b"], 5000)})  # fmt: skip
    after = pd.DataFrame({"steady": rng.normal(size=5000), "moved": rng.normal(1, 1, size=5000),
                          "kind": rng.choice(["a", "b"], 5000)})  # fmt: skip
    table = feature_drift(before, after, threshold=0.2)
    assert table["feature"].iloc[0] == "moved" and table.set_index("feature")["drifted"].to_dict() == {
        "moved": True, "steady": False, "kind": False}  # fmt: skip
    assert conversion_shift(np.array([0, 0, 0, 1]), np.array([0, 1]))["shift"] == pytest.approx(0.25)
    # Two points on 1,000 leads a period is sampling noise (z 1.3); on 100,000 it is not (z 13).
    small = conversion_shift(np.r_[np.ones(120), np.zeros(880)], np.r_[np.ones(140), np.zeros(860)])
    assert small["shift"] == pytest.approx(0.02) and small["z"] == pytest.approx(1.33, abs=0.01)
    large = conversion_shift(np.r_[np.ones(12_000), np.zeros(88_000)], np.r_[np.ones(14_000), np.zeros(86_000)])
    assert large["shift"] == pytest.approx(0.02) and large["z"] == pytest.approx(13.3, abs=0.1)
    assert conversion_shift(np.zeros(10), np.zeros(10))["z"] == 0 and conversion_shift(np.zeros(3), [])["z"] == 0
    # The same examples from a quarter as many leads (each at several snapshots): a quarter of the evidence.
    fewer = conversion_shift(np.r_[np.ones(12_000), np.zeros(88_000)], np.r_[np.ones(14_000), np.zeros(86_000)],
                             25_000, 25_000)  # fmt: skip
    assert fewer["shift"] == pytest.approx(0.02) and fewer["z"] == pytest.approx(large["z"] / 2, rel=1e-9)


def test_thresholds_from_targets():
    rng = np.random.default_rng(2)
    scores = np.round(rng.uniform(0, 100, 20_000), 1)
    label = (rng.uniform(0, 100, 20_000) < scores).astype(int)  # P(convert) = score / 100
    mql = top_share_threshold(scores, 0.2)
    assert (scores >= mql).mean() == pytest.approx(0.2, abs=0.005)
    sql = precision_threshold(scores, label, precision=0.9, min_leads=50)
    above = scores >= sql
    assert label[above].mean() >= 0.9 and label[scores >= sql - 5].mean() < 0.9 + 0.05
    assert precision_threshold(scores, label, precision=1.01, min_leads=1) is None
    assert 0 < f1_threshold(scores, label) < 100
    bands, table = grade_bands(scores, label, {"A": 0.1, "B": 0.2, "C": 0.3, "D": 0.4})
    assert list(bands) == ["A", "B", "C", "D"] and bands["D"] == 0
    rates = [table[g]["conversion"] for g in bands]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == 4
    assert table["A"]["share"] == pytest.approx(0.1, abs=0.01)


def test_grade_bands_merge_grades_whose_conversion_is_not_ordered():
    scores = np.array([90.0] * 50 + [70.0] * 50 + [40.0] * 100 + [10.0] * 200)
    label = np.array([1] * 20 + [0] * 30 + [1] * 30 + [0] * 20 + [1] * 20 + [0] * 80 + [1] * 10 + [0] * 190)
    bands, table = grade_bands(scores, label, {"A": 0.125, "B": 0.125, "C": 0.25, "D": 0.5})
    # A (40%) converts less than B (60%): they merge, and the letters close up.
    assert list(bands) == ["A", "B", "C"] and table["A"]["leads"] == 100  # the 90s and the 70s
    rates = [table[g]["conversion"] for g in bands]
    assert rates == sorted(rates, reverse=True)


def test_a_new_sql_threshold_is_never_below_the_new_mql_one(params):
    """A quarter whose converters score low proposed "MQL 10.0 → 4.1, SQL 25.0 → 2.0": leads sales
    would get that marketing would not hand over."""
    from types import SimpleNamespace

    from training.recalibrate import new_thresholds

    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0, 10, 2_000), 1)
    label = ((scores < 2) | (rng.uniform(size=2_000) < 0.3)).astype(int)  # the lowest scores convert most
    champion = SimpleNamespace(scorer=SimpleNamespace(metadata={"criteria": params.criteria.model_dump(mode="json")}))
    found = new_thresholds(scores, label, champion, params)
    mql, sql = found["criteria"]["mql"]["min_score"], found["criteria"]["sql"]["min_score"]
    assert sql == mql and "raised to the MQL threshold" in found["sql_rule"], found["sql_rule"]


def test_a_recalibrated_model_takes_the_rules_of_the_params_file_and_says_what_changed(params):
    """A hand-raise type, a next action and the ICP match edited by an admin were dropped by the
    recalibration, which copied the champion's rules (an older champion's also lacked the
    hand-raise MQL that params.yaml turns on)."""
    from types import SimpleNamespace

    from training.recalibrate import new_thresholds

    old = params.criteria.model_dump(mode="json")
    old["mql"]["hand_raise_qualifies"], old["mql"]["min_score"] = False, 7.5
    old["next_actions"]["SQL"] = "Call today"
    del old["disqualify"]["recycle_after_days"]
    champion = SimpleNamespace(scorer=SimpleNamespace(metadata={"criteria": old}))
    rng = np.random.default_rng(4)
    scores = np.round(rng.uniform(0, 60, 3_000), 1)
    found = new_thresholds(scores, (rng.uniform(size=3_000) < scores / 80).astype(int), champion, params)
    assert found["criteria"]["mql"]["hand_raise_qualifies"] is True
    assert found["criteria"]["next_actions"]["SQL"] == params.criteria.next_actions["SQL"]
    assert found["rule_changes"] == [
        "criteria.disqualify.recycle_after_days: null → 120",
        "criteria.mql.hand_raise_qualifies: false → true",
        f'criteria.next_actions.SQL: "Call today" → "{params.criteria.next_actions["SQL"]}"',
    ]  # the recomputed MQL score is not a rule change
    # The profile the ICP match counts is the params file's too, and listed when it changed.
    icp = {**params.features.icp.model_dump(mode="json"), "countries": ["Germany"]}
    champion.scorer.spec = SimpleNamespace(settings={"features": {"icp": icp}})
    found = new_thresholds(scores, (rng.uniform(size=3_000) < scores / 80).astype(int), champion, params)
    assert found["rule_changes"][-1].startswith('features.icp.countries: ["Germany"] → ["United States", ')


def test_the_report_page_shows_text_from_the_data_as_text():
    # A feature or model name is data: markup in it must show, not run, on the manager's page.
    from training.report_page import report_page

    page = report_page("# Report\n\n| feature | PSI |\n|---|---|\n| <script>alert(1)</script> | 0.300 |\n")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<h1>Report</h1>" in page and "<th>feature</th>" in page and "<td>0.300</td>" in page


def test_an_older_params_files_lock_path_names_the_same_lock():
    """Older params files said `models/recalibrate.lock` (from the project folder); read under
    the models folder it became models/models/recalibrate.lock, and a rollback with that file
    went ahead in the middle of a training run holding the other."""
    from features.tracking import MODELS_DIR, lock_path

    assert lock_path("models/recalibrate.lock") == lock_path("recalibrate.lock") == MODELS_DIR / "recalibrate.lock"
    assert lock_path("locks/team.lock") == MODELS_DIR / "locks" / "team.lock"
    assert lock_path("/srv/leadscore/team.lock") == Path("/srv/leadscore/team.lock")


def test_training_says_when_it_replaces_the_champions_recalibrated_thresholds(params):
    """`train` took params.yaml's MQL 10 / SQL 25 over a recalibrated champion's 13.6 / 31.8
    without a word."""
    from training.pipeline import replaced_thresholds
    from training.register import ChampionCheck

    ours = params.criteria.model_dump(mode="json")
    recalibrated = {**ours, "mql": {**ours["mql"], "min_score": 13.6}, "sql": {**ours["sql"], "min_score": 31.8}}
    bands = dict(params.grades)
    fitted = {"A": 39.4, "B": 16.3, "C": 6.1, "D": 0.0}
    said = replaced_thresholds(ChampionCheck("4", 0.81, "", criteria=recalibrated, grade_bands=fitted), ours, bands)
    assert said.startswith(
        "champion v4 qualifies MQL from score 13.6 and SQL from 31.8 with grades from 39.4/16.3/6.1/0;"
    )
    assert "takes the params file's 10 and 25, grades 60/35/15/0" in said and "run `leadscore recalibrate`" in said
    assert replaced_thresholds(ChampionCheck("4", 0.81, "", criteria=ours, grade_bands=bands), ours, bands) is None
    assert replaced_thresholds(ChampionCheck(None, None, "no champion yet"), ours, bands) is None


def test_a_flat_champion_is_not_recalibrated_from_an_export_folder(params, tmp_path, monkeypatch):
    """It trained a CRM challenger for minutes against a flat champion (ROC AUC 0.5 on the export,
    every lead graded D) and would have registered it under the flat model's name."""
    from types import SimpleNamespace

    from training import recalibrate as recalibration

    flat = SimpleNamespace(kind="flat", version="3", scorer=SimpleNamespace(metadata={"data_source": "Leads.csv"}))
    monkeypatch.setattr(recalibration, "load_champion", lambda name: flat)
    monkeypatch.setattr(recalibration, "prepare_crm", lambda *a, **k: pytest.fail("it began to build examples"))
    with pytest.raises(recalibration.RecalibrationError, match=r"x-education's champion \(v3\) is a flat model"):
        recalibration.recalibrate(params, model_name="x-education", data=tmp_path)


def test_drift_compares_new_leads_with_new_leads(small_crm_dir):
    """The newest quarter holds only leads first seen in it; the training part also every older
    lead still open. Drift reads new leads on both sides, each once, at its first snapshot."""
    from features.params import load_params
    from training.pipeline import prepare_crm
    from training.recalibrate import first_sightings

    dataset = prepare_crm(small_crm_dir, load_params())
    reference, recent = first_sightings(dataset, 30)
    ages, part, keys = dataset.features["lead_age_days"], dataset.split.assignment, dataset.keys
    for chosen, parts in ((reference, {"train", "valid"}), (recent, {"test"})):
        assert chosen.any() and (ages[chosen] <= 30).all() and set(part[chosen]) <= parts
        assert not keys.loc[chosen, "lead_id"].duplicated().any()
    at_first = (keys["as_of"] == keys.groupby("lead_id")["as_of"].transform("min")).to_numpy()
    assert (recent == (at_first & (part == "test").to_numpy())).all()  # every lead of the quarter, once
    older = part.isin(["train", "valid"]).to_numpy() & ~reference
    seen_once = keys.loc[older, "lead_id"].isin(keys.loc[reference, "lead_id"]).to_numpy()
    assert ((ages[older].to_numpy() > 30) | seen_once).all()  # older leads left out, and each lead once


def test_drift_on_a_few_hundred_leads_counts_only_shifts_beyond_sampling_noise():
    """130 new leads a quarter: ten bins of 13 made unchanged features pass PSI 0.2 on most small
    exports. Only a shift beyond the noise of those sizes counts, and a real one still does."""
    rng = np.random.default_rng(4)

    def sample(size: int, shift: float = 0.0) -> pd.DataFrame:
        counts = rng.poisson(1.5 + shift, size=(size, 20)).astype(float)
        skewed = np.where(rng.random((size, 20)) < 0.6, np.nan, rng.exponential(30.0 + 30 * shift, (size, 20)))
        return pd.DataFrame(np.hstack([counts, skewed]), columns=[f"f{i}" for i in range(40)])

    reference, recent = sample(500), sample(130)
    steady = feature_drift(reference, recent, threshold=0.2)
    assert not steady["drifted"].any(), steady.head()
    ten_bins = [numeric_drift(reference[c].to_numpy(), recent[c].to_numpy(), bins=10)[0] for c in reference]
    assert max(ten_bins) >= 0.2  # what ten bins and the threshold alone flagged
    # A country-like column, three common levels and 25 rare ones: a rare level missing from 130
    # leads by chance read as drift in 14% of unchanged draws through the share floor.
    countries = [f"c{i}" for i in range(28)]
    shares = np.r_[[0.2, 0.2, 0.2], np.full(25, 0.4 / 25)]
    drawn = [feature_drift(pd.DataFrame({"country": rng.choice(countries, 540, p=shares)}),
                           pd.DataFrame({"country": rng.choice(countries, 130, p=shares)}), threshold=0.2)
             for _ in range(100)]  # fmt: skip
    assert sum(bool(table["drifted"].any()) for table in drawn) <= 1
    # One stray spelling on one side is pooled too, not a cell of its own on the share floor.
    lone = categorical_drift(pd.Series(["x"] * 60 + ["y"] * 70), pd.Series(["x"] * 60 + ["y"] * 70 + ["Y "]))[0]
    assert lone < 0.01
    moved = feature_drift(sample(500), sample(130, shift=1.0), threshold=0.2)
    counts_moved = moved.set_index("feature").loc[[f"f{i}" for i in range(20)]]  # a mean of 1.5 → 2.5, on 130
    assert counts_moved["drifted"].all() and counts_moved["moved"].str.contains("median").all()


def test_what_moved_and_export_breaks_in_words():
    from training.drift import sudden_breaks, what_moved

    before = pd.Series(["Event"] * 10 + ["Search"] * 85 + [None] * 5)
    after = pd.Series(["Event"] * 10 + ["Search"] * 40 + ["LinkedIn"] * 30 + [None] * 20)
    assert what_moved(before, after) == "blank 5% → 20%, Search 85% → 40%, LinkedIn new → 30%"
    revenue = pd.Series(np.linspace(1e6, 5e7, 100))
    assert what_moved(revenue, revenue / 1000) == "median 25,500,000 → 25,500"
    old = pd.DataFrame({"industry": before, "revenue": revenue})
    blanked = pd.DataFrame({"industry": [None] * 60 + ["Search"] * 40, "revenue": revenue * 3})
    assert sudden_breaks(old, blanked) == ["industry blank for 60% of new leads (was 5%)"]
    assert sudden_breaks(old, old.assign(revenue=revenue / 1000)) == ["revenue median 25,500,000 → 25,500"]
    assert sudden_breaks(old.head(40), blanked.head(40)) == []  # too few leads to tell a step


def test_a_lock_that_cannot_be_taken_is_named_as_such(tmp_path):
    """A read-only models folder read as "registry ... not usable" in `rollback` and `promote`."""
    from training.recalibrate import LockUnavailable, exclusive

    (tmp_path / "afile").write_text("")
    refused = pytest.raises(LockUnavailable, match=r"cannot take the lock \S+afile/recalibrate\.lock: .* writable")
    with refused, exclusive(tmp_path / "afile" / "recalibrate.lock", job="rollback"):
        pass
    with exclusive(tmp_path / "recalibrate.lock", job="rollback"):  # a writable folder: taken
        assert (tmp_path / "recalibrate.lock").read_text() == f"rollback pid {os.getpid()}"


def test_a_recalibration_that_stops_early_still_ends_the_runs_a_killed_process_left(params, tmp_path, monkeypatch):
    """The next `train` ended a run left RUNNING by a `kill -9`; a scheduled recalibration that
    stopped early (no new data, no champion) did not, so such runs stayed RUNNING all quarter."""
    import socket

    import mlflow
    from mlflow.tracking import MlflowClient

    from training.abandoned import PROCESS_TAG
    from training.recalibrate import RecalibrationError, recalibrate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment(params.mlflow.experiment)
    # A pid no process has (above the kernel's pid_max), on this machine.
    killed = client.create_run(experiment, tags={PROCESS_TAG: f"{socket.gethostname()} 99999999 1.00"}).info.run_id
    with pytest.raises(RecalibrationError, match="nothing to recalibrate against"):
        recalibrate(params, model_name="no-such-model", data=tmp_path)
    assert client.get_run(killed).info.status == "KILLED"


def test_a_process_is_told_by_its_start_time_within_a_tolerance_not_its_text():
    """The start time psutil gives moves with the wall clock by milliseconds: compared as text,
    ".125" could read ".12" when tagged and ".13" when checked, and a live run be ended."""
    import os
    import socket

    import psutil

    from training.abandoned import START_TOLERANCE_SECONDS, _alive, this_process

    host, pid, started = socket.gethostname(), os.getpid(), psutil.Process().create_time()
    assert _alive(this_process()) is True
    assert _alive(f"{host} {pid} {started + 0.005:.2f}") is True  # a few milliseconds off
    assert _alive(f"{host} {pid} {started + 2 * START_TOLERANCE_SECONDS:.2f}") is False  # a later process, same pid
    assert _alive(f"{host} 99999999 {started:.2f}") is False  # no such process
    assert _alive(f"other-{host} {pid} {started:.2f}") is None and _alive(f"{host} {pid} soon") is None


def test_a_recalibration_that_promoted_then_failed_records_the_promotion(tmp_path):
    """Its summary.json said "decision": "failed" (exit 2): a scheduler keyed on the decision missed
    that @champion had moved."""
    import json

    from training.cli import _record_failure

    _record_failure(tmp_path, "v2 was promoted (v1 is @previous), but the run or report could not be written", 2,
                    promoted=True)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["decision"] == "promoted, not recorded" and summary["exit_code"] == 2
    assert "Recalibration promoted; its record is incomplete" in (tmp_path / "report.md").read_text()
