import re

import numpy as np
import pandas as pd

from features.criteria import qualify

AS_OF = pd.Timestamp("2026-01-10 09:00")


def _lead(**values):
    base = {"score": 5.0, "fit": 30.0, "engagement": 20.0, "icp_match": 0.6, "bant_confirmed": 0,
            "days_since_hand_raise": np.nan, "do_not_contact": 0, "sales_accepted": 0,
            "email": "a@acme.com"}  # fmt: skip
    return {**base, **values}


def test_each_stage_with_its_rule_and_action(params):
    leads = pd.DataFrame([
        _lead(),
        _lead(score=12, fit=60, engagement=70),
        _lead(score=12, fit=60, engagement=70, sales_accepted=1),
        _lead(score=40, days_since_hand_raise=2, bant_confirmed=3),
        _lead(score=40, days_since_hand_raise=2, bant_confirmed=3, do_not_contact=1),
        _lead(score=40, email="rep@salesforce.com"),
        _lead(icp_match=0.0),
    ])  # fmt: skip
    out = qualify(leads, params.criteria, AS_OF)
    assert out["stage"].tolist() == ["nurture", "MQL", "SAL", "SQL", "disqualified", "disqualified", "disqualified"]
    assert out.loc[0, "stage_reason"] == "Not yet MQL: score 5 < 10, fit 30 < 40, engagement 20 < 50"
    assert out.loc[1, "stage_reason"].startswith("MQL: score 12 ≥ 10")
    assert out.loc[3, "stage_reason"] == "SQL: score 40 ≥ 25, hand raised 2 days ago, 3 of 4 BANT confirmed (needs 2)"
    assert out.loc[3, "next_action"] == params.criteria.next_actions["SQL"]
    assert out.loc[4, "stage_reason"] == "Marked do not contact"
    assert out.loc[5, "stage_reason"] == "E-mail domain belongs to a competitor"
    assert out.loc[6, "stage_reason"].startswith("Outside the ideal customer profile")
    assert out.loc[6, "recycle_on"] == "2026-05-10"  # 120 days on, not forgotten
    # A competitor's regional subdomain is the competitor's; a name that only ends the same is not.
    others = pd.DataFrame([_lead(score=40, email="jane@eu.Salesforce.com"), _lead(score=40, email="a@xsalesforce.com")])
    reasons = qualify(others, params.criteria, AS_OF)["stage_reason"].tolist()
    assert reasons[0] == "E-mail domain belongs to a competitor" and reasons[1] != reasons[0], reasons
    # A display name, a trailing dot or a second address around the address hid the domain.
    written = [
        "Jane <jane@salesforce.com>",
        "jane@salesforce.com.",
        "jane@salesforce.com; bob@acme.com",
        '"jane@acme.com" <jane@salesforce.com>',
    ]  # the address is the one in brackets, not the name
    hidden = qualify(pd.DataFrame([_lead(score=40, email=e) for e in written]), params.criteria, AS_OF)
    assert set(hidden["stage_reason"]) == {"E-mail domain belongs to a competitor"}, hidden["stage_reason"].tolist()
    # Every address of a cell is read: a competitor's listed second is a competitor's; a display
    # name that only looks like a competitor's address is not.
    second = ["bob@acme.com; jane@salesforce.com", "Bob <bob@acme.com>, Jane <jane@eu.salesforce.com>"]
    named = ['"jane@salesforce.com" <jane@acme.com>', "jane@salesforce.com <jane@acme.com>",
             "jane@acme.com (ex jane@salesforce.com)"]  # fmt: skip
    read = qualify(pd.DataFrame([_lead(score=40, email=e) for e in second + named]), params.criteria, AS_OF)
    competitor = read["stage_reason"].eq("E-mail domain belongs to a competitor").tolist()
    assert competitor == [True, True, False, False, False], read["stage_reason"].tolist()
    assert "2026-05-10" in out.loc[6, "next_action"]
    # An opt-out or a competitor is never to be contacted again, so never recycled.
    assert out.loc[4, "next_action"] == "Do not contact: the lead opted out"
    assert out.loc[5, "next_action"] == "Do not work: the e-mail address is a competitor's"
    assert out["recycle_on"][:6].isna().all()


def test_criteria_of_models_registered_before_the_opt_out_actions_still_load(params):
    from features.params import CriteriaParams

    stored = params.criteria.model_dump(mode="json")
    for key in ("do_not_contact", "competitor"):
        del stored["next_actions"][key]
    old = CriteriaParams.model_validate(stored)
    out = qualify(pd.DataFrame([_lead(do_not_contact=1)]), old, AS_OF)
    assert out.loc[0, "next_action"] == "Do not contact: the lead opted out" and out.loc[0, "recycle_on"] is None


