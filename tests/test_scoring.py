"""Scoring: large batches are scored in pipelined blocks (the numbers must not depend on it); a
model chosen by version is named clearly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import serving.scoring as scoring
from features.build import build_crm_features
from features.ingest import load_crm

AS_OF = pd.Timestamp("2025-12-20")


def test_blocked_scoring_equals_one_pass(champion, small_crm_dir, monkeypatch):
    crm = load_crm(small_crm_dir)
    leads = crm.leads[crm.leads["created_at"] < AS_OF].reset_index(drop=True)
    features = build_crm_features(
        leads, crm.activities, AS_OF, champion.feature_params, champion.scorer.spec.settings["tech_vocabulary"]
    )
    context = leads[["email"]].assign(sales_accepted=(leads.index % 9 == 0).astype(float))
    moments = pd.Series([AS_OF] * len(leads))
    whole = scoring.score_features(champion, features, context, moments)
    monkeypatch.setattr(scoring, "PIPELINE_ROWS", 300)  # several blocks, the last one short
    assert len(leads) % 300 and len(leads) > 900
    blocked = scoring.score_features(champion, features, context, moments)
    pd.testing.assert_frame_equal(whole, blocked)
    assert blocked["reasons"].map(len).gt(0).all()
    # Each lead's reasons: the strongest factors, none under a tenth of its strongest.
    for reasons in blocked["reasons"]:
        sizes = [abs(r["points"]) for r in reasons]
        assert len(reasons) <= 2 * scoring.REASONS_EACH_WAY and min(sizes) >= 0.1 * max(sizes) - 0.01


def test_activity_never_moves_a_leads_fit_and_no_activity_adds_no_engagement(champion, small_crm_dir):
    """Fit was the SHAP contributions of the profile's features, which the trees share with
    activity: a demo request lowered fit (41 to 36) and dropped MQL leads to nurture."""
    crm = load_crm(small_crm_dir)
    leads = crm.leads[crm.leads["created_at"] < AS_OF].head(400).reset_index(drop=True)
    vocabulary = champion.scorer.spec.settings["tech_vocabulary"]
    built = {
        name: build_crm_features(leads, activities, AS_OF, champion.feature_params, vocabulary)
        for name, activities in (("none", crm.activities.iloc[:0]), ("all", crm.activities))
    }
    moments = pd.Series([AS_OF] * len(leads))
    scored = {name: scoring.score_features(champion, f, leads[["email"]], moments) for name, f in built.items()}
    assert scored["none"]["fit"].tolist() == scored["all"]["fit"].tolist()
    assert scored["all"]["fit"].nunique() > 20 and scored["all"]["engagement"].nunique() > 10
    # No activity adds nothing: every such lead has the one engagement rank that means it.
    assert scored["none"]["engagement"].nunique() == 1
    # The profile's log-odds comes from the booster on the model matrix, as the SHAP values do.
    matrix = scoring.model_matrix(champion, built["all"])
    margin = champion.scorer.booster.predict(matrix, raw_score=True)
    contributions = scoring.shap_matrix(champion.trees, matrix)
    assert abs(margin - contributions.sum(axis=1)).max() < 1e-6


def test_a_rank_is_taken_among_training_leads_ties_in_the_middle_and_outliers_at_the_ends():
    import numpy as np

    reference, ranks = np.array([0.0, 1.0, 2.0, 2.0, 3.0]), np.linspace(0, 100, 5)
    values = np.array([-5.0, 0.0, 1.5, 2.0, 3.0, 9.0])
    # Below every training lead is 0 and above them all 100 (a first version read both as 50).
    assert scoring._percentile(values, reference, ranks).tolist() == [0, 0, 38, 62, 100, 100]
    # What no activity adds is 0 give or take rounding: it takes the middle of the training leads
    # at 0, not a rank its noise picks (no-activity leads of one export read 0 to 8).
    plateau = np.array([-2.0, 8.9e-16, 1.3e-15, 1.8e-15, 2.2e-15, 3.1e-15, 0.5])
    noise = np.array([0.0, 4.4e-16, 2.7e-15, 3.6e-15])
    assert set(scoring._percentile(noise, plateau, np.linspace(0, 100, 7)).tolist()) == {50.0}


def test_a_factor_under_a_tenth_of_the_strongest_is_no_reason():
    import numpy as np

    points = np.array([[21.0, 14.0, 11.0, -8.0, -0.7, -0.5, 0.3], [-3.4, -1.4, -1.3, 0.24, 0.2, 0.19, 0.0]])
    columns = [f"f{j}" for j in range(points.shape[1])]
    values = {c: [1.0, 1.0] for c in columns}
    reasons = scoring._reasons(points, scoring._Columns(values, columns, 2, {}), columns)
    assert [r["points"] for r in reasons[0]] == [21.0, 14.0, 11.0, -8.0]
    assert [r["points"] for r in reasons[1]] == [-3.4, -1.4, -1.3]


def test_a_reason_reads_alike_whatever_the_request_or_file_spelt_and_its_text_says_its_points():
    """The API said "Lead source is CONTENT SYNDICATION" where the batch (the file's most frequent
    spelling) said "Content Syndication"; a reason's text rounded the unrounded effect, so
    `points` 0.25 read "+0.3" in one answer and "+0.2" in another."""
    import numpy as np

    from features.reasons import describe

    columns = ["lead_source", "n_technologies"]
    values = {"lead_source": ["CONTENT SYNDICATION", " content syndication", "Fax", None], "n_technologies": [1.0] * 4}
    spelt = scoring._Columns(values, columns, 4, {"lead_source": ["Content Syndication", "Webinar"]})
    assert spelt["lead_source"] == ["Content Syndication", "Content Syndication", "Fax", None]
    points = np.array([[0.2500000001, 1.0]] * 4)
    reasons = scoring._reasons(points, spelt, columns)
    first = next(r for r in reasons[0] if r["feature"] == "lead_source")
    assert first["points"] == 0.25 and first["text"] == "Lead source is Content Syndication: +0.2"
    assert describe("n_technologies", 1.0) == "1 technology in the stack"
    assert describe("employees", 1.0) == "1 employee" and describe("employees", 1200.0) == "1,200 employees"


def test_an_amount_of_activity_that_lowers_the_score_is_said_below_the_average_or_not_at_all(champion, small_crm_dir):
    """ "4 web visits in the last 30 days: -0.5" read as if visiting had hurt, where taking the
    visits away lowered the score by 4.7: the points are the count's share beside the lead's other
    activity features, against the average lead. 35 of 35 such reasons on an 8,000-lead export."""
    from features.reasons import sentence
    from serving.batch import read_table, score_batch

    assert (
        sentence("n_web_visit_30d", 4.0, -0.5, 6.24)
        == "4 web visits in the last 30 days, below the average of 6.2: -0.5"
    )
    assert sentence("engagement_decayed", 1.6, -1.0, 4.3) == "Recent activity level 1.6, below the average of 4.3: -1"
    assert sentence("n_web_visit_30d", 7.0, -0.5, 6.24) is None  # above the average: no reason to show
    assert sentence("n_web_visit_30d", 0.0, -0.5, 6.24) == "No web visit in the last 30 days: -0.5"  # a lack
    assert sentence("n_unsubscribe_total", 1.0, -0.8, 0.1) == "1 unsubscribe so far: -0.8"  # less is better
    assert sentence("n_web_visit_30d", 4.0, -0.5) == "4 web visits in the last 30 days: -0.5"  # an older model
    assert sentence("engagement_decayed", 3.46, -0.8, 3.4673) is None  # "3.5, below the average of 3.5" read as a slip
    # A negative left out gives its place to the next (L0107332, SQL at 85, showed no negative at all).
    columns = ["n_web_visit_30d", "icp_match", "days_since_demo_request", "n_pricing_page_7d", "bant_confirmed"]
    values = {"n_web_visit_30d": [7.0], "icp_match": [0.25], "days_since_demo_request": [None],
              "n_pricing_page_7d": [0.0], "bant_confirmed": [1.0]}  # fmt: skip
    points = np.array([[-2.0, -1.5, -1.0, -0.8, -0.6]])
    (said,) = scoring._reasons(points, values, columns, averages={"n_web_visit_30d": 1.55})
    assert [r["feature"] for r in said] == ["icp_match", "days_since_demo_request", "n_pricing_page_7d"]
    averages = champion.scorer.metadata["activity_averages"]
    assert averages["n_web_visit_30d"] > 0 and "n_unsubscribe_total" not in averages and "icp_match" not in averages
    leads, activities = read_table(small_crm_dir / "leads.csv"), read_table(small_crm_dir / "activities.csv")
    scored = score_batch(champion, leads, activities, pd.Timestamp("2025-12-20")).scored
    checked = 0
    for reasons in scored["reasons"].map(json.loads):
        for reason in reasons:
            if reason["points"] < 0 and reason["feature"] in averages and round(reason["value"], 1) > 0:
                assert reason["value"] < averages[reason["feature"]] and "below the average" in reason["text"], reason
                checked += 1
    assert checked, "no amount of activity among the negative reasons"


def test_reasons_count_time_from_the_scoring_moment_and_a_count_is_not_its_recency_again():
    """A scoring as of midnight called last evening's demo "today"; the count of demo requests
    repeated the recency's sentence with other points ("Requested a demo 8 days ago" twice)."""
    from features.reasons import describe, sentence

    assert describe("days_since_demo_request", 0.74) == "Requested a demo in the last 24 hours"
    assert describe("days_since_demo_request", 1.2) == "Requested a demo 1 day ago"
    assert describe("days_since_last_activity", 7.6) == "Last activity 8 days ago"
    # Half days round up alike (round() went to even: 60 hours read "2 days", 84 hours "4 days").
    halves = [describe("days_since_last_activity", d) for d in (1.5, 2.5, 3.5, 4.5)]
    assert halves == [f"Last activity {n} days ago" for n in (2, 3, 4, 5)], halves
    assert sentence("n_demo_request_30d", 1.0, 4.2) == "1 demo request in the last 30 days: +4"
    assert sentence("n_meeting_7d", 2.0, 0.4) == "2 meetings with sales in the last 7 days: +0.4"
    # A recency that lowers the score says the quiet since, not the act ("Attended a webinar 184
    # days ago: -0.8" read as if attending had hurt).
    assert sentence("days_since_webinar", 184.2, -0.8) == "No webinar attended for 184 days: -0.8"
    assert sentence("days_since_last_activity", 7.6, -0.5) == "No activity for 8 days: -0.5"
    assert sentence("days_since_demo_request", 2.2, 18.0) == "Requested a demo 2 days ago: +18"
    # The decayed level: none is no activity, and below zero says why (an unsubscribe weighs -4).
    assert describe("engagement_decayed", 0.0) == describe("engagement_decayed", -0.04) == "No recent activity"
    assert describe("engagement_decayed", -3.04) == "Recent activity level -3.0 (an unsubscribe outweighs the rest)"
    # A flat export's own numeric column reads as a value ("Total Time Spent on Website 0: -3" did not).
    assert sentence("Total Time Spent on Website", 0.0, -3.3) == "Total Time Spent on Website is 0: -3"
    # A form's question as a column is answered ("What is your current occupation is Working Professional").
    said = sentence("What is your current occupation", "Working Professional", 15.0)
    assert said == "What is your current occupation? Working Professional: +15"
    assert sentence("Do Not Email", "Yes", -3.0) == "Do Not Email is Yes: -3"  # a flag, not a question
    # A flat yes/no column reads Yes or No unless its name is one of the product's own features,
    # whose sentences read the number ("Marked do not contact", not "Open to contact" for "Yes").
    from features.reasons import reads_as_yes_no

    assert reads_as_yes_no("Do Not Email") and reads_as_yes_no("Opted Out")
    assert not any(
        map(reads_as_yes_no, ["do_not_contact", "business_email", "uses_hubspot", "n_x_total", "days_since_x"])
    )
    assert describe("annual_revenue", 1000.0) == "Annual revenue 1,000"


