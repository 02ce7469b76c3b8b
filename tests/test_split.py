import numpy as np
import pandas as pd

from training.examples import build_examples, snapshot_moments
from training.split import split_by_time, split_stratified


def test_examples_are_open_leads_at_each_snapshot_with_horizon_labels(params):
    leads = pd.DataFrame(
        {
            "lead_id": ["A", "B", "C"],
            "created_at": pd.to_datetime(["2025-01-01 09:00", "2025-01-20", "2025-03-01"], format="ISO8601"),
        }
    )
    outcomes = pd.DataFrame({
        "lead_id": ["A", "B", "C"],
        "status": ["converted", "lost", "open"],
        "closed_at": pd.to_datetime(["2025-03-10", "2025-01-25", None]),
    })  # fmt: skip
    end = pd.Timestamp("2025-06-01")
    ex = build_examples(leads, outcomes, end, params.features)
    moments = snapshot_moments(leads["created_at"].min(), end, params.features)
    assert moments[0] == pd.Timestamp("2025-01-01") and (moments + pd.Timedelta(days=30) <= end).all()
    a = ex[ex.lead_id == "A"].set_index("as_of")["label"]
    # A is open at Jan 31 and Mar 2 and converts on Mar 10: within 30 days of Mar 2 only.
    assert a.to_dict() == {pd.Timestamp("2025-01-31"): 0, pd.Timestamp("2025-03-02"): 1}
    assert "B" not in set(ex.lead_id)  # closed before its first snapshot
    assert (ex[ex.lead_id == "C"]["label"] == 0).all() and len(ex[ex.lead_id == "C"]) == 3


def test_time_split_keeps_each_lead_on_one_side_and_purges_horizons(small_crm_dir, params):
    from features.ingest import load_crm

    crm = load_crm(small_crm_dir)
    ex = build_examples(crm.leads, crm.outcomes, crm.export_end, params.features)
    report = split_by_time(ex, params.split, params.features.horizon_days)
    part = report.assignment
    sides = ex.assign(part=part)[part != ""].groupby("lead_id")["part"].nunique()
    assert (sides == 1).all()
    horizon = pd.Timedelta(days=params.features.horizon_days)
    assert ex.as_of[part == "train"].max() + horizon <= ex.as_of[part == "valid"].min()
    assert ex.as_of[part == "valid"].max() + horizon <= ex.as_of[part == "test"].min()
    assert set(part) == {"train", "valid", "test", ""}


def test_stratified_holdout_keeps_the_rate(params):
    y = pd.Series((np.random.default_rng(1).random(1000) < 0.3).astype(int))
    part = split_stratified(y, params.split).assignment
    rates = y.groupby(part).mean()
    assert np.allclose(rates, y.mean(), atol=0.02)
    assert part.value_counts().to_dict() == {"train": 600, "valid": 200, "test": 200}


def test_the_described_boundaries_are_those_of_the_windows(params):
    days = pd.date_range("2025-01-01", "2025-06-30", freq="D")
    examples = pd.DataFrame({"lead_id": [f"lead{i}" for i in range(len(days))], "as_of": days})
    report = split_by_time(examples, params.split, 0)
    test_after = (days.max() - pd.Timedelta(days=params.split.test_days)).date()
    valid_after = (days.max() - pd.Timedelta(days=params.split.test_days + params.split.valid_days)).date()
    assert f"test = leads first seen after {test_after}, validation after {valid_after}" in report.description
    assert report.windows["test"][0] == str(test_after + pd.Timedelta(days=1))
    assert report.windows["valid"][0] == str(valid_after + pd.Timedelta(days=1))
    # The moments the model page gives as its periods are in the training output too.
    windows = [f"{report.windows[name][0]} to {report.windows[name][1]} ({name})" for name in ("test", "train")]
    assert report.description.endswith(f"; examples as of {windows[0]}, {report.windows['valid'][0]} to "
                                       f"{report.windows['valid'][1]} (validation), {windows[1]}")  # fmt: skip


