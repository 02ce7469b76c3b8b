"""The service's direct paths (one lead, and a batch) give the general path's numbers, lead for lead."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.clean import tidy_text
from features.ingest import load_crm
from serving.direct import DirectScorer
from serving.schemas import Lead, LeadScore, leads_to_frames
from serving.scoring import InvalidLeads, prepare_crm_leads, score_features

AS_OF = pd.Timestamp("2025-12-20 12:00:00")
FIELDS = ("industry", "country", "seniority", "department", "lead_source", "employees", "annual_revenue",
          "budget", "authority", "need", "timeline", "tech_stack", "email")  # fmt: skip


def _records(leads: list[Lead], scored: pd.DataFrame) -> list[dict]:
    records = scored.replace({np.nan: None}).to_dict(orient="records")
    return [
        LeadScore.model_validate(
            {"lead_id": lead.lead_id, **r, "as_of": "set by the service", "activities_not_read": 0}
        ).model_dump()
        for lead, r in zip(leads, records, strict=True)
    ]


def _general_batch(model, leads: list[Lead], as_of: pd.Timestamp) -> list[dict]:
    """What the service's general (data frame) path answers for the leads."""
    moments = pd.Series([as_of] * len(leads))
    frame, activities = leads_to_frames(leads)
    features, context, _, _ = prepare_crm_leads(model, frame, activities, moments)
    return _records(leads, score_features(model, features, context, moments))


def _general(model, lead: Lead, as_of: pd.Timestamp) -> dict:
    return _general_batch(model, [lead], as_of)[0]


def _fast(one: DirectScorer, lead: Lead, as_of: pd.Timestamp) -> dict | None:
    record = one.score(lead, as_of)
    if record is None:
        return None
    return LeadScore.model_validate(
        {"lead_id": lead.lead_id, **record, "as_of": "set by the service", "activities_not_read": 0}
    ).model_dump()