def test_an_empty_model_version_is_named_before_the_registry_is_asked():
    from serving.scoring import ModelNotReady, load_chosen

    with pytest.raises(ModelNotReady, match="--model-version is empty"):
        load_chosen("lead-scorer", " @ ")


def test_an_export_scored_long_after_its_newest_activity_is_warned_about():
    from serving.batch import STALE_EXPORT_DAYS, stale_export_note

    acts = pd.DataFrame({"occurred_at": ["2026-03-01T10:00:00", "2026-03-20 09:30", "", "not a date"]})
    fresh = pd.Timestamp("2026-03-20") + pd.Timedelta(days=STALE_EXPORT_DAYS)
    assert stale_export_note(acts, fresh) is None
    note = stale_export_note(acts, pd.Timestamp("2026-06-18 09:30"))
    assert note is not None and "from 2026-03-20, 90 days before 2026-06-18" in note and "--as-of 2026-03-21" in note
    assert stale_export_note(acts.iloc[:0], pd.Timestamp("2030-01-01")) is None  # no activities: nothing to date
    assert stale_export_note(acts.iloc[2:], pd.Timestamp("2030-01-01")) is None  # none readable


def test_a_lead_refused_as_a_duplicate_is_one_problem_not_one_per_activity(champion):
    # Its activities are its own, not "of an unknown lead": a CRM read 60 problems for one mistake.
    from serving.scoring import InvalidLeads, prepare_crm_leads

    leads = pd.DataFrame({"lead_id": ["A", "A", "B"], "created_at": ["2025-01-01"] * 3,
                          "industry": ["Software", "Retail", "Software"]})  # fmt: skip
    acts = pd.DataFrame({"lead_id": ["A"] * 5 + ["B"], "occurred_at": ["2025-02-01"] * 6,
                         "activity_type": [f"web_visit{i}" for i in range(6)]})  # fmt: skip
    with pytest.raises(InvalidLeads) as refused:
        prepare_crm_leads(champion, leads, acts, pd.Series([pd.Timestamp("2025-03-01")] * 3))
    assert [table for table, _, _ in refused.value.rows] == ["leads", "leads"]
    assert all("conflicting duplicate lead_id" in reason for _, _, reason in refused.value.rows)
    # An activity whose lead is in no row at all is still named.
    strangers = pd.concat([acts, pd.DataFrame({"lead_id": ["Z"], "occurred_at": ["2025-02-01"],
                                               "activity_type": ["web_visit"]})], ignore_index=True)  # fmt: skip
    with pytest.raises(InvalidLeads, match="unknown lead_id"):
        prepare_crm_leads(champion, leads.iloc[[2]], strangers, pd.Series([pd.Timestamp("2025-03-01")]))