def test_a_value_just_below_a_threshold_never_reads_as_reaching_it(params):
    out = qualify(pd.DataFrame([_lead(score=9.7, fit=39.96, engagement=20.0)]), params.criteria, AS_OF)
    assert out.loc[0, "stage_reason"] == "Not yet MQL: score 9.7 < 10, fit 39.96 < 40, engagement 20 < 50"


def test_a_value_just_above_a_recalibrated_threshold_never_reads_as_below_it(params):
    """A recalibration sets thresholds with decimals: "MQL: score 12 ≥ 12.1" contradicted itself."""
    criteria = params.criteria.model_copy(
        update={"mql": params.criteria.mql.model_copy(update={"min_score": 12.1, "min_fit": 39.5}),
                "sql": params.criteria.sql.model_copy(update={"min_score": 30.25})}
    )  # fmt: skip
    leads = pd.DataFrame([_lead(score=12.2, fit=39.96, engagement=70.0),
                          _lead(score=30.26, days_since_hand_raise=2, bant_confirmed=3)])  # fmt: skip
    out = qualify(leads, criteria, AS_OF)
    assert out.loc[0, "stage_reason"] == "MQL: score 12.2 ≥ 12.1, fit 40 ≥ 39.5, engagement 70 ≥ 50"
    assert out.loc[1, "stage_reason"].startswith("SQL: score 30.3 ≥ 30.25,")


def test_sql_needs_a_recent_hand_raise_and_bant(params):
    leads = pd.DataFrame([
        _lead(score=40, days_since_hand_raise=45, bant_confirmed=3),
        _lead(score=40, days_since_hand_raise=1, bant_confirmed=1),
        _lead(score=40, days_since_hand_raise=1, bant_confirmed=2),
    ])  # fmt: skip
    # Not SQL without BANT, but an MQL: the hand was raised.
    assert qualify(leads, params.criteria, AS_OF)["stage"].tolist() == ["nurture", "MQL", "SQL"]


def test_missing_values_never_satisfy_a_rule(params):
    leads = pd.DataFrame([{"score": 50.0}])
    out = qualify(leads, params.criteria, AS_OF)
    assert out.loc[0, "stage"] == "nurture"
    assert "fit unknown" in out.loc[0, "stage_reason"]


def test_recycle_dates_follow_each_leads_moment(params):
    leads = pd.DataFrame([_lead(icp_match=0.0), _lead(icp_match=0.0)])
    moments = pd.Series(pd.to_datetime(["2026-01-01", "2026-03-01"]))
    assert qualify(leads, params.criteria, moments)["recycle_on"].tolist() == ["2026-05-01", "2026-06-29"]


def test_a_recycle_date_holds_from_one_scoring_to_the_next_and_comes_round(params):
    """Counted from each scoring it moved on with every one (2027-02-19, then 2027-03-22, ...)."""
    created = pd.Timestamp("2026-06-01")
    moments = ["2026-10-22", "2026-11-22", "2026-09-28 23:00", "2026-09-29 01:00", "2026-09-29 23:59", "2026-09-30"]
    moments = [pd.Timestamp(m) for m in moments]
    leads = pd.DataFrame([_lead(icp_match=0.0, lead_age_days=(m - created) / pd.Timedelta(days=1)) for m in moments])
    dates = qualify(leads, params.criteria, pd.Series(moments))["recycle_on"].tolist()
    # Every 120 days from 2026-06-01; a scoring on the day itself says that day, the next one the next cycle.
    assert dates == ["2027-01-27", "2027-01-27", "2026-09-29", "2026-09-29", "2026-09-29", "2027-01-27"]
    # A lead created late in the day is due on the same day 120 days on, from its first moment to its last.
    late = pd.Timestamp("2026-01-31 23:30")
    due = [pd.Timestamp("2026-05-30 23:59:59"), pd.Timestamp("2026-05-31"), pd.Timestamp("2026-05-31 23:45")]
    leads = pd.DataFrame([_lead(icp_match=0.0, lead_age_days=(m - late) / pd.Timedelta(days=1)) for m in due])
    assert qualify(leads, params.criteria, pd.Series(due))["recycle_on"].tolist() == ["2026-05-31"] * 3


def test_a_raised_hand_makes_an_mql_whatever_the_ranks(params):
    """A lead that met sales was told to stay in the nurture campaign for a fit rank of 39."""
    leads = pd.DataFrame([
        _lead(score=66.6, fit=39.0, engagement=90.0, days_since_hand_raise=19),
        _lead(score=66.6, fit=39.0, engagement=90.0, days_since_hand_raise=45),  # too long ago
        _lead(score=8.0, fit=39.0, engagement=90.0, days_since_hand_raise=2),  # under the MQL score
    ])  # fmt: skip
    out = qualify(leads, params.criteria, AS_OF)
    assert out["stage"].tolist() == ["MQL", "nurture", "nurture"]
    assert out.loc[0, "stage_reason"] == "MQL: hand raised 19 days ago, score 66.6 ≥ 10"
    mql_off = params.criteria.mql.model_copy(update={"hand_raise_qualifies": False})
    off = params.criteria.model_copy(update={"mql": mql_off})
    assert qualify(leads, off, AS_OF)["stage"].tolist() == ["nurture"] * 3