def _messy(i: int, lead: dict) -> dict:
    """Vary the lead the way CRM calls vary: case and spacing, placeholders, synonyms, time
    zones, unknown activity types, flags, lists."""
    variant = i % 8
    if variant == 1 and lead.get("industry"):
        lead["industry"] = "  " + lead["industry"].upper() + " "
    if variant == 1:  # the profile's values as forms and enrichment write them
        short = {"United States": "U.S.A.", "United Kingdom": "UK", "C-Level": "c level"}
        lead["country"] = short.get(lead.get("country"), lead.get("country"))
        lead["seniority"] = short.get(lead.get("seniority"), lead.get("seniority"))
    if variant == 2:
        lead["country"], lead["budget"], lead["need"] = "N/A", "Yes", " confirmed"
    if variant == 3 and lead.get("tech_stack"):
        lead["tech_stack"] = [t.strip() for t in lead["tech_stack"].split(";")]
    if variant == 4:
        lead["do_not_contact"], lead["sales_accepted"] = bool(i % 3), True
        lead["email"] = "someone@gmail.com"
    if variant == 5:
        lead["created_at"] = lead["created_at"].replace(tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        for activity in lead["activities"][::2]:
            spelt = "EmailOpen" if i % 16 == 5 else "Email Open"  # camel case, as some exports name types
            activity["activity_type"] = spelt if activity["activity_type"] == "email_open" else "podcast"
    if variant == 6:
        lead["activities"].append({"occurred_at": AS_OF + pd.Timedelta(days=3), "activity_type": "demo_request"})
        lead["activities"].append({"occurred_at": AS_OF - pd.Timedelta(seconds=1), "activity_type": "pricing_page"})
        lead["employees"] = 0.0
    if variant == 7:
        lead["email"], lead["seniority"] = "buyer@rival-crm.com", "select"
        lead["lead_source"] = "\u200b" if i % 16 == 7 else f"{lead['lead_source']}\ufeff"  # pasted invisibles
        for activity in lead["activities"][:1]:
            activity["activity_type"] += "\u200b"
    return lead


@pytest.fixture(scope="module")
def requests(small_crm_dir) -> list[Lead]:
    crm = load_crm(small_crm_dir)
    leads = crm.leads[crm.leads["created_at"] < AS_OF].sample(400, random_state=5)
    acts = crm.activities[crm.activities["lead_id"].isin(leads["lead_id"])]
    by_lead = dict(tuple(acts.groupby("lead_id")))
    out = []
    for i, row in enumerate(leads.to_dict(orient="records")):
        lead = {"lead_id": row["lead_id"], "created_at": row["created_at"].to_pydatetime()}
        lead |= {f: row[f] for f in FIELDS if isinstance(row.get(f), str | float) and row[f] == row[f]}
        own = by_lead.get(row["lead_id"], pd.DataFrame(columns=["occurred_at", "activity_type"]))
        lead["activities"] = [
            {"occurred_at": a.occurred_at.to_pydatetime(), "activity_type": a.activity_type} for a in own.itertuples()
        ]
        out.append(Lead.model_validate(_messy(i, lead)))
    return out


def test_single_lead_path_matches_the_general_path(champion, requests):
    one = DirectScorer(champion)
    stages = set()
    for lead in requests:
        fast = _fast(one, lead, AS_OF)
        assert fast is not None, lead.lead_id
        assert fast == _general(champion, lead, AS_OF), lead.lead_id
        stages.add(fast["stage"])
    # The variants reach the rules that need the context (flags, competitor domain, sales acceptance).
    assert {"disqualified", "SAL", "nurture"} <= stages


def test_leads_the_single_lead_path_declines_get_the_general_error(champion, requests):
    one = DirectScorer(champion)
    lead = requests[0]
    early = AS_OF - pd.Timedelta(days=3000)
    ancient = lead.model_copy(
        update={"activities": [{"occurred_at": dt.datetime(1850, 1, 1), "activity_type": "web_visit"}]}
    )
    blank_type = lead.model_copy(
        update={"activities": [{"occurred_at": dt.datetime(2025, 1, 1), "activity_type": "   "}]}
    )
    with pytest.raises(ValidationError, match="greater than or equal to 1900"):
        Lead.model_validate(ancient.model_dump())  # the schema stops it before any scorer
    for case, moment in ((lead, early), (Lead.model_validate(blank_type.model_dump()), AS_OF)):
        assert one.score(case, moment) is None
        with pytest.raises(InvalidLeads):
            _general(champion, case, moment)


def test_an_id_of_spaces_or_invisible_characters_only_is_refused_as_blank():
    for blank in (
        " ",
        "\u200b",
        "\ufeff \u2060",
        "\u00ad",
        "\u200e\u200f",
        "\u3164",
        "\u2800",
        "\u115f",
        "\uffa0",
        "\u061c",
        "\u17b4",
    ):
        with pytest.raises(ValidationError, match="lead_id"):
            Lead(lead_id=blank)
    assert Lead(lead_id="L1\u200b").lead_id == "L1\u200b"  # answered as sent, matched as "L1"
    assert tidy_text("\u2800L1\u115f") == "L1"  # batch scoring reads the blank ones alike
    # Control characters anywhere: C1 (a terminal's escape), line and paragraph separators, the
    # direction overrides that show an id reversed on a page.
    for controlled in ("a\x9bb", "a\u2028b", "a\u2029b", "a\u202eb", "a\u2066b", "\x85"):
        with pytest.raises(ValidationError, match="lead_id"):
            Lead(lead_id=controlled)


def test_two_field_names_that_differ_only_by_spaces_around_them_are_refused():
    with pytest.raises(ValidationError, match="'City' and ' City' name one column"):
        Lead(lead_id="a", fields={"City": "Mumbai", " City": "Pune"})  # one value would be lost
    assert Lead(lead_id="a", fields={"City": "Mumbai", "City Tier": "1"}).fields == {"City": "Mumbai", "City Tier": "1"}


def _respell(lead: Lead, **changes) -> Lead:
    return Lead.model_validate({**lead.model_dump(exclude_none=True), **changes})


def test_an_activity_sent_twice_counts_once_on_every_path(champion, requests):
    """As batch scoring reads an export with a repeated row: one event, not two."""
    lead = next(lead for lead in requests if len(lead.activities) >= 2)
    acts = [dict(a) for a in lead.activities]
    twice = _respell(lead, activities=[*acts, acts[0], acts[0]])
    want = _general(champion, lead, AS_OF)
    assert _fast(DirectScorer(champion), twice, AS_OF) == want
    assert _general(champion, twice, AS_OF) == want
    other = next(each for each in requests if each.lead_id != lead.lead_id)
    got, _ = DirectScorer(champion).prepare([twice, other], AS_OF)
    expected, _ = DirectScorer(champion).prepare([lead, other], AS_OF)
    pd.testing.assert_frame_equal(got, expected)


def test_sub_second_moments_and_types_outside_the_contract_read_alike_on_every_path(champion, requests):
    """An activity in T's second counts when before T (whole seconds were compared), and a call
    and a chat at one moment are two events (they were merged into 'other' first), on the
    single-lead, batch and general paths alike."""
    moment = AS_OF + pd.Timedelta(milliseconds=900)
    day_before = (AS_OF - pd.Timedelta(days=1)).to_pydatetime()
    lead = _respell(requests[0], activities=[
        {"occurred_at": (AS_OF + pd.Timedelta(milliseconds=250)).to_pydatetime(), "activity_type": "demo_request"},
        {"occurred_at": (AS_OF + pd.Timedelta(milliseconds=950)).to_pydatetime(), "activity_type": "pricing_page"},
        *({"occurred_at": day_before, "activity_type": kind} for kind in ("Call", "Chat", "call")),
    ])  # fmt: skip
    direct = DirectScorer(champion)
    features, _ = direct.features_of(lead, moment)
    assert (features["n_demo_request_total"], features["n_pricing_page_total"], features["n_other_total"]) == (1, 0, 2)
    assert _fast(direct, lead, moment) == _general(champion, lead, moment)
    batch, _ = direct.prepare([lead, requests[1]], moment)
    frame, activities = leads_to_frames([lead, requests[1]])
    general, _, _, _ = prepare_crm_leads(champion, frame, activities, pd.Series([moment] * 2))
    pd.testing.assert_frame_equal(batch, general, check_dtype=False)


def test_a_crm_call_without_as_of_reads_the_activity_it_reports(champion):
    """Scored at "now", moved up to a stamp a little ahead of this clock: just after it, so the
    demo request the CRM calls about counts (the moment was the stamp itself, and left it out)."""
    from serving.service import _moment

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    lead = Lead.model_validate({"lead_id": "x", "created_at": soon - dt.timedelta(days=3),
                                "activities": [{"occurred_at": soon, "activity_type": "demo_request"}]})  # fmt: skip
    moment = _moment(None, [lead])
    assert moment > pd.Timestamp(soon).tz_convert("UTC").tz_localize(None)
    features, _ = DirectScorer(champion).features_of(lead, moment)
    assert features["n_demo_request_total"] == 1
    # Just after the newest stamp, whatever the order they come in (it was the one before the newest).
    later = soon + dt.timedelta(microseconds=1)
    for order in ([soon, later], [later, soon]):
        acts = [{"occurred_at": when, "activity_type": "demo_request"} for when in order]
        both = Lead.model_validate({"lead_id": "x", "created_at": soon - dt.timedelta(days=3), "activities": acts})
        assert DirectScorer(champion).features_of(both, _moment(None, [both]))[0]["n_demo_request_total"] == 2


def test_batch_path_matches_the_general_path(champion, requests):
    direct = DirectScorer(champion)
    # Spellings that differ by case across leads are merged into the most frequent one, as
    # the general path does within a request (a tie goes to the first in sort order).
    batch = [
        *requests,
        _respell(requests[0], lead_id="x-1", industry="SOFTWARE"),
        _respell(requests[1], lead_id="x-2", industry="software"),
        _respell(requests[2], lead_id="x-3", country="germany"),
    ]
    prepared = direct.prepare(batch, AS_OF)
    assert prepared is not None
    features, context = prepared
    expected_features, expected_context, _, _ = prepare_crm_leads(
        champion, *leads_to_frames(batch), pd.Series([AS_OF] * len(batch))
    )
    pd.testing.assert_frame_equal(features, expected_features)
    # The count of activities not read is the service's own (`_not_read` of the request), beside the scores.
    expected_context = expected_context.drop(columns="activities_not_read")
    pd.testing.assert_frame_equal(context.reset_index(drop=True), expected_context)
    moments = pd.Series([AS_OF] * len(batch))
    fast = _records(batch, score_features(champion, features, context, moments))
    assert fast == _general_batch(champion, batch, AS_OF)
    assert {"disqualified", "SAL", "nurture"} <= {record["stage"] for record in fast}


def test_batches_the_direct_path_declines_get_the_general_error(champion, requests):
    direct = DirectScorer(champion)
    late = _respell(requests[1], created_at=(AS_OF + pd.Timedelta(days=1)).to_pydatetime())
    blank_type = _respell(requests[1], activities=[{"occurred_at": dt.datetime(2025, 1, 1), "activity_type": " "}])
    same_id = _respell(requests[1], lead_id=f" {requests[0].lead_id}  ")  # the same id once stripped
    no_date = _respell(requests[1], created_at=None)
    for odd in (late, blank_type, same_id, no_date):
        batch = [requests[0], odd, requests[2]]
        assert direct.prepare(batch, AS_OF) is None
        with pytest.raises(InvalidLeads):
            _general_batch(champion, batch, AS_OF)


def test_a_long_value_is_cleaned_but_not_kept_in_the_cache(champion, requests):
    """A tech stack has no length limit: each distinct 14 MB one stayed in a worker's memory."""
    one = DirectScorer(champion)
    huge = _respell(requests[0], tech_stack=[f"tool{i:05d}" for i in range(20_000)])
    assert _fast(one, huge, AS_OF) == _general(champion, huge, AS_OF)
    assert max(map(len, one.texts)) <= 1_000 and one.texts  # short values are still kept