def test_a_test_set_too_small_to_judge_fails_its_gate(params):
    from training.register import ChampionCheck, check_gates

    lucky = {"roc_auc": 1.0, "ece": 0.0, "n": 6, "positives": 4}
    gates = check_gates(params.gates, lucky, 0.9, ChampionCheck(None, None, "no champion yet"))
    small = next(g for g in gates if g.name == "min_test_examples_per_class")
    assert not small.passed and small.detail == "test rows: 4 converted, 2 not converted vs minimum 20 of each"
    enough = check_gates(params.gates, {**lucky, "n": 60, "positives": 25}, 0.9, ChampionCheck(None, None, ""))
    assert next(g for g in enough if g.name == "min_test_examples_per_class").passed


def test_the_champion_is_compared_when_only_its_technologies_differ(champion_store, small_crm_dir, monkeypatch):
    # The technologies are learned from each export: one of the champion's that is not among
    # this export's used to leave the "not worse than the champion" gate unchecked.
    from features.params import load_params
    from training.pipeline import prepare_crm
    from training.register import champion_auc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    dataset = prepare_crm(small_crm_dir, load_params())
    test = (dataset.split.assignment == "test").to_numpy()
    features, label = dataset.features[test], dataset.label[test].to_numpy()
    technology = next(c for c in features.columns if c.startswith("uses_"))
    same = champion_auc("svc-model", "crm", features, label)
    other = champion_auc("svc-model", "crm", features.drop(columns=technology), label)
    assert same.auc is not None and other.auc is not None and f"{technology} read as 0" in other.note
    assert abs(same.auc - other.auc) < 0.05
    industry = champion_auc("svc-model", "crm", features.drop(columns="industry"), label)
    assert industry.auc is None and "industry" in industry.note  # other columns are a real difference


def test_an_export_without_activities_cannot_replace_a_champion_that_learned_from_engagement(
    champion_store, small_crm_dir, tmp_path, monkeypatch
):
    # With no activity every lead reads as never engaged: the champion, scored on such rows, can lose
    # to a model of fit attributes alone, which a cut-short export would then promote.
    import shutil

    from features.params import load_params
    from training.pipeline import prepare_crm
    from training.register import champion_auc, check_gates

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    export = shutil.copytree(small_crm_dir, tmp_path / "export")
    header = (export / "activities.csv").read_text(encoding="utf-8").splitlines()[0]
    (export / "activities.csv").write_text(header + "\n", encoding="utf-8")
    params = load_params()
    dataset = prepare_crm(export, params)
    assert not dataset.has_activities and prepare_crm(small_crm_dir, params).has_activities
    test = (dataset.split.assignment == "test").to_numpy()
    features, label = dataset.features[test], dataset.label[test].to_numpy()
    check = champion_auc("svc-model", "crm", features, label, export_has_activities=dataset.has_activities)
    assert check.engagement_missing and check.auc is None and "no usable activity" in check.note
    passing = {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}
    gate = next(g for g in check_gates(params.gates, passing, 0.85, check) if g.name == "activities_like_champion")
    assert not gate.passed and "champion v" in gate.detail