def test_mql_on_score_alone_when_fit_and_engagement_are_not_conditions(params):
    """A flat model's criteria leave fit and engagement out: its ranks come from columns
    grouped by name, so a lead scoring 90 stayed in nurture for an engagement rank of 16."""
    mql = params.criteria.mql.model_copy(update={"min_score": 62.5, "min_fit": None, "min_engagement": None})
    criteria = params.criteria.model_copy(update={"mql": mql})
    leads = pd.DataFrame([_lead(score=90.0, fit=3.0, engagement=16.0), _lead(score=62.4, fit=99.0, engagement=99.0),
                          _lead(score=70.0, fit=np.nan, engagement=np.nan),
                          _lead(score=62.5, fit=1.0, engagement=1.0)])  # fmt: skip
    out = qualify(leads, criteria, AS_OF)
    assert out["stage"].tolist() == ["MQL", "nurture", "MQL", "MQL"]
    # The score as the API gives it, one decimal (62.4 read "62 < 62.5"; 83.5 read "84 ≥ 83.4").
    assert out["stage_reason"].tolist() == [
        "MQL: score 90 ≥ 62.5",
        "Not yet MQL: score 62.4 < 62.5",
        "MQL: score 70 ≥ 62.5",
        "MQL: score 62.5 ≥ 62.5",
    ]


def test_the_stages_a_model_can_give_are_the_ones_its_leads_reach(params):
    """GET /model listed SQL and disqualification rules for a flat model, which never reaches
    them: its leads carry a score and no CRM fields."""
    from features.criteria import STAGES, reachable_stages
    from features.params import CriteriaParams
    from training.pipeline import flat_rules

    assert reachable_stages("crm", params.criteria) == list(STAGES)
    scores = np.linspace(0, 100, 201)
    sql_by_score = {"require_hand_raise": False, "min_bant_confirmed": 0}
    for sql_update in ({}, sql_by_score, {**sql_by_score, "min_score": 70.0}):
        raw = params.criteria.model_dump(mode="json")
        raw["sql"].update(sql_update)
        criteria = CriteriaParams.model_validate(flat_rules(raw, 40.0))
        flat_leads = pd.DataFrame({"score": scores})  # all a flat lead gives the rules
        reached = set(qualify(flat_leads, criteria, AS_OF)["stage"])
        assert reached == set(reachable_stages("flat", criteria)), sql_update
    assert reachable_stages("flat", criteria) == ["nurture", "MQL", "SQL"]  # SQL by a score above MQL's
    # A flat export with the rules' own columns reaches their stages (an e-mail column: competitors).
    inputs = {"email": ["a@hubspot.com", "b@acme.com", "c@acme.com", "d@acme.com"] * 101,
              "sales_accepted": [0, 1, 0, 0] * 101}  # fmt: skip
    with_inputs = pd.DataFrame({"score": np.linspace(0, 100, 404), **inputs})
    reached = set(qualify(with_inputs, criteria, AS_OF)["stage"])
    assert (
        reached == set(reachable_stages("flat", criteria, inputs)) == {"disqualified", "nurture", "MQL", "SAL", "SQL"}
    )


