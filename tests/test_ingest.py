import random

import pandas as pd
import pytest

from features.ingest import LEAD_SET_ASIDE, DataError, Quarantine, load_crm, read_csv_table


def _write(tmp_path, leads, activities, outcomes):
    pd.DataFrame(leads).to_csv(tmp_path / "leads.csv", index=False)
    pd.DataFrame(activities).to_csv(tmp_path / "activities.csv", index=False)
    pd.DataFrame(outcomes).to_csv(tmp_path / "outcomes.csv", index=False)
    return tmp_path


@pytest.fixture
def export(tmp_path):
    leads = {
        "lead_id": ["A", "B", "B", "C", "C", "D", "E", "F"],
        "created_at": [
            "2025-01-01",
            "2025-01-02",
            "2025-01-02",
            "2025-01-03",
            "2025-01-03",
            "yesterday",
            "2025-01-05",
            "2025-01-06",
        ],
        "industry": ["Software", "software ", "software ", "Retail", "Media", "Retail", "Select", "software "],
        "employees": ["1,200", "50", "50", "abc", "10", "10", "", "7"],
    }
    activities = {
        "lead_id": ["A", "A", "Z", "A", "E", "B"],
        "occurred_at": [
            "2025-01-05T10:00:00",
            "2025-01-06",
            "2025-01-06",
            "31/31/2025",
            "2025-01-07",
            "2025-01-08",
        ],
        "activity_type": ["Web Visit", "demo_request", "web_visit", "web_visit", "podcast_listen", "web_visit"],
    }
    outcomes = {
        "lead_id": ["A", "B", "E", "Q", "A"],
        "status": ["Converted", "won?", "open", "lost", "converted "],
        "closed_at": ["2025-02-01", "2025-02-01", "", "2025-02-01", "2025-02-01"],
    }
    return _write(tmp_path, leads, activities, outcomes)


def test_bad_rows_are_quarantined_with_a_reason_each(export):
    crm = load_crm(export, ["", "select"])
    q = crm.quarantine.frame()
    reasons = dict(zip(zip(q["table"], q["row"], strict=True), q["reason"], strict=True))
    assert reasons[("leads", 3)].startswith("duplicate row")
    assert reasons[("leads", 4)].startswith("conflicting duplicate lead_id")
    assert reasons[("leads", 5)].startswith("conflicting duplicate lead_id")
    assert "created_at" in reasons[("leads", 6)] and "yesterday" in reasons[("leads", 6)]
    assert reasons[("activities", 3)].startswith("unknown lead_id")
    assert "occurred_at" in reasons[("activities", 4)]
    assert reasons[("outcomes", 2)].startswith("status not one of")
    assert reasons[("outcomes", 4)].startswith("unknown lead_id")
    assert reasons[("outcomes", 5)].startswith("duplicate row")  # A's outcome stated twice: one is kept
    # B's only outcome row was quarantined: its outcome is unknown, so it is not taken as open.
    b_reasons = q.loc[(q["table"] == "leads") & (q["lead_id"] == "B"), "reason"]
    assert b_reasons.str.startswith("outcome unknown").any()
    assert reasons[("activities", 6)] == "its lead was left out: outcome unknown"
    assert sorted(crm.leads["lead_id"]) == ["A", "E", "F"]
    assert sorted(crm.outcomes["lead_id"]) == ["A", "E", "F"]
    assert crm.outcomes.set_index("lead_id").loc["F", "status"] == "open"


def test_values_are_cleaned_and_notes_say_what_was_changed(export):
    crm = load_crm(export, ["", "select"])
    leads = crm.leads.set_index("lead_id")
    assert leads.loc["A", "industry"] == leads.loc["F", "industry"] == "software"
    assert leads.loc["A", "employees"] == 1200.0
    assert pd.isna(leads.loc["E", "industry"])
    assert set(crm.activities["activity_type"]) == {"web_visit", "demo_request", "other"}
    assert any("podcast_listen" in note for note in crm.quarantine.notes)
    assert any("without an outcome row" in note for note in crm.quarantine.notes)
    assert crm.outcomes.set_index("lead_id").loc["A", "status"] == "converted"
    assert "leads.industry: 1 placeholder value(s) read as blank ('Select')" in crm.quarantine.notes