def test_an_export_whose_leads_lack_columns_the_champion_learned_from_cannot_replace_it(
    champion_store, small_crm_dir, tmp_path, monkeypatch
):
    """A leads.csv without BANT, seniority and industry: the champion, scored with them blank,
    lost to a model that never saw them, and a recalibration promoted it without a word."""
    import shutil

    from features.params import load_params
    from features.schema import LEAD_FEATURE_INPUTS
    from training.pipeline import prepare_crm
    from training.register import champion_auc, check_gates

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    params = load_params()
    full = prepare_crm(small_crm_dir, params)
    assert full.settings["lead_columns"] == list(LEAD_FEATURE_INPUTS)  # kept with the champion
    export = shutil.copytree(small_crm_dir, tmp_path / "export")
    leads = pd.read_csv(export / "leads.csv", dtype=str, keep_default_na=False)
    dropped = ["budget", "authority", "need", "timeline", "seniority"]
    leads.drop(columns=dropped).assign(industry="").to_csv(export / "leads.csv", index=False)
    dataset = prepare_crm(export, params)
    assert any(note.startswith("leads.csv: no value in column(s) industry, seniority, budget") for note in
               dataset.quarantine.notes), dataset.quarantine.notes  # fmt: skip
    test = (dataset.split.assignment == "test").to_numpy()
    check = champion_auc("svc-model", "crm", dataset.features[test], dataset.label[test].to_numpy(),
                         lead_columns=dataset.settings["lead_columns"])  # fmt: skip
    assert check.columns_missing and check.auc is None, check
    assert "no value in industry, seniority, budget, authority, need, timeline, which champion v" in check.note
    passing = {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}
    gate = next(g for g in check_gates(params.gates, passing, 0.85, check) if g.name == "lead_columns_like_champion")
    assert not gate.passed
    # The whole export compares as before.
    same = champion_auc("svc-model", "crm", full.features[(full.split.assignment == "test").to_numpy()],
                        full.label[(full.split.assignment == "test").to_numpy()].to_numpy(),
                        lead_columns=full.settings["lead_columns"])  # fmt: skip
    assert same.auc is not None and not same.columns_missing


def test_a_champion_that_cannot_be_loaded_is_not_replaced_unseen(champion_store, params, monkeypatch):
    """An artifact store down for a minute made the comparison "pass": a worse model replaced the champion."""
    import mlflow

    from training.register import champion_auc, check_gates

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)

    def store_down(*args, **kwargs):
        raise ConnectionError("artifact store http://127.0.0.1:18603 refused the connection")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", store_down)
    check = champion_auc("svc-model", "crm", pd.DataFrame(), np.array([0, 1]))
    assert check.uncompared and check.auc is None and "refused the connection" in check.note, check
    passing = {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}
    gate = next(g for g in check_gates(params.gates, passing, 0.85, check) if g.name == "max_auc_drop_vs_champion")
    assert not gate.passed and "not promoted" in gate.detail


def test_a_gain_just_under_its_minimum_never_reads_as_the_minimum(params):
    from training.register import ChampionCheck, check_gates

    test = {"roc_auc": 0.8, "ece": 0.01, "n": 400, "positives": 100}
    gates = check_gates(params.gates, test, 0.8 + 0.010036, ChampionCheck(None, None, "no champion yet"))
    gate = next(g for g in gates if g.name == "min_auc_gain_vs_baseline")
    assert not gate.passed and gate.detail == "gain over the better baseline -0.01004 vs minimum -0.01"
    # An ECE just over its maximum read "0.0500 vs maximum 0.05" and failed.
    over = {**test, "ece": params.gates.max_test_ece + 0.00004}
    gate = next(
        g for g in check_gates(params.gates, over, 0.7, ChampionCheck(None, None, "")) if g.name == "max_test_ece"
    )
    assert not gate.passed and gate.detail == f"test ECE {params.gates.max_test_ece + 0.00004:.5f} vs maximum 0.05"


def test_a_champion_whose_features_this_engine_cannot_rebuild_is_not_replaced_unseen(
    champion_store, params, monkeypatch
):
    """On the Dask engine a champion of other feature settings went uncompared, and was replaced."""
    from training.register import champion_auc, check_gates

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)

    def cluster_only(settings, technologies):
        raise NotImplementedError("the Dask engine does not rebuild features with another model's settings")

    check = champion_auc("svc-model", "crm", pd.DataFrame(), np.array([0, 1]), features_for=cluster_only)
    assert check.uncompared and "train with the local engine" in check.note, check
    passing = {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}
    gate = next(g for g in check_gates(params.gates, passing, 0.85, check) if g.name == "max_auc_drop_vs_champion")
    assert not gate.passed