def test_an_admins_rule_that_cannot_work_is_refused_naming_the_key(tmp_path):
    """Each passed the types and then never fired (a hand raise spelt `demo-request`: no SQL at
    all), failed at scoring time (an unknown placeholder: a 500 for a whole batch) or graded
    against the page (a D from 5 graded a 3 D too); a key written twice kept the last one."""
    import pytest

    from features.params import ParamsError, default_params_path, load_params

    edits = {
        "criteria.hand_raise_types": (["demo-request", "meeting"], "'demo-request' cannot count as a hand raise"),
        "criteria.mql.min_score": (40, "criteria.sql.min_score: 25 is below mql.min_score 40"),
        "criteria.sql.min_score": (250, "criteria.sql.min_score: 250 is outside 0-100"),
        "criteria.next_actions.disqualified": ("recycle on {recycle_date}", "unknown placeholder {recycle_date}"),
        "criteria.disqualify.competitor_domains": (["@hotmail.com"], "'@hotmail.com': write a domain as it follows"),
        "features.icp.industries": ([], "features.icp.industries: empty"),
        "features.icp.min_employees": (9000, "min_employees: 9000 is above max_employees 5000"),
        "grades": (
            {"A": 60, "B": 35, "C": 15, "D": 5},
            "last grade starts at 0 and none above 100 (A: 60, B: 35, C: 15, D: 5)",
        ),
        "recalibration.grade_shares": ({"A": -0.05, "B": 0.5}, "recalibration.grade_shares: each above 0"),
        "features.icp.countries": (["Germany", " "], "features.icp.countries: a blank entry"),
        "criteria.next_actions.SQL": ("  ", "criteria.next_actions: no text for SQL"),
        # A browser sends no trailing slash: that origin would never match, and the CRM's calls fail unsaid.
        "service.cors_origins": (
            ["https://crm.example.com/"],
            "service.cors_origins: 'https://crm.example.com/' is not a web origin",
        ),
    }
    for key, (value, said) in edits.items():
        with pytest.raises(ParamsError, match=re.escape(said)):
            load_params(**{key: value})
    with pytest.raises(ParamsError, match=re.escape("Invalid format specifier '%d.%m.%Y'")):
        load_params(**{"criteria.next_actions.disqualified": "recycle {recycle_on:%d.%m.%Y}"})  # it scored with a 500
    load_params(**{"criteria.next_actions.MQL": "call {today} :-}"})  # shown as written: only `disqualified` is filled
    load_params(**{"criteria.next_actions.disqualified": "{{ICP}} recycle on {recycle_on}"})  # a brace written {{
    twice = tmp_path / "params.yaml"
    written = default_params_path().read_text()
    twice.write_text(written.replace("    min_score: 10\n", "    min_score: 10\n    min_score: 30\n"))
    line = written[: written.index("    min_score: 10\n")].count("\n") + 2  # the second one, numbered from 1
    with pytest.raises(
        ParamsError, match=rf"{twice}, line {line}, column 5: 'min_score' is written twice in one section"
    ):
        load_params(twice)
    with pytest.raises(ParamsError, match=r"features.icp.industries: Input should be a list"):
        load_params(**{"features.icp.industries": "Software"})


def test_a_recycle_date_holds_for_a_lead_created_at_midnight_whatever_the_moment(params):
    """The creation moment is worked back from the age in days, a float: a lead created at
    midnight came back a hair before it for some moments and was recycled a day early."""
    created = pd.Timestamp("2026-09-01")
    rng = np.random.default_rng(7)
    moments = created + pd.to_timedelta(rng.uniform(1, 119, 400), unit="D").round("us")
    leads = pd.DataFrame([_lead(icp_match=0.0, lead_age_days=(m - created) / pd.Timedelta(days=1)) for m in moments])
    dates = qualify(leads, params.criteria, pd.Series(moments))["recycle_on"]
    assert dates.value_counts().to_dict() == {"2026-12-30": 400}
    # Rounded to the millisecond, a lead created a fraction of one before the moment stays before it.
    moment = pd.Timestamp("2026-09-01 00:00:00.000300")
    just = pd.DataFrame([_lead(icp_match=0.0, lead_age_days=pd.Timedelta(microseconds=200) / pd.Timedelta(days=1))])
    assert qualify(just, params.criteria, pd.Series([moment]))["recycle_on"].tolist() == ["2026-12-30"]


def test_a_nurture_lead_that_raised_a_hand_is_told_the_score_alone_holds_it_back(params):
    """ "Not yet MQL: score 2.1 < 10, fit 2 < 40" of a lead that started a trial 9 days ago: a
    hand-raise makes an MQL at the score alone, so fit and engagement blocked nothing."""
    assert params.criteria.mql.hand_raise_qualifies
    leads = pd.DataFrame([_lead(score=2.1, fit=2, days_since_hand_raise=9.25), _lead(score=12, fit=2,
                          days_since_hand_raise=9.25)])  # fmt: skip
    out = qualify(leads, params.criteria, AS_OF)
    assert out["stage"].tolist() == ["nurture", "MQL"]
    assert out.loc[0, "stage_reason"] == "Not yet MQL: hand raised 9 days ago, score 2.1 < 10"


def test_a_nurture_lead_that_unsubscribed_is_not_nurtured_by_e_mail(params):
    """113 open nurture leads with an unsubscribe were told "Keep in the nurture campaign"."""
    leads = pd.DataFrame([_lead(n_unsubscribe_total=1), _lead(), _lead(score=12, fit=60, engagement=70,
                                                                       n_unsubscribe_total=2)])  # fmt: skip
    out = qualify(leads, params.criteria, AS_OF)
    nurture = params.criteria.next_actions["nurture"]
    assert out["next_action"].tolist() == [
        nurture + " (not by e-mail: the lead unsubscribed)",
        nurture,
        params.criteria.next_actions["MQL"],
    ]