def test_headers_are_matched_to_the_contract_whatever_their_case_and_unused_ones_named(tmp_path):
    _write(
        tmp_path,
        {
            "Lead_ID": ["A", "B"],
            "Created At": ["2025-01-01", "2025-01-02"],
            "Industry": ["Software", "Retail"],
            "Lead Source": ["Webinar", "Paid Social"],
            "Lead Status": ["Working", "New"],
        },
        {"LEAD_ID": ["A"], "Occurred_At": ["2025-01-05"], "Activity Type": ["web_visit"]},
        {"lead_id": ["A", "B"], "Status": ["converted", "lost"], "closed_at": ["2025-02-01", "2025-02-01"]},
    )
    crm = load_crm(tmp_path)
    assert crm.leads.set_index("lead_id")["industry"].tolist() == ["Software", "Retail"]
    assert crm.leads["lead_source"].notna().all() and len(crm.activities) == 1
    notes = "\n".join(crm.quarantine.notes)
    assert "leads.csv: 'Lead_ID' read as lead_id, 'Created At' read as created_at, 'Industry' read as industry" in notes
    assert "leads.csv: column(s) not in the data contract, not used: 'Lead Status'" in notes
    assert "outcomes.csv: 'Status' read as status" in notes


def test_a_crms_own_outcome_statuses_are_read_as_params_name_them(tmp_path):
    _write(
        tmp_path,
        {"lead_id": ["A", "B", "C", "D"], "created_at": ["2025-01-01"] * 4},
        {"lead_id": ["A"], "occurred_at": ["2025-01-05"], "activity_type": ["web_visit"]},
        {
            "lead_id": ["A", "B", "C", "D"],
            "status": ["Enrolled", "Junk - lead", "Call back", "won"],
            "closed_at": ["2025-02-01"] * 4,
        },
    )
    unread = load_crm(tmp_path).quarantine.frame()
    assert unread.loc[unread["table"] == "outcomes", "reason"].tolist() == [
        f"status not one of converted/lost/open (or params.yaml data.outcome_statuses): {status}"
        for status in ("Enrolled", "Junk - lead", "Call back")
    ]
    own = {"enrolled": "converted", "JUNK LEAD": "lost", "call_back": "open"}
    crm = load_crm(tmp_path, statuses=own)
    assert crm.outcomes.set_index("lead_id")["status"].to_dict() == {
        "A": "converted", "B": "lost", "C": "open", "D": "converted"
    }  # fmt: skip
    assert crm.quarantine.frame().empty


def test_numeric_dates_are_read_in_one_order_for_the_whole_export(tmp_path):
    # Only an activity says the export is day first; the leads' dates alone could be either.
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["01/02/2025", "03/02/2025 10:00"]},
        {"lead_id": ["A", "B"], "occurred_at": ["05/02/2025", "20/02/2025"], "activity_type": ["web_visit"] * 2},
        {"lead_id": ["A", "B"], "status": ["converted", "lost"], "closed_at": ["10/03/2025", "11/03/2025"]},
    )
    crm = load_crm(tmp_path)
    assert crm.day_first is True
    assert crm.leads["created_at"].tolist() == [pd.Timestamp("2025-02-01"), pd.Timestamp("2025-02-03 10:00")]
    assert crm.outcomes.set_index("lead_id").loc["A", "closed_at"] == pd.Timestamp("2025-03-10")
    # A date only a month-first export writes is set aside, named as such rather than "not a date".
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["13/01/2025", "14/02/2025 10:00"]},
        {"lead_id": ["A", "B"], "occurred_at": ["05/02/2025", "02/20/2025"], "activity_type": ["web_visit"] * 2},
        {"lead_id": ["A", "B"], "status": ["converted", "lost"], "closed_at": ["10/03/2025", "11/03/2025"]},
    )
    reasons = load_crm(tmp_path).quarantine.frame().set_index("table")["reason"]
    assert reasons["activities"] == (
        "occurred_at is written month first (02/20/2025), but numeric dates are read day first here: the order "
        "of the export's dates (or of the model's training export)"
    )


def test_rows_dated_after_today_are_quarantined_and_do_not_stretch_the_export(tmp_path):
    _write(
        tmp_path,
        {"lead_id": ["A", "B", "C"], "created_at": ["2025-01-01", "2025-01-02", "2099-01-01"]},
        {"lead_id": ["A", "A"], "occurred_at": ["2025-01-05", "2062-05-01"], "activity_type": ["web_visit"] * 2},
        {"lead_id": ["A", "B"], "status": ["converted", "lost"], "closed_at": ["2025-02-01", "2090-02-01"]},
    )
    crm = load_crm(tmp_path)
    q = crm.quarantine.frame()
    reasons = dict(zip(zip(q["table"], q["row"], strict=True), q["reason"], strict=True))
    assert reasons[("leads", 3)] == "created_at is after today: 2099-01-01"
    assert reasons[("activities", 2)] == "occurred_at is after today: 2062-05-01"
    assert reasons[("outcomes", 2)] == "closed_at is after today: 2090-02-01"
    assert crm.leads["lead_id"].tolist() == ["A"]  # B's only outcome was quarantined: outcome unknown
    assert crm.export_end == pd.Timestamp("2025-02-02")  # the day after its newest close, A's