def test_a_champion_that_learned_from_this_runs_test_leads_is_not_compared_on_them(
    champion_store, champion, params, monkeypatch
):
    """A run on an older cut of the export was gated on the champion's AUC on leads it had
    learned from (above the Bayes AUC), and failed on that in-sample figure."""
    from training.register import champion_auc, check_gates

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    learned_to = pd.Timestamp(champion.scorer.metadata["training_window"][1])
    day = pd.Timedelta(days=1)
    for start, in_sample in ((learned_to - 30 * day, True), (learned_to, True), (learned_to + day, False)):
        window = (str(start.date()), str((start + 60 * day).date()))
        check = champion_auc("svc-model", "crm", pd.DataFrame(), np.array([0, 1]), test_window=window,
                             features_for=lambda settings, technologies: None)  # fmt: skip
        assert check.uncompared == in_sample and ("it learned from some of these test leads" in check.note) == in_sample
        if in_sample:
            gates = check_gates(params.gates, {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}, 0.8, check)
            gate = next(g for g in gates if g.name == "max_auc_drop_vs_champion")
            assert not gate.passed and f"this run's test period starts {window[0]}" in gate.detail


def test_a_leads_file_ending_months_before_the_activities_is_named_as_the_cause(small_crm_dir, tmp_path, params):
    """Newer leads missing (a leads file cut short, or exported over fewer months) left the newest
    periods empty, and the error blamed too little history."""
    import shutil

    import pytest

    from features.ingest import DataError
    from training.pipeline import prepare_crm, train_and_register

    export = shutil.copytree(small_crm_dir, tmp_path / "export")
    leads = pd.read_csv(export / "leads.csv", dtype=str, keep_default_na=False)
    created = pd.to_datetime(leads["created_at"], errors="coerce", format="mixed")
    leads[created.isna() | (created < "2025-06-01")].to_csv(export / "leads.csv", index=False)
    dataset = prepare_crm(export, params)
    with pytest.raises(DataError, match=r"no lead is first seen after 2025-0[56]-\d\d, yet the export runs to 2025-"):
        train_and_register(dataset, params, model_name="never-registered")
    # The whole export splits as before.
    assert {"train", "valid", "test"} <= set(prepare_crm(small_crm_dir, params).split.assignment)


def test_versions_tested_on_other_leads_are_told_apart():
    """`leadscore versions` listed test figures of other periods side by side as if comparable."""
    from training.split import SplitReport, tested_on
    from training.versions import VersionInfo, tested_apart

    timed = SplitReport(pd.Series(["train", "test"]), "", {"test": ("2026-07-24", "2026-09-22")}, 0)
    holdout = SplitReport(pd.Series(["train", "test", "test"]), "", {}, 0, by_time=False)
    assert tested_on(timed, "abcdef0123") == "2026-07-24 to 2026-09-22"
    assert tested_on(holdout, "abcdef0123") == "holdout of 2 rows of data abcdef01"

    def version(period):
        return VersionInfo("1", [], pd.Timestamp("2026-12-06", tz="UTC"), "run", test_period=period)

    assert not tested_apart([version("2026-07-24 to 2026-09-22"), version("2026-07-24 to 2026-09-22")])
    assert not tested_apart([version("2026-07-24 to 2026-09-22"), version(None)])  # trained before it was kept
    assert tested_apart([version("2026-07-24 to 2026-09-22"), version("2026-04-25 to 2026-06-23")])


