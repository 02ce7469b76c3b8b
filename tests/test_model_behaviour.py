"""Behavioural tests of a trained CRM model: one more activity never lowers a lead's score, all
else equal (`tuning.engagement_monotone`), and the pieces that make it so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import NEVER_DAYS, engagement_direction, never_as_long_ago
from features.schema import ACTIVITY_TYPES
from features.spec import learn_spec, missing_again, to_model_frame

AS_OF = pd.Timestamp("2025-12-20")
POSITIVE_TYPES = [kind for kind in ACTIVITY_TYPES if kind != "unsubscribe"]


@pytest.fixture(scope="module")
def export(small_crm_dir):
    """800 leads of the small CRM created before AS_OF, and their activities, as text cells."""
    from serving.batch import read_table

    leads = read_table(small_crm_dir / "leads.csv")
    leads = leads[pd.to_datetime(leads["created_at"], utc=True) < AS_OF.tz_localize("UTC")].head(800)
    activities = read_table(small_crm_dir / "activities.csv")
    return leads.reset_index(drop=True), activities[activities["lead_id"].isin(set(leads["lead_id"]))]


@pytest.mark.parametrize("before", [pd.Timedelta(hours=1), pd.Timedelta(days=20)], ids=["an hour", "20 days"])
def test_one_more_activity_of_any_positive_type_never_lowers_a_score(champion, export, before):
    """On the embedded export's champion, a trial signup an hour before lowered 29 of 1,999 open
    leads, by up to 12.6 points, before the engagement features were constrained by meaning."""
    from serving.batch import score_batch

    leads, activities = export
    base = score_batch(champion, leads, activities, AS_OF).scored.set_index("lead_id")["probability"]
    assert len(base) == len(leads)
    for kind in POSITIVE_TYPES:
        added = pd.DataFrame({column: "" for column in activities.columns}, index=leads.index)
        added["lead_id"], added["activity_type"] = leads["lead_id"], kind
        added["occurred_at"] = (AS_OF - before).strftime("%Y-%m-%dT%H:%M:%SZ")
        more = score_batch(champion, leads, pd.concat([activities, added], ignore_index=True), AS_OF).scored
        change = more.set_index("lead_id")["probability"] - base
        fell = change[change < -1e-12]
        assert fell.empty, f"one more {kind} lowered {len(fell)} leads, e.g. {fell.head(3).round(4).to_dict()}"
        if kind == "demo_request":  # the activity was read: the strongest signal moves scores
            assert change.mean() > 0.01


def test_the_champion_is_constrained_and_reads_never_as_longest_ago(champion):
    from features.bundle import BUNDLE_FORMAT

    spec = champion.scorer.spec
    # A checkout that would ignore `missing_as` (and read "never" as "a moment ago") refuses it.
    assert champion.scorer.metadata["bundle_format"] == BUNDLE_FORMAT == 3
    assert spec.missing_as and set(spec.missing_as) == {c for c in spec.columns if c.startswith("days_since_")}
    # The model string keeps the range of each feature it can split on: "never" is the top of the
    # days since an intent signal (in this small CRM every training example has had some activity).
    ranges = champion.scorer.booster.dump_model()["feature_infos"]
    tops = {c: ranges[c]["max_value"] for c in spec.missing_as if c in ranges and c != "days_since_last_activity"}
    assert tops and set(tops.values()) == {NEVER_DAYS}, tops
    constraints = champion.scorer.booster.params.get("monotone_constraints")
    assert constraints is not None
    signs = dict(zip(spec.columns, (int(c) for c in constraints), strict=True))
    assert signs["days_since_demo_request"] == -1 and signs["n_demo_request_30d"] == 1
    assert signs["velocity_30d"] == 1 and signs["n_unsubscribe_total"] == -1
    assert all(signs[c] == 0 for c in spec.columns if spec.groups[c] == "fit")


def test_a_constrained_refit_clearly_below_the_best_trial_is_warned_about():
    import dataclasses

    from training.pipeline import constraint_cost_warnings
    from training.tune import TuningResult

    tuned = TuningResult(best_params={}, best_iteration=10, best_valid_score=0.80, trials=3, pruned=0, study=None)
    assert constraint_cost_warnings(tuned, "auc") == []  # not constrained
    assert constraint_cost_warnings(dataclasses.replace(tuned, constrained_valid_score=0.795), "auc") == []
    (said,) = constraint_cost_warnings(dataclasses.replace(tuned, constrained_valid_score=0.78), "auc")
    assert "cost 0.0200 validation auc" in said and "tuning.engagement_monotone" in said
    logloss = dataclasses.replace(tuned, best_valid_score=0.30, constrained_valid_score=0.32)
    assert "cost 0.0200 validation binary_logloss" in constraint_cost_warnings(logloss, "binary_logloss")[0]
    assert constraint_cost_warnings(dataclasses.replace(logloss, constrained_valid_score=0.28), "binary_logloss") == []


def test_engagement_features_are_constrained_by_their_meaning():
    assert engagement_direction("n_pricing_page_7d") == 1
    assert engagement_direction("engagement_decayed") == 1
    assert engagement_direction("activities_per_30d") == 1
    assert engagement_direction("days_since_trial_signup") == -1
    assert engagement_direction("days_since_last_activity") == -1
    assert engagement_direction("n_unsubscribe_90d") == -1
    assert engagement_direction("n_other_30d") == 0  # a type the product does not know
    assert never_as_long_ago(["days_since_webinar", "n_webinar_7d"]) == {"days_since_webinar": NEVER_DAYS}


def test_a_missing_value_with_a_meaning_reaches_the_model_as_its_number():
    features = pd.DataFrame({"days_since_webinar": [2.5, np.nan], "n_webinar_7d": [1.0, np.nan]})
    spec = learn_spec(features, kind="crm", groups={}, settings={}, missing_as=never_as_long_ago(features.columns))
    assert to_model_frame(features, spec)["days_since_webinar"].tolist() == [2.5, NEVER_DAYS]
    assert np.isnan(to_model_frame(features, spec)["n_webinar_7d"].iloc[1])  # no meaning given: missing
    # Back to the features' values, for what reads them as amounts (baselines, colour scales).
    pd.testing.assert_frame_equal(missing_again(to_model_frame(features, spec), spec.missing_as), features)
    # A spec saved before the setting reads as it did: every missing value missing.
    older = spec.model_validate_json(spec.model_dump_json(exclude={"missing_as"}))
    assert older.missing_as == {} and np.isnan(to_model_frame(features, older)["days_since_webinar"].iloc[1])


def test_the_baselines_see_the_features_as_they_are_not_the_numbers_the_model_reads():
    from training.baselines import fit_baselines

    rng = np.random.default_rng(0)
    days = np.where(rng.random(600) < 0.4, np.nan, rng.exponential(20, 600))
    x = pd.DataFrame({"days_since_webinar": days, "n_webinar_7d": rng.poisson(1, 600).astype(float)})
    y = (rng.random(600) < np.where(np.isnan(days), 0.2, 0.5)).astype(int)
    filled = x.fillna({"days_since_webinar": NEVER_DAYS})
    as_is = fit_baselines(x[:400], y[:400], x[400:], [], seed=0)
    told = fit_baselines(filled[:400], y[:400], filled[400:], [], seed=0, missing_as={"days_since_webinar": NEVER_DAYS})
    for name in as_is:
        np.testing.assert_allclose(told[name], as_is[name])