def test_a_meeting_booked_ahead_does_not_move_the_end_of_the_history(tmp_path):
    # Exported on 2025-03-01 with a meeting booked for 2025-03-20: an end moved to the meeting
    # would label the newest snapshots over days whose closes the export cannot hold.
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01", "2025-02-28 16:00"]},
        {
            "lead_id": ["A", "B", "B"],
            "occurred_at": ["2025-01-05", "2025-03-01 09:00", "2025-03-20 10:00"],
            "activity_type": ["web_visit", "email_open", "meeting"],
        },
        {"lead_id": ["A", "B"], "status": ["converted", "open"], "closed_at": ["2025-02-01", ""]},
    )
    crm = load_crm(tmp_path)
    assert crm.export_end == pd.Timestamp("2025-03-01")
    assert crm.quarantine.frame().empty  # kept: they are features of later scorings
    assert len(crm.activities) == 3
    assert (
        "activities.csv: 2 activities dated on or after 2025-03-01 (up to 2025-03-20), after the newest lead and "
        "outcome, read as booked ahead: the export's history is taken to end on 2025-03-01, and no snapshot's "
        "horizon runs past it"
    ) in crm.quarantine.notes
    # Dates without a time: a close on the last day is inside the history, and that day's
    # activities are not booked ahead.
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01", "2025-02-28"]},
        {"lead_id": ["B"], "occurred_at": ["2025-02-28 15:00"], "activity_type": ["meeting"]},
        {"lead_id": ["A", "B"], "status": ["lost", "converted"], "closed_at": ["2025-02-01", "2025-02-28"]},
    )
    crm = load_crm(tmp_path)
    assert crm.export_end == pd.Timestamp("2025-03-01")
    assert not any("booked ahead" in note for note in crm.quarantine.notes)


def test_activities_before_their_lead_was_created_count_and_are_said(tmp_path):
    # Visits tracked before the form fill belong to the lead; a whole history older than its
    # lead is more often an import that stamped the leads late, so the run says how many.
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-10 12:00", "2025-01-20"]},
        {
            "lead_id": ["A", "A", "A", "B"],
            "occurred_at": ["2025-01-02", "2025-01-09 23:00", "2025-01-10 08:00", "2025-01-25"],
            "activity_type": ["web_visit", "web_visit", "form_fill", "email_open"],
        },
        {"lead_id": ["A", "B"], "status": ["converted", "open"], "closed_at": ["2025-02-01", ""]},
    )
    crm = load_crm(tmp_path)
    assert len(crm.activities) == 4 and crm.quarantine.frame().empty  # counted, none set aside
    early = [note for note in crm.quarantine.notes if "before the day their lead was created" in note]
    assert early == [
        "activities.csv: 2 activities dated before the day their lead was created, counted as its engagement (as "
        "visits tracked before a form fill are); if leads were created after their history (an import), their "
        "created_at is not when they arrived"
    ]  # the visit on the morning of the day A was created is not early


