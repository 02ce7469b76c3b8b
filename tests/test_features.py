import numpy as np
import pandas as pd
import pytest

from features.build import build_crm_features, crm_feature_groups
from features.engagement import engagement_features
from features.ingest import load_crm

T = pd.Timestamp("2025-03-01")


def _acts(rows):
    frame = pd.DataFrame(rows, columns=["lead_id", "occurred_at", "activity_type"])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], format="ISO8601")
    return frame


def _features(acts, lead_ids, as_of, params):
    return engagement_features(
        acts, pd.Series(lead_ids), pd.Series(as_of),
        windows_days=params.features.windows_days,
        half_life_days=params.features.decay_half_life_days,
        weights=params.features.engagement_weights,
    )  # fmt: skip


def test_counts_recency_and_decay_match_a_hand_computation(params):
    acts = _acts([
        ("A", "2025-02-27 00:00", "demo_request"),  # 2 days before T
        ("A", "2025-02-10", "web_visit"),  # 19 days
        ("A", "2024-11-30", "pricing_page"),  # 91 days: outside the window [T-90d, T)
        ("A", "2025-03-01", "meeting"),  # at T: not before T
        ("B", "2025-02-28 12:00", "web_visit"),
    ])  # fmt: skip
    f = _features(acts, ["A", "B", "C"], [T, T, T], params).set_index(pd.Index(["A", "B", "C"]))
    assert f.loc["A", "n_demo_request_7d"] == 1
    assert f.loc["A", "n_web_visit_7d"] == 0 and f.loc["A", "n_web_visit_30d"] == 1
    assert f.loc["A", "n_pricing_page_90d"] == 0 and f.loc["A", "n_pricing_page_total"] == 1
    assert f.loc["A", "n_meeting_total"] == 0
    assert f.loc["A", "n_activities_total"] == 3
    assert f.loc["A", "days_since_last_activity"] == pytest.approx(2.0)
    assert f.loc["A", "days_since_demo_request"] == pytest.approx(2.0)
    w = params.features.engagement_weights
    half = params.features.decay_half_life_days
    expected = (
        w["demo_request"] * 0.5 ** (2 / half)
        + w["web_visit"] * 0.5 ** (19 / half)
        + w["pricing_page"] * 0.5 ** (91 / half)
    )
    assert f.loc["A", "engagement_decayed"] == pytest.approx(expected, rel=1e-9)
    assert f.loc["B", "days_since_last_activity"] == pytest.approx(0.5)
    assert f.loc["C", "n_activities_total"] == 0 and np.isnan(f.loc["C", "days_since_last_activity"])
    assert f.loc["C", "engagement_decayed"] == 0


def test_decay_holds_over_histories_of_many_half_lives(params):
    """Activities decades apart (far past where e^(rate * age) overflows a float) give the
    decayed score a direct sum gives, at moments early, between and late in the history."""
    # With a 14-day half-life a t0 lasts about 33 years: 1934-04-01 starts the second one, and
    # the activity of 1934-03-01 must be carried over into it.
    times = ["1901-01-05", "1930-06-01", "1934-03-01", "1934-04-01", "1975-01-01", "2019-12-31", "2025-02-20"]
    acts = _acts([("A", t, "demo_request" if i % 2 else "web_visit") for i, t in enumerate(times)])
    moments = [pd.Timestamp(m) for m in ("1901-02-01", "1930-06-10", "1934-04-10", "2000-01-01", "2025-03-01")]
    f = _features(acts, ["A"] * len(moments), moments, params)
    w = params.features.engagement_weights
    half = params.features.decay_half_life_days
    for moment, got in zip(moments, f["engagement_decayed"], strict=True):
        expected = sum(
            w[a.activity_type] * 0.5 ** ((moment - a.occurred_at) / pd.Timedelta(days=half))
            for a in acts.itertuples()
            if a.occurred_at < moment
        )
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300), moment