def test_a_registry_password_never_reaches_an_error_message(monkeypatch):
    """MLflow's errors quote the URI they failed on: the service put them into `/model`,
    `/reload` answers and its log, and `score` printed them, password and all."""
    from features.tracking import without_password

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:S3cret%21pw@127.0.0.1:9")  # nothing listens on 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(scoring.ModelNotReady) as caught:
        scoring.champion_version("lead-scorer")
    message = str(caught.value)
    assert "S3cret" not in message and "alice:***@127.0.0.1:9" in message, message
    assert (
        without_password("GET http://alice:S3cret!pw@127.0.0.1:9/api failed")
        == "GET http://alice:***@127.0.0.1:9/api failed"
    )
    # A generated password with an unencoded `/` (urlsplit ends the user part there), and a long
    # token cut part way by a message's limit: masked all the same.
    slashed = "http://alice:Xk9/aB+c=@127.0.0.1:9"
    assert without_password(f"Invalid url: {slashed}", slashed) == "Invalid url: http://alice:***@127.0.0.1:9"
    token = "http://alice:tok" + "a1" * 150 + "@127.0.0.1:9"
    assert "a1a1" not in without_password(f"API request to {token} failed", token)[:300]
    # Without a URI set, nothing is looked up or created: the error being printed may be that the
    # models folder cannot be made.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    import features.tracking as tracking

    monkeypatch.setattr(tracking, "tracking_uri", lambda: pytest.fail("the default store was set up"))
    assert without_password("cannot write models/") == "cannot write models/"