def test_missing_required_column_names_file_and_column(tmp_path):
    _write(
        tmp_path,
        {"lead_id": ["A"]},
        {"lead_id": ["A"], "occurred_at": ["2025-01-01"], "activity_type": ["x"]},
        {"lead_id": ["A"], "status": ["open"]},
    )
    with pytest.raises(DataError, match=r"leads\.csv: missing required column\(s\) created_at"):
        load_crm(tmp_path)
    # closed_at is needed by closed rows only: without the column, they are not quarantined one by one.
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01"] * 2},
        {"lead_id": ["A"], "occurred_at": ["2025-01-02"], "activity_type": ["x"]},
        {"lead_id": ["A", "B"], "status": ["open", "won"]},
    )
    with pytest.raises(DataError, match=r"outcomes\.csv: no closed_at column, which converted and lost rows need"):
        load_crm(tmp_path)
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01"] * 2},
        {"lead_id": ["A"], "occurred_at": ["2025-01-02"], "activity_type": ["x"]},
        {"lead_id": ["A", "B"], "status": ["open", "open"]},
    )
    assert set(load_crm(tmp_path).outcomes["status"]) == {"open"}


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(DataError, match=r"leads\.csv: file not found"):
        load_crm(tmp_path)
    (tmp_path / "leads.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"leads\.csv: the file is empty"):
        load_crm(tmp_path)
    (tmp_path / "leads.csv").write_text("lead_id,created_at\nA,2025-01-01\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"leads\.csv: UTF-16 text .* save it as \"CSV UTF-8\""):
        load_crm(tmp_path)
    (tmp_path / "leads.csv").write_bytes(b"\x00" * 5000 + b"\n")
    with pytest.raises(DataError, match="NUL bytes") as refused:
        load_crm(tmp_path)
    assert len(str(refused.value)) < 300
    # A workbook saved under the CSV's name: said so, not a tokenizing error from its zip content.
    import zipfile

    with zipfile.ZipFile(tmp_path / "leads.csv", "w") as workbook:
        workbook.writestr("xl/workbook.xml", "<workbook/>\n" * 50)
    with pytest.raises(DataError, match=r"leads\.csv: a zip archive \(an Excel \.xlsx .* save the sheet as"):
        load_crm(tmp_path)
    (tmp_path / "leads.csv").unlink()
    (tmp_path / "leads.csv").mkdir()
    with pytest.raises(DataError, match=r"leads\.csv: a folder, not a file"):
        load_crm(tmp_path)
    # A flat CSV (one row per lead) given for the export folder is told how it trains.
    (tmp_path / "flat.csv").write_text("a,converted\n1,yes\n")
    with pytest.raises(DataError, match=r"flat\.csv is a file, not a CRM export folder .* --data \S+flat\.csv --label"):
        load_crm(tmp_path / "flat.csv")
    with pytest.raises(DataError, match=r"nowhere: no such folder; give a CRM export folder"):
        load_crm(tmp_path / "nowhere")
    # A folder holding a flat export (Leads.csv, not the contract's leads.csv) names what it holds.
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "Leads.csv").write_text("a,converted\n1,yes\n")
    with pytest.raises(DataError, match=r"flat has no leads\.csv, .* holds Leads\.csv; .* --data \S+Leads\.csv"):
        load_crm(tmp_path / "flat")


def test_a_blank_lead_id_is_no_lead_and_its_rows_are_quarantined(tmp_path):
    leads = {"lead_id": ["A", "", " ", "B", "\u200b"], "created_at": ["2025-01-01"] * 5}
    activities = {"lead_id": ["A", "", "B"], "occurred_at": ["2025-01-05"] * 3, "activity_type": ["web_visit"] * 3}
    outcomes = {"lead_id": ["A", "", "B"], "status": ["converted", "lost", "open"], "closed_at": ["2025-02-01", "", ""]}
    crm = load_crm(_write(tmp_path, leads, activities, outcomes))
    q = crm.quarantine.frame()
    missing = q[q["reason"] == "missing lead_id"]
    assert sorted(zip(missing["table"], missing["row"], strict=True)) == [
        ("activities", 2), ("leads", 2), ("leads", 3), ("leads", 5), ("outcomes", 2)
    ]  # fmt: skip
    assert sorted(crm.leads["lead_id"]) == ["A", "B"] and len(crm.activities) == 2


def test_an_export_separated_by_semicolons_is_read_and_noted(tmp_path):
    _write(tmp_path, {"lead_id": ["A", "B"], "created_at": ["2025-01-01", "2025-01-02"]},
           {"lead_id": ["A"], "occurred_at": ["2025-01-05"], "activity_type": ["web_visit"]},
           {"lead_id": ["A", "B"], "status": ["converted", "open"], "closed_at": ["2025-02-01", ""]})  # fmt: skip
    for name in ("leads.csv", "outcomes.csv"):
        path = tmp_path / name
        path.write_text(path.read_text().replace(",", ";"))
    crm = load_crm(tmp_path)
    assert sorted(crm.leads["lead_id"]) == ["A", "B"] and len(crm.activities) == 1
    assert "leads.csv: fields separated by ';'" in crm.quarantine.notes