def test_events_at_or_after_t_cannot_change_any_feature(small_crm_dir, params):
    """Point-in-time correctness on realistic data: append a burst of every activity type
    at and after each lead's T, and shuffle rows; every feature stays identical."""
    crm = load_crm(small_crm_dir, params.flat.missing_tokens)
    rng = np.random.default_rng(0)
    leads = crm.leads.sample(400, random_state=1).reset_index(drop=True)
    span = (crm.export_end - leads["created_at"]).dt.total_seconds()
    as_of = leads["created_at"] + pd.to_timedelta(rng.random(len(leads)) * span, unit="s")
    vocab = ["salesforce", "aws"]
    before = build_crm_features(leads, crm.activities, as_of, params.features, vocab)

    lead_of = dict(zip(leads["lead_id"], as_of, strict=True))
    future = []
    for lead_id, moment in lead_of.items():
        for kind in ("demo_request", "meeting", "unsubscribe", "web_visit", "pricing_page"):
            for delay in (0, 1, 3600, 86400 * 40):
                future.append((lead_id, moment + pd.Timedelta(seconds=delay), kind))
    polluted = pd.concat([crm.activities, _acts(future).assign(value=np.nan)], ignore_index=True)
    polluted = polluted.sample(frac=1.0, random_state=2).reset_index(drop=True)
    after = build_crm_features(leads, polluted, as_of, params.features, vocab)
    pd.testing.assert_frame_equal(before, after)
    assert (before["n_activities_total"] > 0).mean() > 0.5  # the data has history to protect


def test_before_t_is_decided_to_the_nanosecond(params):
    """An activity in the same second as T counts when it came before T, not when at or after
    it (whole seconds were compared: a demo request 650 ms before a webhook's moment was left
    out), with whole-second and millisecond histories alike; the window's start the same way."""
    moment = pd.Timestamp("2025-02-04 12:00:00.900")
    whole = _acts([("A", "2025-02-04 12:00:00", "demo_request"), ("B", "2025-02-04 12:00:01", "demo_request")])
    fine = _acts([
        ("A", "2025-02-04 12:00:00.250", "demo_request"),  # before T, in its second
        ("B", "2025-02-04 12:00:00.900", "demo_request"),  # at T
        ("B", "2025-02-04 12:00:00.950", "demo_request"),  # after T, in its second
        ("C", "2025-01-28 12:00:00.900", "web_visit"),  # at T minus 7 days: the window includes its start
        ("C", "2025-01-28 12:00:00.899", "web_visit"),  # just outside it
    ])  # fmt: skip
    for acts in (whole, fine):
        f = _features(acts, ["A", "B", "C"], [moment] * 3, params).set_index(pd.Index(["A", "B", "C"]))
        assert f.loc["A", "n_demo_request_total"] == 1 and f.loc["A", "days_since_demo_request"] == 0
        assert f.loc["B", "n_demo_request_total"] == 0 and np.isnan(f.loc["B", "days_since_demo_request"])
    assert (f.loc["C", "n_web_visit_7d"], f.loc["C", "n_web_visit_30d"]) == (1, 2)
    on_the_second = _features(whole, ["A"], [pd.Timestamp("2025-02-04 12:00:00")], params)
    assert on_the_second.loc[0, "n_demo_request_total"] == 0  # at T exactly
    # A total counts from the first moment of 1900 (a placeholder date), not T's fraction past it.
    placeholder = _acts([("A", "1900-01-01 00:00:00", "demo_request"), ("A", "2025-01-01", "demo_request")])
    totals = _features(placeholder, ["A"], [moment], params)
    assert (totals.loc[0, "n_demo_request_total"], totals.loc[0, "n_activities_total"]) == (2, 2)


