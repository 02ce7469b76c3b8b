import numpy as np
import pandas as pd
import pytest

from features.schema import ACTIVITY_REQUIRED, LEAD_REQUIRED, OUTCOME_REQUIRED
from features.synthetic import generate_crm


@pytest.fixture(scope="module")
def crm():
    return generate_crm(3000, seed=11, start="2025-01-01", months=12)


def test_same_seed_same_export_other_seed_other_export(crm):
    again = generate_crm(3000, seed=11, start="2025-01-01", months=12)
    other = generate_crm(3000, seed=12, start="2025-01-01", months=12)
    pd.testing.assert_frame_equal(crm.leads, again.leads)
    pd.testing.assert_frame_equal(crm.activities, again.activities)
    pd.testing.assert_frame_equal(crm.truth, again.truth)
    assert not crm.leads["created_at"].equals(other.leads["created_at"])


def test_tables_follow_the_raw_contract(crm):
    for column in LEAD_REQUIRED:
        assert column in crm.leads
    for column in ACTIVITY_REQUIRED:
        assert column in crm.activities
    for column in OUTCOME_REQUIRED:
        assert column in crm.outcomes
    for column in ("industry", "employees", "annual_revenue", "country", "seniority", "department",
                   "tech_stack", "lead_source", "budget", "authority", "need", "timeline"):  # fmt: skip
        assert column in crm.leads
    assert set(crm.outcomes["status"]) == {"converted", "lost", "open"}


def test_truth_is_a_probability_per_open_lead_and_snapshot(crm):
    p = crm.truth["probability"]
    assert ((p > 0) & (p < 1)).all()
    assert not crm.truth.duplicated(["lead_id", "as_of"]).any()
    assert crm.truth["as_of"].nunique() == 11  # one snapshot per month after the first


def test_export_has_the_defects_of_real_exports(crm):
    assert crm.leads["lead_id"].duplicated().any()
    assert (~crm.activities["lead_id"].isin(crm.leads["lead_id"])).any()
    industry = crm.leads["industry"].astype(str)
    assert (industry == "").any() and industry.str.endswith(" ").any()
    assert crm.leads["annual_revenue"].astype(str).str.startswith("$").any()
    assert (~crm.activities["occurred_at"].str.match(r"^\d{4}-\d\d-\d\dT")).any()


def test_buyer_mix_drifts_over_time():
    crm = generate_crm(20000, seed=5, start="2024-01-01", months=24)
    created = pd.to_datetime(crm.leads["created_at"])
    early = crm.leads.loc[created < created.quantile(0.25), "lead_source"].str.strip().str.casefold()
    late = crm.leads.loc[created > created.quantile(0.75), "lead_source"].str.strip().str.casefold()
    assert (late == "paid social").mean() > (early == "paid social").mean() + 0.05


def test_fifty_thousand_leads_give_about_a_million_activities():
    crm = generate_crm(50000, seed=7)
    assert 700_000 < len(crm.activities) < 1_400_000
    assert np.isclose(crm.truth["probability"].mean(), 0.07, atol=0.04)


@pytest.mark.parametrize("leads", [1, 3, 5])
def test_tiny_exports_generate(leads):
    crm = generate_crm(leads, seed=1, start="2024-01-01", months=24)
    assert crm.leads["lead_id"].nunique() == leads and len(crm.outcomes) == leads


@pytest.mark.parametrize("seed,start", [(1, "2024-11-01"), (2, "2025-01-04"), (1, "2024-11-01T15:00+05:00")])
def test_truth_keys_every_example_training_builds(tmp_path, seed, start):
    from features.params import load_params
    from features.synthetic import write_crm
    from training.pipeline import prepare_crm

    # Training's snapshots start on the first lead's day: the generator's must be the same.
    write_crm(generate_crm(500, seed=seed, start=start, months=8), tmp_path)
    dataset = prepare_crm(tmp_path, load_params())
    assert len(dataset.truth) > 500 and dataset.truth.notna().all()


def test_a_period_that_cannot_be_an_export_is_refused():
    with pytest.raises(ValueError, match="ends after today"):
        generate_crm(10, seed=1, start=str(pd.Timestamp.now().date()), months=2)
    with pytest.raises(ValueError, match="before 1990"):
        generate_crm(10, seed=1, start="1850-01-01", months=2)


def test_today_is_todays_date_in_utc_whatever_the_machines_time_zone(monkeypatch):
    """The check "ends after today" read the machine's clock: a period ending tomorrow (UTC) was refused in
    Honolulu and one ending the day after was taken where it was already that day."""
    import time

    from features.clean import utc_now
    from features.synthetic import STEP_DAYS

    for zone in ("Etc/GMT+12", "Etc/GMT-14"):  # UTC-12 and UTC+14: one of them is on another date at any hour
        tomorrow = utc_now().normalize() + pd.Timedelta(days=1)  # read per zone: a run may pass midnight
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        try:
            start = tomorrow - pd.Timedelta(days=2 * STEP_DAYS)
            assert not generate_crm(10, seed=1, start=str(start.date()), months=2).leads.empty
            with pytest.raises(ValueError, match="ends after today"):
                generate_crm(10, seed=1, start=str((start + pd.Timedelta(days=1)).date()), months=2)
        finally:
            monkeypatch.undo()  # the machine's own TZ, if it had one, back for the tests after this
            time.tzset()