def test_no_usable_lead_is_refused_with_the_reasons_counted_and_the_quarantine_kept(tmp_path):
    leads = {"lead_id": ["A", "B", "C"], "created_at": ["soon", "later", "never"]}
    _write(tmp_path, leads, {"lead_id": [], "occurred_at": [], "activity_type": []},
           {"lead_id": ["A"], "status": ["open"], "closed_at": [""]})  # fmt: skip
    with pytest.raises(DataError, match=r"none of the 3 lead rows can be used: leads: created_at") as refused:
        load_crm(tmp_path)
    assert refused.value.quarantine is not None and len(refused.value.quarantine.frame()) >= 3


def test_a_file_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    import features.ingest as ingest

    def refuse(path, sep):  # as open() does for a file without read permission (root reads anyway)
        raise PermissionError(13, "Permission denied", str(path))

    (tmp_path / "leads.csv").write_text("lead_id,created_at\nA,2025-01-01\n")
    monkeypatch.setattr(ingest, "check_header", refuse)
    with pytest.raises(DataError, match=r"leads\.csv: cannot open \(Permission denied\)"):
        load_crm(tmp_path)


def test_an_export_without_activities_is_read_with_a_note_that_engagement_is_zero(tmp_path):
    _write(tmp_path, {"lead_id": ["A"], "created_at": ["2025-01-01"]},
           {"lead_id": [], "occurred_at": [], "activity_type": []},
           {"lead_id": ["A"], "status": ["open"], "closed_at": [""]})  # fmt: skip
    crm = load_crm(tmp_path)
    said = "no usable activity (0 rows): every lead reads as never engaged"
    assert any(said in note for note in crm.quarantine.notes)


def test_an_activity_row_repeated_exactly_is_one_event(tmp_path):
    """An export run twice into one file would double every engagement count."""
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01", "2025-01-02"]},
        {"lead_id": ["A", "A", "A", "B"], "occurred_at": ["2025-01-05 10:00:00", "2025-01-05 10:00:00",
         "2025-01-05 10:00:01", "2025-01-05 10:00:00"], "activity_type": ["web_visit"] * 4},
        {"lead_id": ["A", "B"], "status": ["converted", "lost"], "closed_at": ["2025-03-10", "2025-03-11"]},
    )  # fmt: skip
    crm = load_crm(tmp_path)
    assert len(crm.activities) == 3
    q = crm.quarantine.frame()
    assert q[["table", "row", "lead_id"]].values.tolist() == [["activities", 2, "A"]]
    assert q["reason"].iloc[0].startswith("duplicate row: same lead, moment, type and value")


def test_an_outcome_id_spelt_another_way_leaves_its_lead_out_not_open(tmp_path):
    """'l2' and '7' for leads 'L2' and '007': taken as leads without an outcome row, known
    converters would be learnt as open leads that never converted."""
    ids = ["L1", "L2", "007", "L4"]
    _write(
        tmp_path,
        {"lead_id": ids, "created_at": ["2025-01-01"] * 4},
        {"lead_id": ids, "occurred_at": ["2025-01-05"] * 4, "activity_type": ["web_visit"] * 4},
        {"lead_id": ["L1", "l2", "7", "nobody"], "status": ["lost", "converted", "converted", "lost"],
         "closed_at": ["2025-03-10"] * 4},
    )  # fmt: skip
    crm = load_crm(tmp_path)
    assert crm.outcomes.set_index("lead_id")["status"].to_dict() == {"L1": "lost", "L4": "open"}
    q = crm.quarantine.frame()
    reasons = dict(zip(zip(q["table"], q["lead_id"], strict=True), q["reason"], strict=True))
    spelt = "lead_id differs from one in leads.csv only by case, spaces or leading zeros: "
    assert reasons[("outcomes", "l2")] == spelt + "L2" and reasons[("outcomes", "7")] == spelt + "007"
    assert reasons[("outcomes", "nobody")].startswith("unknown lead_id")
    assert reasons[("leads", "L2")].startswith("outcome unknown") and reasons[("leads", "007")].startswith("outcome")


def test_a_lead_created_on_a_no_date_placeholder_is_set_aside_in_training(tmp_path):
    """Open at every snapshot since 1970, 1% of such leads outnumbered the real examples."""
    _write(
        tmp_path,
        {"lead_id": ["A", "B", "C"], "created_at": ["2025-01-01", "1970-01-01 00:00:00", "1970-01-01 09:30"]},
        {"lead_id": ["A"], "occurred_at": ["2025-01-05"], "activity_type": ["web_visit"]},
        {"lead_id": ["A", "B", "C"], "status": ["lost", "converted", "lost"], "closed_at": ["2025-03-10"] * 3},
    )  # fmt: skip
    crm = load_crm(tmp_path)
    assert sorted(crm.leads["lead_id"]) == ["A", "C"]  # a real moment on that day is kept
    q = crm.quarantine.frame()
    reasons = q.loc[q["lead_id"] == "B"].set_index("table")["reason"]
    assert reasons["leads"] == "created_at is a placeholder for no date: 1970-01-01 00:00:00"
    assert reasons["outcomes"] == LEAD_SET_ASIDE  # its outcome goes with it, named for its lead (not "unknown")