def test_different_types_outside_the_contract_at_one_moment_are_two_events(tmp_path, params):
    """A call and a chat on one day of a date-only export are both counted as 'other'; a call
    sent twice is one event (the types were merged into 'other' before repeats were found)."""
    (tmp_path / "leads.csv").write_text("lead_id,created_at\nF1,2025-01-01\n")
    (tmp_path / "outcomes.csv").write_text("lead_id,status,closed_at\n")
    (tmp_path / "activities.csv").write_text(
        "lead_id,occurred_at,activity_type\nF1,2025-02-02,Call\nF1,2025-02-02,Chat\nF1,2025-02-02,call\n"
        "F1,2025-02-03,LinkedIn Message\nF1,2025-02-03,Email _Open\n"
    )
    crm = load_crm(tmp_path, params.flat.missing_tokens)
    assert crm.activities["activity_type"].tolist() == ["other", "other", "other", "email_open"]
    assert crm.quarantine.frame()["reason"].str.startswith("duplicate row").sum() == 1


def test_activity_types_written_without_separators_read_as_the_contract_names_them():
    """'EmailOpen' (a Marketo- or HubSpot-style name) was counted as 'other'; splitting camel
    case instead would have lost 'Trial SignUp' and 'UnSubscribe', which read right before."""
    from features.clean import snake_name

    spelt = ["EmailOpen", "emailOpen", "DEMOREQUEST", "Email _Open", "Trial SignUp", "UnSubscribe", "EMail Open",
             "web.visit", "PDFDownload", "LinkedIn Message"]  # fmt: skip
    assert [snake_name(s) for s in spelt] == [
        "email_open", "email_open", "demo_request", "email_open", "trial_signup", "unsubscribe", "email_open",
        "web_visit", "pdfdownload", "linkedin_message",
    ]  # fmt: skip


def test_the_ideal_customer_profile_matches_values_as_crms_spell_them(params):
    """'USA', 'U.K.' and 'C Level' missed a profile naming United States, United Kingdom and
    C-Level: the lead read as outside the profile."""
    from features.fit import fit_features, icp_misses

    icp = params.features.icp
    assert {"United States", "United Kingdom"} <= set(icp.countries) and "C-Level" in icp.seniorities
    base = {"created_at": T - pd.Timedelta(days=3), "industry": icp.industries[0], "department": icp.departments[0],
            "employees": float(icp.min_employees)}  # fmt: skip
    named = [("United States", "C-Level"), ("USA", "c level"), ("U.S.", "C_LEVEL"), ("U.K.", "C - Level"),
             ("United States of America", "C.Level"), ("Atlantis", "C-Level"), ("USA", "Clevel manager")]  # fmt: skip
    leads = pd.DataFrame([{"lead_id": str(i), **base, "country": c, "seniority": s} for i, (c, s) in enumerate(named)])
    matched = fit_features(leads, pd.Series([T] * len(leads)), icp=icp, tech_vocabulary=[])["icp_match"]
    assert matched.tolist() == [1.0] * 5 + [0.8, 0.8]
    assert icp_misses(leads.iloc[1], icp) == []
    assert icp_misses(leads.iloc[5], icp)[0].startswith("country Atlantis (the profile: ")
    # A model trained before the setting compares case alone, as in its training.
    before = icp.model_copy(update={"match_spellings": False})
    assert icp.match_spellings and before == type(icp).model_validate(icp.model_dump(exclude={"match_spellings"}))
    as_trained = fit_features(leads, pd.Series([T] * len(leads)), icp=before, tech_vocabulary=[])["icp_match"]
    assert as_trained.tolist() == [1.0] + [0.6] * 4 + [0.8, 0.6]
    # A blank value meets no criterion, even beside a profile entry that spells "NA" (Namibia).
    blank = leads.iloc[:1].assign(country=[None])
    namibia = icp.model_copy(update={"countries": ("NA", "Nan")})
    assert fit_features(blank, pd.Series([T]), icp=namibia, tech_vocabulary=[])["icp_match"].tolist() == [0.8]


def test_feature_groups_split_fit_from_engagement(small_crm_dir, params):
    crm = load_crm(small_crm_dir, params.flat.missing_tokens)
    f = build_crm_features(crm.leads.head(50), crm.activities, T, params.features, ["aws"])
    groups = crm_feature_groups(list(f.columns))
    assert groups["industry"] == "fit" and groups["n_technologies"] == "fit" and groups["icp_match"] == "fit"
    assert groups["engagement_decayed"] == "engagement" and groups["n_demo_request_30d"] == "engagement"
    assert f["uses_aws"].isin([0.0, 1.0]).all() or f["uses_aws"].isna().any()