def test_closes_missing_from_the_newest_weeks_are_named(small_crm_dir, tmp_path, params):
    """An outcomes.csv exported weeks before the other files left the newest snapshot's
    conversions out: its leads read as not converted, with no word why."""
    import shutil

    from training.pipeline import closes_missing_late, prepare_crm

    horizon = params.features.horizon_days
    whole = prepare_crm(small_crm_dir, params)
    assert closes_missing_late(whole.keys, whole.label, horizon) is None

    export = shutil.copytree(small_crm_dir, tmp_path / "export")
    outcomes = pd.read_csv(export / "outcomes.csv", dtype=str, keep_default_na=False)
    closed = pd.to_datetime(outcomes["closed_at"], errors="coerce", format="mixed")
    cut = whole.export_end - pd.Timedelta(days=40)
    outcomes[closed.isna() | (closed < cut)].to_csv(export / "outcomes.csv", index=False)
    early = prepare_crm(export, params)
    assert early.export_end == whole.export_end  # the leads still reach the export's end
    note = closes_missing_late(early.keys, early.label, horizon)
    newest = early.keys["as_of"].max().date()
    assert note is not None and f"{newest}: 0 of " in note and "outcomes.csv was exported before" in note


def test_activities_that_end_weeks_before_the_export_are_named_and_keep_the_champion(
    small_crm_dir, tmp_path, params, champion_store, monkeypatch
):
    """An activities.csv cut at a line break (a job still writing it) read as a smaller export:
    trained on, and promoted over the champion by a scheduled recalibration."""
    import shutil

    from training.pipeline import activities_end_early, prepare_crm
    from training.register import champion_auc, check_gates

    whole = prepare_crm(small_crm_dir, params)
    assert whole.activities_cut is None and whole.has_activities

    export = shutil.copytree(small_crm_dir, tmp_path / "export")
    lines = (export / "activities.csv").read_text().splitlines(keepends=True)
    acts = pd.read_csv(export / "activities.csv", dtype=str, keep_default_na=False)
    occurred = pd.to_datetime(acts["occurred_at"], errors="coerce", format="mixed")
    order = occurred.sort_values(kind="stable").index  # the file cut after its rows up to 45 days before the end
    kept = order[: int((occurred < whole.export_end - pd.Timedelta(days=45)).sum())]
    (export / "activities.csv").write_text(lines[0] + "".join(lines[i + 1] for i in sorted(kept)))
    cut = prepare_crm(export, params)
    assert cut.activities_cut and "activities.csv ends on" in cut.activities_cut
    assert f"days before the newest lead or close ({(whole.export_end - pd.Timedelta(days=1)).date()})" in (
        cut.activities_cut
    )
    # Two quiet weeks are no cut; the same cut of an export whose activities pause for months is none either.
    days = pd.Series(pd.date_range("2025-01-01", "2025-06-30", freq="D"))
    assert activities_end_early(days, pd.Timestamp("2025-07-15")) is None
    assert activities_end_early(days, pd.Timestamp("2025-07-20")) is not None
    sparse = pd.Series(pd.to_datetime(["2025-01-01", "2025-03-01", "2025-05-01"]))
    assert activities_end_early(sparse, pd.Timestamp("2025-06-20")) is None

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    check = champion_auc("svc-model", "crm", pd.DataFrame(), np.array([0, 1]), activities_cut=cut.activities_cut)
    gates = check_gates(params.gates, {"roc_auc": 0.9, "ece": 0.01, "n": 400, "positives": 100}, 0.8, check)
    gate = next(g for g in gates if g.name == "activities_like_champion")
    assert not gate.passed and "an export cut short must not replace it" in gate.detail


def test_an_as_of_cut_is_named_in_the_runs_data_source(small_crm_dir, params):
    """The README says `data.source` reads "... as of DAY" for an --as-of cut; it named the folder alone."""
    from training.pipeline import prepare_crm

    cut = prepare_crm(small_crm_dir, params, as_of=pd.Timestamp("2025-11-01"))
    assert cut.source == f"{small_crm_dir} as of 2025-11-01" and prepare_crm(small_crm_dir, params).source == str(
        small_crm_dir
    )