def test_a_bant_field_the_export_leaves_out_is_unknown_as_a_blank_one(tmp_path):
    """As a request without the field is read: the batch command scored such leads otherwise."""
    _write(
        tmp_path,
        {"lead_id": ["A", "B"], "created_at": ["2025-01-01"] * 2, "budget": ["", "yes"]},
        {"lead_id": ["A"], "occurred_at": ["2025-01-05"], "activity_type": ["web_visit"]},
        {"lead_id": ["A", "B"], "status": ["lost", "open"], "closed_at": ["2025-03-10", ""]},
    )
    leads = load_crm(tmp_path).leads.set_index("lead_id")
    assert leads["budget"].to_dict() == {"A": "unknown", "B": "confirmed"}
    assert (leads[["authority", "need", "timeline"]] == "unknown").all().all()


def test_a_bant_answer_written_as_a_yes_no_flag_is_read_as_one(tmp_path):
    flags = ["Y", "1", "TRUE", "n", "0", "False", "approved"]
    ids = [f"L{i}" for i in range(len(flags))]
    _write(
        tmp_path,
        {"lead_id": ids, "created_at": ["2025-01-01"] * len(ids), "budget": flags},
        {"lead_id": ["L0"], "occurred_at": ["2025-01-05"], "activity_type": ["web_visit"]},
        {"lead_id": ids, "status": ["open"] * len(ids), "closed_at": [""] * len(ids)},
    )
    budget = load_crm(tmp_path).leads.set_index("lead_id")["budget"]
    assert budget[ids].tolist() == ["confirmed"] * 3 + ["not"] * 3 + ["unknown"]


@pytest.mark.parametrize("table", ["leads", "activities", "outcomes"])
def test_a_file_cut_part_way_through_a_row_is_refused(export, table):
    """An export still being written (or copied) ends mid-row; what was left trained a model
    that passed every gate and replaced the champion."""
    path = export / f"{table}.csv"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b"\n") + 4])  # the last row's first 3 bytes
    cut = rf"{table}\.csv ends part way through a line .*, row \d+\): the export looks cut"
    with pytest.raises(DataError, match=cut):
        load_crm(export)
    path.write_bytes(whole.rstrip(b"\n"))  # a whole row without its line break: the same doubt
    with pytest.raises(DataError, match="if the file is complete, end it with a line break"):
        load_crm(export)
    path.write_bytes(whole.rstrip(b"\n") + b"\r\n")
    load_crm(export)


def test_files_that_write_numeric_dates_in_different_orders_are_refused(tmp_path):
    """A day-first outcomes.csv beside a month-first activities.csv: the activities outvoted
    the outcomes, and every closed_at with a day of 12 or less was read the wrong way round."""
    ids = [f"L{i}" for i in range(12)]
    _write(
        tmp_path,
        {"lead_id": ids, "created_at": ["2025-01-02"] * 12},
        {"lead_id": ids, "occurred_at": [f"01/{13 + i}/2025 4:58:22 AM" for i in range(12)],
         "activity_type": ["web_visit"] * 12},
        {"lead_id": ids, "status": ["converted"] * 12, "closed_at": [f"{13 + i}/02/2025" for i in range(12)]},
    )  # fmt: skip
    with pytest.raises(DataError) as refused:
        load_crm(tmp_path)
    said = str(refused.value)
    assert "activities.csv month first (occurred_at 01/13/2025 4:58:22 AM)" in said, said
    assert "outcomes.csv day first (closed_at 13/02/2025)" in said, said
    # One stray date in the other order is set aside as such, not a reason to refuse the export.
    outcomes = pd.read_csv(tmp_path / "outcomes.csv")
    outcomes["closed_at"] = ["02/13/2025"] * 11 + ["14/02/2025"]
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    crm = load_crm(tmp_path)
    reasons = crm.quarantine.frame().set_index("table")["reason"]
    assert reasons["outcomes"].startswith("closed_at is written day first (14/02/2025)"), reasons