def test_loading_a_model_again_leaves_no_module_behind(champion_store, monkeypatch):
    """MLflow imports a bundle's model code as a new `code_model_<uuid>` module at each load: a
    service swapping champions kept one per swap."""
    import sys

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    before = {name for name in sys.modules if name.startswith("code_model_")}
    for _ in range(3):
        scoring.load_champion("svc-model")  # as the `champion_store` fixture registers it
    assert {name for name in sys.modules if name.startswith("code_model_")} == before


def test_the_model_pages_importance_is_in_the_points_the_reasons_count(champion, small_crm_dir):
    """ "What drives scores overall" was in log-odds while every reason and the beeswarm count score
    points: training now keeps mean |SHAP| in points too, as the service would count them."""
    import numpy as np

    from features.spec import to_model_frame
    from training.evaluate import test_evaluation

    crm = load_crm(small_crm_dir)
    leads = crm.leads[crm.leads["created_at"] < AS_OF].head(300).reset_index(drop=True)
    features = build_crm_features(
        leads, crm.activities, AS_OF, champion.feature_params, champion.scorer.spec.settings["tech_vocabulary"]
    )
    scorer = champion.scorer
    sample = to_model_frame(features, scorer.spec)
    probability = scorer.calibrator.apply(scorer.booster.predict(sample, raw_score=True))
    label = np.arange(len(sample)) % 2
    evaluation = test_evaluation(
        scorer.booster, scorer.calibrator, label, probability, sample, scorer.metadata["grade_bands"]
    )
    contributions, base = scoring.explain_frame(champion, features)
    slope = scorer.calibrator.points_per_logit(contributions.sum(axis=1), base)
    points = contributions[:, :-1] * slope[:, None]
    # A lead's points add up to its score less the typical lead's, as its reasons do.
    typical = 100 * scorer.calibrator.apply(np.array([base]))[0]
    assert np.allclose(points.sum(axis=1), 100 * probability - typical, atol=1e-6)
    expected = dict(zip(scorer.spec.columns, np.abs(points).mean(axis=0), strict=True))
    kept = evaluation["importance_points"]
    assert kept.keys() == expected.keys()
    assert max(abs(kept[c] - expected[c]) for c in kept) < 1e-6
    # Points are not log-odds: on this model's scale the two differ.
    assert max(kept.values()) != pytest.approx(max(evaluation["importance"].values()), rel=0.05)
    assert "importance_points" in scorer.metadata["evaluation"]  # a model trained now keeps them