def test_absent_optional_columns_give_the_features_of_unknown_values(params):
    """A leads file without some optional columns and a request leaving them out must score
    alike: absent means unknown (an ICP criterion not met, BANT not confirmed)."""
    from features.fit import OPTIONAL_LEAD_COLUMNS, fit_features

    sparse = pd.DataFrame({"lead_id": ["L1"], "created_at": [T - pd.Timedelta(days=3)], "industry": ["Software"]})
    full = sparse.assign(**{c: [None] for c in OPTIONAL_LEAD_COLUMNS if c not in sparse})
    settings = {"icp": params.features.icp, "tech_vocabulary": ["salesforce"]}
    from_file = fit_features(sparse, pd.Series([T]), **settings)
    from_request = fit_features(full, pd.Series([T]), **settings)
    pd.testing.assert_frame_equal(from_file, from_request)
    assert from_file.loc[0, "icp_match"] == pytest.approx(1 / 5)  # industry only, of five criteria
    assert from_file.loc[0, "bant_confirmed"] == 0


def test_fit_rules_read_missing_values_as_unknown_whatever_the_column_dtype(params):
    """Missing e-mail is unknown, not a business address, in object and pandas text columns
    alike; each distinct value gets the same answer on every row that repeats it."""
    from features.fit import fit_features

    rows = {
        "lead_id": ["a", "b", "c", "d"],
        "created_at": [pd.Timestamp("2025-01-01")] * 4,
        "email": ["x@acme.com", None, "Yan <y@gmail.com>", "x@acme.com"],  # a display name hid the free mail
        "tech_stack": ["HubSpot; Slack", None, "slack", "HubSpot; Slack"],
    }
    for dtype in ("object", "str"):
        leads = pd.DataFrame(rows).astype({"email": dtype, "tech_stack": dtype})
        fit = fit_features(leads, pd.Series([T]), icp=params.features.icp, tech_vocabulary=["hubspot", "slack"])
        assert fit["business_email"].tolist()[::2] == [1.0, 0.0] and np.isnan(fit["business_email"][1])
        assert fit["business_email"][3] == 1.0
        assert fit["uses_slack"].tolist()[::2] == [1.0, 1.0] and np.isnan(fit["uses_slack"][1])
        assert fit["n_technologies"][3] == 2.0


def test_a_technology_keeps_the_spelling_its_export_writes_most():
    """Features are case-folded ("uses_aws"); the reasons a rep reads said "Uses Aws" and
    "Hubspot" of an export that writes AWS and HubSpot."""
    from features.fit import learn_tech_spellings, learn_tech_vocabulary, tech_names
    from features.reasons import describe, plain_name, sentence

    leads = pd.DataFrame({"tech_stack": ["HubSpot; AWS", "Hubspot| aws", " AWS ,HubSpot", None, "Google Cloud;Zoho"]})
    vocabulary = learn_tech_vocabulary(leads, top_k=3)
    assert vocabulary == ["aws", "google cloud", "hubspot"]
    spellings = learn_tech_spellings(leads, vocabulary)
    assert spellings == {"aws": "AWS", "hubspot": "HubSpot", "google cloud": "Google Cloud"}
    names = tech_names({"tech_spellings": spellings})
    assert names == {"uses_aws": "AWS", "uses_hubspot": "HubSpot", "uses_google_cloud": "Google Cloud"}
    assert describe("uses_aws", 0.0, names) == "Does not use AWS"
    assert plain_name("uses_hubspot", names) == "Uses HubSpot"
    assert sentence("uses_aws", 1.0, 2.0, names=names) == "Uses AWS: +2"
    # A model trained before the spellings were kept: title-cased, as before.
    assert tech_names({}) == {} and describe("uses_aws", 1.0) == "Uses Aws"