def test_a_close_date_without_a_time_on_the_day_the_lead_was_created_is_that_day(tmp_path):
    """Salesforce's CloseDate is a date: a same-day conversion read as midnight was quarantined
    as closed before the lead was created."""
    _write(
        tmp_path,
        {"lead_id": ["A", "B", "C", "D"],
         "created_at": ["2025-03-04 10:31", "2025-03-04 10:31", "2025-03-04T22:00:00-05:00", "2025-03-06 10:00"]},
        {"lead_id": ["A"], "occurred_at": ["2025-03-04 10:40"], "activity_type": ["web_visit"]},
        {"lead_id": ["A", "B", "C", "D"], "status": ["Closed - Converted", "Reopened", "won", "won"],
         "closed_at": ["2025-03-04", "", "2025-03-04", "2025-03-04"]},
    )  # fmt: skip
    crm = load_crm(tmp_path)
    outcome = crm.outcomes.set_index("lead_id")
    assert outcome.loc["A", "closed_at"] == pd.Timestamp("2025-03-04 10:31") and outcome.loc["B", "status"] == "open"
    # Created in the evening of the 4th in New York, the 5th in UTC: still closed that day.
    assert outcome.loc["C", "closed_at"] == pd.Timestamp("2025-03-05 03:00")
    # Two days before its lead existed is before it.
    reasons = crm.quarantine.frame().set_index("lead_id")["reason"]
    assert set(reasons.index) == {"D"} and "closed_at is before the lead's created_at" in reasons.tolist()


def _crm_of(tmp_path, leads_csv: str, activities_csv: str = "lead_id,occurred_at,activity_type\n"):
    (tmp_path / "leads.csv").write_text(leads_csv)
    (tmp_path / "activities.csv").write_text(activities_csv)
    (tmp_path / "outcomes.csv").write_text("lead_id,status,closed_at\nA,converted,2025-09-01\nB,lost,2025-09-02\n")
    return tmp_path


def test_an_export_as_european_excel_saves_it_reads_as_written(tmp_path):
    """250.000 revenue was read as 250 beside 1.200,50; the same moment written two ways in two
    rows of a lead was a conflict; a row of empty fields was "missing lead_id"."""
    leads = (
        "lead_id;created_at;employees;annual_revenue\n"
        'A;22/07/2025 13:35;1.104;250.000\nA;"Jul 22, 2025 01:35 PM";1.104;250.000\n'
        "B;23/07/2025 09:00;250;1.200,50\nC;24/07/2025 09:00;12;2,5M\n;;;\n"
    )
    crm = load_crm(_crm_of(tmp_path, leads))
    assert {name: f.dots_group for name, f in crm.number_formats.items()} == {"employees": True, "annual_revenue": True}
    by_id = crm.leads.set_index("lead_id")
    assert by_id.loc["A", "employees"] == 1104 and by_id.loc["A", "annual_revenue"] == 250_000
    assert by_id.loc["B", "annual_revenue"] == 1200.5 and by_id.loc["C", "annual_revenue"] == 2_500_000
    reasons = crm.quarantine.frame().set_index("row")["reason"]
    assert reasons[2].startswith("duplicate row") and reasons[5] == "blank row (every field empty)"
    assert any("dots grouping thousands" in note and "'250.000'" in note for note in crm.quarantine.notes)


def test_a_batch_reads_numbers_as_its_models_training_export_wrote_them(tmp_path):
    """Decided anew per file, chunk or request, "250.000" was 250,000 in training and 250 in a
    batch without a decimal comma in it; a number sent as a number keeps its value."""
    from types import SimpleNamespace

    from serving.scoring import clean_lead_rows

    def model(formats):
        spec = SimpleNamespace(settings={"missing_tokens": [""], **formats})
        return SimpleNamespace(scorer=SimpleNamespace(spec=spec))

    euro = {"number_formats": {"annual_revenue": {"dots_group": True, "comma_decimal": True}}}
    batch = pd.DataFrame(
        {"lead_id": ["A", "B", "C"], "created_at": ["2025-07-22"] * 3, "annual_revenue": ["250.000", 1.532, "1,333"]}
    )
    read = clean_lead_rows(model(euro), batch, Quarantine(), None)[1]
    assert read["annual_revenue"].tolist() == [250_000.0, 1.532, 1.333]  # 1.532 was sent as a number
    older = clean_lead_rows(model({}), batch, Quarantine(), None)[1]  # a model from before the setting
    assert older["annual_revenue"].tolist() == [250.0, 1.532, 1333.0]


def test_two_headers_for_one_contract_column_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"columns 'industry' and 'Industry' both read as the contract's industry"):
        load_crm(_crm_of(tmp_path, "lead_id,created_at,industry,Industry\nA,2025-01-01,x,y\nB,2025-01-02,x,y\n"))


def test_dates_a_spreadsheet_saved_as_day_numbers_are_named_so(tmp_path):
    said = r"created_at is a spreadsheet's day number, not a date \(format .*\) \(2 rows, such as '45597\.\d+', '45598'"
    with pytest.raises(DataError, match=said):
        load_crm(_crm_of(tmp_path, "lead_id,created_at\nA,45597.473831\nB,45598\n"))


def test_activity_dates_without_a_time_say_why_repeats_were_counted_once(tmp_path):
    acts = (
        "lead_id,occurred_at,activity_type\nA,2025-01-05,email_open\nA,2025-01-05,email_open\nB,2025-01-06,web_visit\n"
    )
    crm = load_crm(_crm_of(tmp_path, "lead_id,created_at\nA,2025-01-01\nB,2025-01-02\n", acts))
    assert len(crm.activities) == 2
    assert any("dates without a time of day, so the 1 repeats above" in note for note in crm.quarantine.notes)


def test_a_compressed_or_single_byte_file_is_named_for_what_it_is(tmp_path):
    import gzip

    (tmp_path / "leads.csv").write_bytes(gzip.compress(b"lead_id,created_at\nA,2025-01-01\n"))
    with pytest.raises(DataError, match=r"leads\.csv: gzip-compressed, not a CSV file: decompress it \(gunzip\)"):
        load_crm(tmp_path)
    cp1252 = "lead_id,created_at,company\nA,2025-01-01,Société Générale \u2013 München\nB,2025-01-02,Acme\n"
    (tmp_path / "leads.csv").write_bytes(cp1252.encode("cp1252"))
    quarantine = Quarantine()
    frame = read_csv_table(tmp_path / "leads.csv", ["lead_id"], table="leads", quarantine=quarantine)
    assert frame.loc[0, "company"] == "Société Générale \u2013 München"
    assert quarantine.notes[0] == "leads.csv: not UTF-8, read as Windows-1252"  # not "mixed encodings"
    # Binary data whose first line holds no NUL byte was read as text: "cut short", "classic Mac
    # OS line ends" or "a separator inside a value", whatever its bytes looked like.
    rng = random.Random(3)
    noise = bytes(rng.randrange(1, 256) for _ in range(5000))
    (tmp_path / "leads.csv").write_bytes(b"lead_id,created_at\n" + noise)
    with pytest.raises(DataError, match=r"leads\.csv: not a text CSV file: its first 4,096 bytes hold \d+ control"):
        load_crm(tmp_path)


def test_revenues_in_more_than_one_currency_are_said_not_mixed_silently(tmp_path):
    """Amounts "USD 5,000,000" and "EUR 5,000,000" both read as 5,000,000: the flat path said so, a CRM
    export did not."""
    leads = {
        "lead_id": ["A", "B", "C", "D", "E"],
        "created_at": ["2025-01-01"] * 5,
        "annual_revenue": ["USD 5,000,000", "$1,200,000", "EUR 3,000,000", "800000", "2.5 eur"],
    }
    activities = {"lead_id": ["A"], "occurred_at": ["2025-01-02"], "activity_type": ["web_visit"]}
    outcomes = {"lead_id": ["A"], "status": ["lost"], "closed_at": ["2025-02-01"]}
    crm = load_crm(_write(tmp_path, leads, activities, outcomes))
    assert crm.leads.set_index("lead_id")["annual_revenue"].tolist() == [5e6, 1.2e6, 3e6, 8e5, 2.5]
    said = [note for note in crm.quarantine.notes if "another currency" in note]
    assert said == [
        "leads.annual_revenue: 2 amount(s) in another currency than the commonest (USD) read as the same unit; "
        "convert them to one currency for amounts that compare ('2.5 eur', 'EUR 3,000,000')"
    ], crm.quarantine.notes
    # One currency, or none named, says nothing.
    one = _write(tmp_path, {**leads, "annual_revenue": ["USD 5", "$7", "9", "", "USD 1"]}, activities, outcomes)
    assert not [note for note in load_crm(one).quarantine.notes if "currency" in note]
