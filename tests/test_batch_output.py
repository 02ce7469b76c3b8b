"""Exported CSVs cannot run formulas in a spreadsheet."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features.flat import DUPLICATE_ROW
from features.ingest import DataError
from serving.batch import _flat_rows, read_leads, whole_folder, write_table
from serving.scoring import NOT_READ


def test_formula_cells_are_neutralised_in_csv_but_kept_in_parquet(tmp_path):
    frame = pd.DataFrame(
        {
            "lead_id": ["=cmd|' /C calc'!A0", "L1", "+1-2", "@SUM(A1)", "-3"],
            "score": [1.5, -2.0, 3.0, 4.0, 5.0],
            "reasons": ["[]", "[]", "[]", "[]", "[]"],
        }
    )
    write_table(frame, tmp_path / "out.csv")
    back = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert back["lead_id"].tolist() == ["'=cmd|' /C calc'!A0", "L1", "'+1-2", "'@SUM(A1)", "'-3"]
    assert back["score"].tolist() == ["1.5", "-2.0", "3.0", "4.0", "5.0"]  # numbers stay numbers
    write_table(frame, tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["lead_id"].iloc[0] == "=cmd|' /C calc'!A0"


def test_duplicates_far_apart_are_caught_and_order_is_kept(champion, small_crm_dir, monkeypatch):
    import serving.batch as batch

    leads, acts, _ = batch.read_leads(small_crm_dir, None)
    leads = pd.concat([leads, leads.iloc[[3]]], ignore_index=True)  # the copy sits chunks away
    monkeypatch.setattr(batch, "CHUNK_LEADS", 100)
    result = batch.score_batch(champion, leads, acts, pd.Timestamp("2025-12-20"))
    copied = leads["lead_id"].iloc[3]
    assert (result.scored["lead_id"] == copied).sum() == 1
    duplicate = result.quarantine[result.quarantine["lead_id"] == copied]
    assert duplicate["reason"].str.startswith("duplicate row").any()
    assert int(duplicate["row"].iloc[0]) == len(leads)  # 1-based row of the copy in the file
    kept = leads["lead_id"][~leads["lead_id"].duplicated()]
    assert result.scored["lead_id"].tolist() == [i for i in kept if i in set(result.scored["lead_id"])]


def test_activity_ids_with_spaces_around_them_reach_their_leads(champion, small_crm_dir):
    """Training strips ids in every table; scoring looked activities up by the stripped id but
    grouped them by the raw one, so every lead read as never engaged, without a word."""
    from serving.batch import score_batch

    leads, acts, _ = read_leads(small_crm_dir, None)
    as_of = pd.Timestamp("2025-12-20")
    padded = acts.assign(lead_id=" " + acts["lead_id"].astype(str) + "\u00a0 ")  # a no-break space too
    want = score_batch(champion, leads, acts, as_of).scored
    got = score_batch(champion, leads, padded, as_of).scored
    assert (want["engagement"] > 0).any()
    pd.testing.assert_frame_equal(got, want)


def test_leads_given_no_activity_before_the_scoring_moment_are_warned_about(champion, small_crm_dir):
    from features.clean import parse_timestamps
    from serving.batch import NO_ACTIVITY_NOTE, UNDATED_NOTE, no_activity_note, score_batch

    leads, acts, _ = read_leads(small_crm_dir, None)  # the open leads, all leads' activities
    when = parse_timestamps(acts["occurred_at"])[0]
    cut = when[acts["lead_id"].isin(leads["lead_id"])].quantile(0.5).normalize()
    late = acts[when >= cut]  # an extract of the newer activities only
    first = parse_timestamps(late["occurred_at"][late["lead_id"].isin(leads["lead_id"])])[0].min()
    as_of = cut - pd.Timedelta(days=1)
    early = no_activity_note(champion.scorer, leads, late, as_of)
    assert early.startswith(f"no activity of these leads before {as_of:%Y-%m-%d}")
    assert f"their first is from {first:%Y-%m-%d}" in early and "--as-of" in early
    # The leads it speaks of are scored: those created before the moment.
    assert len(score_batch(champion, leads, late, as_of).scored) > 0
    assert no_activity_note(champion.scorer, leads, acts, as_of) is None  # the whole history
    assert no_activity_note(champion.scorer, leads, late) is None  # as of now: the stale note's case
    # Before every lead's creation nobody is scored (each is quarantined with its reason): no note.
    assert no_activity_note(champion.scorer, leads, late, pd.Timestamp("2020-01-01")) is None
    # Only other leads' activities: that warning, whatever the moment.
    others = acts.assign(lead_id="X" + acts["lead_id"])
    assert no_activity_note(champion.scorer, leads, others, as_of) == NO_ACTIVITY_NOTE
    assert no_activity_note(champion.scorer, leads, acts.iloc[:0]) == NO_ACTIVITY_NOTE
    # None with a date that can be read: every lead is just as unengaged, and the output says so.
    undated = acts.assign(occurred_at="not recorded")
    assert no_activity_note(champion.scorer, leads, undated) == UNDATED_NOTE
    assert no_activity_note(champion.scorer, leads, undated, as_of) == UNDATED_NOTE


def test_an_export_folder_scores_only_its_open_leads_whatever_the_status_spelling(tmp_path):
    from serving.batch import read_leads

    pd.DataFrame({"lead_id": ["A", "B", "C", "D"], "created_at": ["2025-01-01"] * 4}).to_csv(
        tmp_path / "leads.csv", index=False
    )
    pd.DataFrame(columns=["lead_id", "occurred_at", "activity_type"]).to_csv(tmp_path / "activities.csv", index=False)
    # B is closed as "Won"; C has two rows (one closed); D has no row: A and D are open.
    pd.DataFrame(
        {
            "lead_id": ["A", "B", "C", "C"],
            "status": ["open", "Won", "open", "Closed Lost"],
            "closed_at": ["", "", "", ""],
        }
    ).to_csv(tmp_path / "outcomes.csv", index=False)
    leads, _, closed = read_leads(tmp_path, None)
    assert leads["lead_id"].tolist() == ["A", "D"] and closed == 2
    # A CRM's own spellings are read; rows that are not read leave their leads open, and say so.
    leads_ids = ["A", "B", "C", "D", "E", "F", "G"]
    pd.DataFrame({"lead_id": leads_ids, "created_at": ["2025-01-01"] * 7}).to_csv(tmp_path / "leads.csv", index=False)
    pd.DataFrame(
        {
            "lead_id": ["A", "B", "C", "D", "e", "ZZ"],
            "status": ["Closed - Converted", "closed/won", "Closed - Not Converted", "Pending review", "lost", "won"],
            "closed_at": [""] * 6,
        }
    ).to_csv(tmp_path / "outcomes.csv", index=False)
    notes: list[str] = []
    leads, _, closed = read_leads(tmp_path, None, notes=notes)
    assert leads["lead_id"].tolist() == ["D", "E", "F", "G"] and closed == 3
    assert notes[0] == (
        "outcomes.csv: 1 row(s) with a status not read as converted, lost or open ('Pending review' 1): "
        "their leads are scored as open (a CRM's own statuses can be named in params.yaml data.outcome_statuses)"
    )
    assert notes[1].startswith("outcomes.csv: 2 row(s) name no lead of leads.csv; 1 match a lead but for case")
    assert "(e.g. 'e' for 'E')" in notes[1] and len(notes) == 2
    # Named as the CRM's own, it closes its lead (and a known spelling can be read otherwise).
    own = {"pending  REVIEW": "lost", "closed/won": "open"}
    own_notes: list[str] = []
    leads, _, closed = read_leads(tmp_path, None, notes=own_notes, statuses=own)
    assert leads["lead_id"].tolist() == ["B", "E", "F", "G"] and closed == 3 and len(own_notes) == 1
    # Activities of no lead (d, 0G, X) are counted, not left out unsaid, and those whose ids differ
    # from a lead's only by case or leading zeros are named; a closed lead's (B) are its own.
    pd.DataFrame(
        {"lead_id": ["d", "0G", "B", "X", "D"], "occurred_at": ["2025-02-01"] * 5, "activity_type": ["web_visit"] * 5}
    ).to_csv(tmp_path / "activities.csv", index=False)
    notes = []
    read_leads(tmp_path, None, notes=notes)
    assert notes[2:] == [
        "activities: 3 row(s) name no lead of the leads file and are not read; 2 of them match one but for case, "
        "spaces or leading zeros (e.g. 'd' for 'D'): make the ids agree"
    ]
    # A 0-byte activities file is not "no activities": a copy cut short is named, not read as idle leads.
    (tmp_path / "activities.csv").write_text("")
    with pytest.raises(DataError, match=r"activities\.csv: an empty file, not even a header row"):
        read_leads(tmp_path, None)
    # A required column missing from any of the three files is named, not a KeyError from inside.
    acts = pd.DataFrame({"lead_id": ["A"], "occurred_at": ["2025-02-01"], "activity_type": ["web_visit"]})
    acts.drop(columns="activity_type").to_csv(tmp_path / "activities.csv", index=False)
    with pytest.raises(DataError, match=r"activities\.csv: missing required column\(s\) activity_type; found lead_id"):
        read_leads(tmp_path, None)
    acts.to_csv(tmp_path / "activities.csv", index=False)
    pd.DataFrame({"lead_id": ["A"], "closed_at": [""]}).to_csv(tmp_path / "outcomes.csv", index=False)
    with pytest.raises(DataError, match=r"outcomes\.csv: missing required column\(s\) status"):
        read_leads(tmp_path, None)
    (tmp_path / "outcomes.csv").unlink()
    pd.DataFrame({"lead_id": leads_ids}).to_csv(tmp_path / "leads.csv", index=False)
    with pytest.raises(DataError, match=r"leads\.csv: missing required column\(s\) created_at; found lead_id"):
        read_leads(tmp_path, None)
    with pytest.raises(DataError, match=r"leads\.csv: missing required column\(s\) created_at"):
        read_leads(tmp_path / "leads.csv", tmp_path / "activities.csv")
    with pytest.raises(DataError, match=r"a folder; --activities takes the activities file"):
        read_leads(tmp_path / "leads.csv", tmp_path)


def test_quarantined_rows_are_numbered_as_in_the_export_files(champion, small_crm_dir, tmp_path, monkeypatch):
    """A CRM folder's closed leads are not scored, yet its quarantine names rows of the files."""
    import shutil

    import serving.batch as batch

    for name in ("leads.csv", "activities.csv", "outcomes.csv"):
        shutil.copy(small_crm_dir / name, tmp_path / name)
    leads_file = pd.read_csv(tmp_path / "leads.csv", dtype=str, keep_default_na=False)
    acts_file = pd.read_csv(tmp_path / "activities.csv", dtype=str, keep_default_na=False)
    opened, _, closed = batch.read_leads(tmp_path, None)
    assert closed > 0  # rows before the copy are left out: positions among open leads would be wrong
    copy = leads_file[leads_file["lead_id"] == opened["lead_id"].iloc[-1]]
    files = {"leads": pd.concat([leads_file, copy], ignore_index=True)}
    undated = acts_file[acts_file["lead_id"] == opened["lead_id"].iloc[0]].head(1).assign(occurred_at="31/31/2025")
    files["activities"] = pd.concat([acts_file, undated], ignore_index=True)
    for table, frame in files.items():
        frame.to_csv(tmp_path / f"{table}.csv", index=False)
    leads, acts, _ = batch.read_leads(tmp_path, None)
    monkeypatch.setattr(batch, "CHUNK_LEADS", 50)
    quarantine = batch.score_batch(champion, leads, acts, pd.Timestamp("2025-12-20")).quarantine
    rows = {table: group["row"].astype(int).tolist() for table, group in quarantine.groupby("table")}
    assert len(files["leads"]) in rows["leads"] and len(files["activities"]) in rows["activities"]  # the two added
    for row in quarantine.itertuples():  # each row named is that lead's row in its file (1-based, header excluded)
        assert files[row.table]["lead_id"].iloc[int(row.row) - 1].strip() == row.lead_id, row


def test_score_lists_rows_not_scored_next_to_the_scores_or_says_why_it_cannot(champion_store, small_crm_dir, tmp_path):
    """The list of rows not scored is the run's own: a folder in its way is an error naming it
    (not a traceback), an earlier run's list is removed, and a file of unusable rows says why."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    leads = pd.read_csv(small_crm_dir / "leads.csv", dtype=str, keep_default_na=False).head(5)
    good, unnamed = tmp_path / "good.csv", tmp_path / "unnamed.csv"
    leads.to_csv(good, index=False)
    leads.assign(lead_id="").to_csv(unnamed, index=False)
    env = {**os.environ, "COLUMNS": "300", "MLFLOW_TRACKING_URI": champion_store}
    out = tmp_path / "out"
    out.mkdir()

    def score(source: Path) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).parent / "leadscore"), "score", str(source), "-o", str(out / "s.csv"),
                   "--model-name", "svc-model", "--as-of", "2025-12-20", "--no-snapshot"]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    (out / "s.quarantine.csv").mkdir()
    blocked = score(unnamed)
    assert blocked.returncode == 2 and "Traceback" not in blocked.stdout + blocked.stderr
    assert "but the rows not scored could not be listed in" in blocked.stderr and (out / "s.csv").is_file()
    (out / "s.quarantine.csv").rmdir()
    nothing = score(unnamed)
    assert nothing.returncode == 2
    assert "every one of the 5 leads given was set aside: leads: missing lead_id (5)" in nothing.stderr
    assert len(pd.read_csv(out / "s.quarantine.csv")) == 5
    clean = score(good)
    assert clean.returncode == 0 and "removed" in clean.stdout and not (out / "s.quarantine.csv").exists()


def test_a_flat_models_rows_are_named_as_in_training_not_by_a_data_column_called_lead_id(tmp_path):
    path = tmp_path / "form.csv"
    path.write_text('pid,lead_id,visits\np1,a,1\n"  p2 ",a,2\n,b,3\n')
    leads, _, _ = read_leads(path, None, flat_schema={"id": "pid", "sep": ","})
    assert leads["lead_id"].tolist() == ["p1", "p2", ""]  # as training reads ids: spaces are not part of one
    numbered, _, _ = read_leads(path, None, flat_schema={"id": None, "sep": ","})
    assert numbered["lead_id"].tolist() == ["1", "2", "3"]


@pytest.mark.parametrize("id_column", ["pid", "lead_id"])
def test_a_flat_row_exported_twice_is_scored_once_and_two_leads_alike_are_both_scored(tmp_path, id_column):
    path = tmp_path / "form.csv"
    path.write_text(f'{id_column},visits\np1,1\n" p1",1\np2,1\np3,1\n')
    schema = {"id": id_column, "sep": ",", "columns": {"visits": "numeric"}, "missing_tokens": [""]}
    leads, _, _ = read_leads(path, None, flat_schema=schema)
    model = SimpleNamespace(scorer=SimpleNamespace(spec=SimpleNamespace(settings={"flat": schema}, columns=["visits"])))
    positions, issue = _flat_rows(model, leads.assign(_row=range(len(leads))))
    assert positions.tolist() == [0, 2, 3]  # p2 and p3 answer alike and are two leads
    assert issue[["row", "reason"]].values.tolist() == [[1, DUPLICATE_ROW]]


def test_a_batch_reads_its_numeric_dates_in_one_order_and_its_lead_pages_read_them_so(champion, small_crm_dir):
    """A model trained on ISO dates stores no order of numeric dates. In a day-first file whose
    `created_at` values all fit either order (02/03/2025), each column decided alone: creation
    dates were read month first and activities day first. A lead page, reading one lead's rows
    alone, read its activities month first too when none had a day past 12."""
    from features.clean import parse_timestamps
    from serving.batch import file_date_order, score_batch
    from serving.pages import kept_lead_view, lead_view
    from serving.snapshots import Snapshot

    assert champion.scorer.spec.settings.get("day_first") is None
    leads, acts, _ = read_leads(small_crm_dir, None)
    created = parse_timestamps(leads["created_at"])[0]
    leads = leads[created.dt.day <= 12].reset_index(drop=True)
    acts = acts[acts["lead_id"].isin(leads["lead_id"])].reset_index(drop=True)
    when = parse_timestamps(acts["occurred_at"])[0]
    as_of = pd.Timestamp("2025-12-20")

    def written(fmt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        return (
            leads.assign(created_at=parse_timestamps(leads["created_at"])[0].dt.strftime(fmt)),
            acts.assign(occurred_at=when.dt.strftime(fmt)),
        )

    iso_leads, iso_acts = written("%Y-%m-%d %H:%M")
    day_leads, day_acts = written("%d/%m/%Y %H:%M")
    want = score_batch(champion, iso_leads, iso_acts, as_of)
    got = score_batch(champion, day_leads, day_acts, as_of)
    assert file_date_order(champion, day_leads, day_acts) is True
    assert (want.scored["engagement"] > 0).sum() > 100
    pd.testing.assert_frame_equal(got.scored, want.scored)
    pd.testing.assert_frame_equal(got.quarantine, want.quarantine)  # the export's own blanks and repeats

    # A lead whose activities all fit either order (day and month 12 or less, not equal), on its
    # page with the order its scoring was kept with: the digest's numbers, the same timeline.
    ambiguous = (when.dt.day <= 12) & (when.dt.day != when.dt.month)
    fits = acts.assign(fits=ambiguous).groupby("lead_id")["fits"].agg(["all", "size"])
    lead_id = fits[fits["all"] & (fits["size"] >= 2)].index[0]
    meta = {"as_of": as_of.isoformat(), "model_name": champion.name, "model_version": champion.version,
            "day_first": True}  # fmt: skip
    snapshot = Snapshot(Path("."), got.scored, day_leads, day_acts, meta)
    rows = day_leads[day_leads["lead_id"] == lead_id].reset_index(drop=True)
    theirs = day_acts[day_acts["lead_id"] == lead_id].reset_index(drop=True)
    page = lead_view(champion, rows, theirs, as_of, meta["day_first"])
    iso_page = lead_view(
        champion, iso_leads[iso_leads["lead_id"] == lead_id], iso_acts[iso_acts["lead_id"] == lead_id], as_of
    )
    kept = want.scored.set_index("lead_id").loc[lead_id]
    assert page["score"] == pytest.approx(float(kept["score"])) and page["stage"] == kept["stage"]
    assert page["timeline"] == iso_page["timeline"] and len(page["timeline"]) >= 2
    assert kept_lead_view(snapshot, rows, theirs)["timeline"] == iso_page["timeline"]


def test_values_read_otherwise_than_written_are_noted_once_for_the_whole_file(champion, small_crm_dir, monkeypatch):
    """Training notes numbers it cannot read, odd BANT answers and activity types outside the
    contract; batch scoring read them the same way without a word. Chunks add up to one note.
    A head count below zero, which the service refuses, was read as given."""
    import serving.batch as batch

    leads, acts, _ = read_leads(small_crm_dir, None)
    leads = leads.reset_index(drop=True)
    odd = leads.assign(employees=leads["employees"].astype(object))
    odd.loc[[0, 150, 300, 400], "employees"] = ["200+", "11-50", "200+", "-5"]
    odd.loc[[5, 250], "budget"] = "maybe"
    kinds = acts["activity_type"].astype(str).copy()
    kinds[acts["lead_id"].isin(leads["lead_id"].iloc[[1, 200]])] = "Webinar.Replay"
    monkeypatch.setattr(batch, "CHUNK_LEADS", 100)
    result = batch.score_batch(champion, odd, acts.assign(activity_type=kinds), pd.Timestamp("2025-12-20"))
    plain = batch.score_batch(champion, leads, acts, pd.Timestamp("2025-12-20"))
    said = [n for n in result.notes if n not in plain.notes]
    replays = int((kinds == "Webinar.Replay").sum())
    assert said == [
        f"activities: {replays} row(s) of types outside the contract counted as 'other' ('webinar.replay')",
        "leads.budget: 2 value(s) not in ('confirmed', 'not', 'unknown') read as unknown ('maybe')",
        "leads.employees: 1 value(s) below zero read as missing ('-5')",  # the service refuses one
        "leads.employees: 3 value(s) not a number read as missing ('11-50', '200+')",
    ], result.notes
    assert replays > 2 and len(result.scored) == len(plain.scored)
    blank = batch.score_batch(champion, odd.assign(employees=odd["employees"].replace("-5", "")), acts,
                              pd.Timestamp("2025-12-20")).scored  # fmt: skip
    negative = plain.scored["lead_id"] == leads["lead_id"].iloc[400]
    assert negative.sum() == 1
    assert (result.scored.loc[negative, "fit"].to_numpy() == blank.loc[negative, "fit"].to_numpy()).all()


def test_a_leads_file_without_columns_the_model_learned_from_is_warned_about(champion, small_crm_dir):
    """Scoring a leads.csv cut short read BANT and seniority as unknown for every lead: stages
    moved (SQL 5 to 0) without a word."""
    from serving.batch import absent_columns_note

    leads, _, _ = read_leads(small_crm_dir, None)
    assert absent_columns_note(champion, leads.columns) is None
    note = absent_columns_note(champion, leads.drop(columns=["budget", "seniority"]).columns)
    assert note.startswith(f"the leads file has no column seniority, budget, which {champion.name} v")


def test_a_file_without_lead_ids_is_named_with_its_own_headers(tmp_path):
    """The CRM model reads `Lead Source` as `lead_source`; the error lists what the file says."""
    export = tmp_path / "Leads.csv"
    pd.DataFrame({"Prospect ID": ["p1"], "Lead Source": ["Google"], "Country": ["India"]}).to_csv(export, index=False)
    with pytest.raises(DataError) as refused:
        read_leads(export, None)
    assert str(refused.value).endswith("columns are Prospect ID, Lead Source, Country")


def test_a_folder_where_a_file_belongs_is_named_a_folder(tmp_path):
    """`score` said "file not found" of a folder, and of a folder given as a flat CSV."""
    (tmp_path / "leads.csv").write_text("lead_id,created_at\nA,2025-01-01\n")
    (tmp_path / "activities.csv").mkdir()
    with pytest.raises(DataError, match=r"activities\.csv: a folder, not a file"):
        read_leads(tmp_path, None)
    (tmp_path / "empty.csv").mkdir()
    with pytest.raises(DataError, match=r"empty\.csv: a folder without leads\.csv: give a file of leads, or a CRM"):
        read_leads(tmp_path / "empty.csv", None)


def test_scoring_says_how_it_read_a_file_as_training_does(tmp_path):
    """Training said the separator, the headers read under contract names and the ones left out;
    scoring the same file said none of it."""
    (tmp_path / "leads.csv").write_text("Lead Id;Created At;Extra Col\nA;2025-01-01;x\n")
    notes: list[str] = []
    leads, _, _ = read_leads(tmp_path / "leads.csv", None, notes=notes)
    assert list(leads.columns[:2]) == ["lead_id", "created_at"]
    assert notes == [
        "leads.csv: fields separated by ';'",
        "leads.csv: 'Lead Id' read as lead_id, 'Created At' read as created_at",
        "leads.csv: column(s) not in the data contract, not used: 'Extra Col'",
    ]


def test_a_file_showing_another_decimal_mark_than_the_training_export_is_said():
    """A European copy of a US export is read as the training export was (each lead alike in
    every file and request), and the output says how to avoid misreading it."""
    from serving.batch import number_format_note

    schema = {"columns": {"Seconds": "numeric", "Pages": "numeric"}, "missing_tokens": [""], "number_formats": {}}
    model = SimpleNamespace(kind="flat", scorer=SimpleNamespace(spec=SimpleNamespace(settings={"flat": schema})))
    euro = pd.DataFrame({"Seconds": ["1.532", "674"], "Pages": ["2,5", "1,75"]})
    said = number_format_note(model, euro)
    assert said.startswith("this file writes decimal commas, unlike the model's training export (decimal points)")
    assert number_format_note(model, pd.DataFrame({"Seconds": ["1.532"], "Pages": ["3"]})) is None  # says nothing
    assert "Seconds: 1 distinct value(s), e.g. '1.532' read as 1.532, not 1532" in said and "Pages" not in said
    # A copy whose every value reads the same either way ("2,5" is two and a half) is not misread.
    alike = pd.DataFrame({"Seconds": ["1532", "674"], "Pages": ["2,5", "1,75"]})
    assert number_format_note(model, alike) is None


def test_leads_rank_by_probability_then_id_whatever_their_order_in_the_file():
    """`score --top` and the digest ranked by the one-decimal score with an unstable sort: of
    leads tied at 99.6, the second-best by probability was left out of the top 5."""
    from serving.snapshots import best_first

    rng = np.random.default_rng(0)
    probability = np.round(rng.uniform(0.99, 1.0, 200), 5)
    scores = pd.DataFrame({"lead_id": [f"L{i:03d}" for i in range(200)], "probability": probability})
    scores["score"] = (100 * scores["probability"]).round(1)
    want = scores.sort_values("lead_id").sort_values("probability", ascending=False, kind="stable")["lead_id"].tolist()
    for seed in range(3):
        shuffled = scores.sample(frac=1, random_state=seed)
        assert best_first(shuffled)["lead_id"].tolist() == want
    closed = scores.assign(_closed=scores["lead_id"].eq(want[0]))
    assert best_first(closed, "_closed")["lead_id"].tolist() == [*want[1:], want[0]]


def test_a_flat_files_headers_spelt_otherwise_are_read_as_the_models_columns(tmp_path):
    """Lowercased headers were 'none of the model's columns', and a misspelt one was read as
    missing without a hint, where the service names the column meant."""
    from serving.batch import absent_columns_note, read_leads

    schema = {
        "columns": {"Lead Source": "categorical", "TotalVisits": "numeric", "Page Views": "numeric"},
        "id": "Prospect ID",
        "missing_tokens": [""],
        "sep": ",",
    }
    spec = SimpleNamespace(settings={"flat": schema}, columns=["Lead Source", "TotalVisits", "Page Views"])
    model = SimpleNamespace(kind="flat", version="1", scorer=SimpleNamespace(spec=spec))
    path = tmp_path / "leads.csv"
    path.write_text("prospect id,lead source,Total Visits,Page Veiws,page views\nA,Google,3,2,2\n")
    notes: list[str] = []
    leads, _, _ = read_leads(path, None, flat_schema=schema, notes=notes)
    assert notes == ["leads.csv: 'prospect id' read as 'Prospect ID', 'lead source' read as 'Lead Source', "
                     "'Total Visits' read as 'TotalVisits', 'page views' read as 'Page Views'"]  # fmt: skip
    assert leads["lead_id"].tolist() == ["A"] and leads["TotalVisits"].tolist() == ["3"]
    assert absent_columns_note(model, leads.columns) is None
    # A typo is not guessed at, but named; a name the model has is never replaced by another header.
    path.write_text("Prospect ID,Lead Sorce,TotalVisits,totalvisits\nA,Google,3,4\n")
    leads, _, _ = read_leads(path, None, flat_schema=schema, notes=(notes := []))
    assert notes == [] and leads["TotalVisits"].tolist() == ["3"]
    said = absent_columns_note(model, leads.columns)
    assert said == (
        "2 of the model's columns not in this file, read as missing: Lead Source ('Lead Sorce' in this file?), "
        "Page Views"
    )
    # A header that is already one of the model's columns is not offered as a typo of another.
    schema["columns"]["Page Viewz"] = "numeric"
    path.write_text("Prospect ID,Lead Source,TotalVisits,Page Viewz\nA,Google,3,4\n")
    leads, _, _ = read_leads(path, None, flat_schema=schema, notes=[])
    said = absent_columns_note(model, leads.columns)
    assert said == "1 of the model's columns not in this file, read as missing: Page Views"


def test_an_export_folder_without_usable_outcomes_says_every_lead_is_scored_as_open(tmp_path):
    """Without outcomes every lead reads as open: converted and lost ones were scored and kept
    for the pages without a word."""
    pd.DataFrame({"lead_id": ["A", "B"], "created_at": ["2025-01-01"] * 2}).to_csv(tmp_path / "leads.csv", index=False)
    notes: list[str] = []
    leads, _, closed = read_leads(tmp_path, None, notes=notes)
    assert len(leads) == 2 and closed == 0
    assert any("no outcomes.csv, so every lead of leads.csv is scored as open" in note for note in notes), notes
    (tmp_path / "outcomes.csv").write_text("lead_id,status,closed_at\n")
    notes = []
    read_leads(tmp_path, None, notes=notes)
    assert "outcomes.csv: a header and no rows, so every lead is scored as open" in notes
    (tmp_path / "outcomes.csv").unlink()
    (tmp_path / "outcomes.csv").mkdir()
    with pytest.raises(DataError, match=r"outcomes\.csv: a folder, not a file"):
        read_leads(tmp_path, None)


def test_scores_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """`score -o` wrote into the file in place: a run stopped part way left 282 of 11,031 rows,
    ending on a whole row, which a CRM import would take as the scoring, and the last good
    file was gone."""
    output = tmp_path / "scores.csv"
    good = pd.DataFrame({"lead_id": ["A", "B"], "score": [50.0, 20.0]})
    write_table(good, output)
    before = output.read_bytes()

    def stopped(self, path, **kwargs):  # a run stopped after writing some rows
        Path(path).write_text("lead_id,score\nC,90.0\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_table(pd.DataFrame({"lead_id": ["C", "D"], "score": [90.0, 10.0]}), output)
    assert output.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    monkeypatch.undo()
    write_table(pd.DataFrame({"lead_id": ["C"], "score": [90.0]}), output)
    assert pd.read_csv(output)["lead_id"].tolist() == ["C"] and len(list(tmp_path.iterdir())) == 1
    # A link a CRM job reads stays a link to the new scores, and the file keeps its permissions.
    output.chmod(0o664)
    link = tmp_path / "crm-import.csv"
    link.symlink_to(output)
    write_table(pd.DataFrame({"lead_id": ["D"], "score": [10.0]}), link)
    assert link.is_symlink() and pd.read_csv(output)["lead_id"].tolist() == ["D"]
    assert output.stat().st_mode & 0o777 == 0o664


def test_a_folder_of_parts_is_replaced_whole_or_not_at_all(tmp_path):
    """`score --engine dask -o` wrote its parts into the folder in place: a run stopped part
    way left some new parts and none of the old, which a reader of the folder takes as the
    scoring."""
    scores = tmp_path / "scores"
    with whole_folder(scores) as parts:
        parts.mkdir()
        pd.DataFrame({"lead_id": ["A", "B"]}).to_parquet(parts / "part.0.parquet")
    assert pd.read_parquet(scores)["lead_id"].tolist() == ["A", "B"]
    with pytest.raises(KeyboardInterrupt), whole_folder(scores) as parts:
        parts.mkdir()
        pd.DataFrame({"lead_id": ["C"]}).to_parquet(parts / "part.0.parquet")
        raise KeyboardInterrupt  # stopped before its other parts
    assert pd.read_parquet(scores)["lead_id"].tolist() == ["A", "B"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.lock", "scores"]
    with whole_folder(scores) as parts:
        parts.mkdir()
        pd.DataFrame({"lead_id": ["D"]}).to_parquet(parts / "part.0.parquet")
    assert pd.read_parquet(scores)["lead_id"].tolist() == ["D"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.lock", "scores"]
    # The new folder failing to take its place puts the last good one back (it was left aside).
    real_replace = os.replace

    def refused(source, target):
        if str(source).endswith(".partial"):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(os, "replace", refused)
        with pytest.raises(OSError, match="No space"), whole_folder(scores) as parts:
            parts.mkdir()
    assert pd.read_parquet(scores)["lead_id"].tolist() == ["D"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.lock", "scores"]

    # A signal between the two renames (`score` exits on SIGTERM) puts the old folder back too.
    def stopped_between(source, target):
        real_replace(source, target)
        if str(target).endswith(".old"):
            raise SystemExit(143)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(os, "replace", stopped_between)
        with pytest.raises(SystemExit), whole_folder(scores) as parts:
            parts.mkdir()
    assert pd.read_parquet(scores)["lead_id"].tolist() == ["D"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.lock", "scores"]


def test_what_a_killed_run_left_beside_its_output_is_removed_by_the_next(tmp_path):
    """A run killed outright (SIGKILL) leaves its half file beside the output, which nothing
    read or removed; a process still running keeps its own, as does a file of another name."""
    gone = 2**22 + 1  # above Linux's largest process id: never running
    stale = time.time() - 3600
    left = {
        "killed": tmp_path / f".scores.csv.{gone}.partial",
        "killed_folder": tmp_path / f".scores.{gone}.old",
        "fresh": tmp_path / f".scores.csv.{gone + 1}.partial",
        "running": tmp_path / f".scores.csv.{os.getppid()}.partial",
        "other": tmp_path / f".notes.txt.{gone}.partial",
    }
    for name, path in left.items():
        if name == "killed_folder":
            path.mkdir()
            (path / "part.0.parquet").write_text("x")
        else:
            path.write_text("lead_id\nC\n")
        if name != "fresh":
            os.utime(path, (stale, stale))
    write_table(pd.DataFrame({"lead_id": ["A"]}), tmp_path / "scores.csv")
    assert not left["killed"].exists() and left["fresh"].exists() and left["running"].exists()
    assert left["other"].exists() and left["killed_folder"].exists()  # another name's
    with whole_folder(tmp_path / "scores") as parts:
        parts.mkdir()
    assert not left["killed_folder"].exists() and left["other"].exists()


def test_each_scored_lead_says_how_many_of_its_activities_were_dated_too_late_to_read(champion, small_crm_dir):
    """`/score` answers `activities_not_read` and the lead page says it; the batch output had no such
    column and `score` said nothing, so a lead whose demo was booked ahead read as plain nurture."""
    from serving.batch import OUTPUT_COLUMNS, read_table, score_batch

    as_of = pd.Timestamp("2025-12-20")
    leads, acts = read_table(small_crm_dir / "leads.csv"), read_table(small_crm_dir / "activities.csv")
    lead_id = leads["lead_id"].iloc[0]
    ahead = pd.DataFrame({"lead_id": [lead_id] * 2, "activity_type": ["demo_request", "meeting"],
                          "occurred_at": ["2025-12-21T10:00:00Z", "2025-12-23 09:00"]})  # fmt: skip
    later = pd.to_datetime(acts["occurred_at"], errors="coerce", format="mixed", utc=True) >= as_of.tz_localize("UTC")
    result = score_batch(champion, leads, pd.concat([acts, ahead], ignore_index=True), as_of)
    assert "activities_not_read" in OUTPUT_COLUMNS
    by_lead = result.scored.set_index("lead_id")["activities_not_read"]
    before = acts[later & (acts["lead_id"] == lead_id)]
    assert by_lead[lead_id] == 2 + len(before)
    assert by_lead.dtype.kind == "i" and (by_lead > 0).sum() > 1  # the export's own meetings booked ahead too
    said = [n for n in result.notes if NOT_READ in n]
    assert len(said) == 1 and said[0].startswith(f"activities.occurred_at: {by_lead.sum():,} {NOT_READ}")
    assert repr(lead_id) in said[0] or len(said[0].split("', '")) == 5  # a few of the leads named


def test_a_snapshot_that_cannot_be_written_leaves_no_half_behind(tmp_path, monkeypatch):
    """A full disk while keeping a scoring for the pages left a hidden half folder at every try."""
    import errno

    from serving.snapshots import write_snapshot

    def disk_full(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    scored = pd.DataFrame({"lead_id": ["A"], "score": [50.0]})
    with pytest.raises(OSError, match="No space left"):
        write_snapshot(scored, pd.DataFrame({"lead_id": ["A"]}), pd.DataFrame(), {"model_name": "m"}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_header_again_and_a_report_exports_totals_row_are_no_leads(tmp_path):
    """Two exports run together and a Salesforce report's "Grand Totals" row were scored as leads
    (one named `Prospect ID`), and got lead pages."""
    path = tmp_path / "export.csv"
    path.write_text('Prospect ID,visits,source\np1,1,web\nProspect ID,visits,source\np2,3,ads\n'
                    '"Grand Totals (2 records)",4,\nTotal Wine,2,web\n')  # fmt: skip
    schema = {"id": "Prospect ID", "sep": ",", "columns": {"visits": "numeric", "source": "categorical"},
              "missing_tokens": [""]}  # fmt: skip
    leads, _, _ = read_leads(path, None, flat_schema=schema)
    model = SimpleNamespace(scorer=SimpleNamespace(spec=SimpleNamespace(settings={"flat": schema},
                                                                        columns=["visits", "source"])))  # fmt: skip
    positions, issue = _flat_rows(model, leads.assign(_row=range(len(leads))))
    assert leads["lead_id"].iloc[positions].tolist() == ["p1", "p2", "Total Wine"]  # a company's name is one
    assert issue["reason"].tolist() == ["the header again (two exports run together?), not a lead",
                                        "a totals row of a report export, not a lead"]  # fmt: skip
    # Rows numbered (no id column): the totals row is told by its first cell; an account named
    # "TOTAL (UK) Ltd" and a sparse lead whose checkbox columns hold their labels are leads.
    path.write_text('name,visits,source\nAnn,1,web\nTOTAL (UK) Ltd,2,\nsource,visits,\n"Grand Totals (2 records)",3,\n')
    schema = {**schema, "id": None}
    leads, _, _ = read_leads(path, None, flat_schema=schema)
    model.scorer.spec.settings["flat"] = schema
    positions, issue = _flat_rows(model, leads.assign(_row=range(len(leads))))
    assert positions.tolist() == [0, 1, 2]
    assert issue["reason"].tolist() == ["a totals row of a report export, not a lead"]


def _write_folder_times(folder: str, times: int) -> int:
    for i in range(times):
        with whole_folder(Path(folder)) as parts:
            parts.mkdir()
            (parts / "part.0.txt").write_text(f"{os.getpid()} {i}")
    return times


def test_two_runs_writing_one_folder_take_turns(tmp_path):
    """Two `score --engine dask -o` runs into one folder failed with "Directory not empty" in 46
    and 175 of 200 tries, leaving the old scoring aside in a hidden folder."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        done = list(pool.map(_write_folder_times, [str(tmp_path / "scores")] * 2, [40, 40]))
    assert done == [40, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.lock", "scores"]
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["part.0.txt"]


def test_the_separator_tells_the_decimal_mark_only_when_it_is_not_the_training_exports():
    """A model trained before separators told the mark, on a ';' export of whole numbers, stored
    decimal points: its own export scored again was warned about and kept from the pages."""
    from serving.batch import number_format_note

    def model(sep: str) -> SimpleNamespace:
        schema = {"sep": sep, "columns": {"Seconds": "numeric"}, "missing_tokens": [""],
                  "number_formats": {"Seconds": {"dots_group": False, "comma_decimal": False}}}  # fmt: skip
        return SimpleNamespace(kind="flat", scorer=SimpleNamespace(spec=SimpleNamespace(settings={"flat": schema})))

    rows = pd.DataFrame({"Seconds": ["1.532", "674", "12.345"]})
    assert number_format_note(model(";"), rows, ";") is None  # its own export, read as it was
    said = number_format_note(model(","), rows, ";")  # a European copy of a US export
    assert said and "'1.532' read as 1.532, not 1532" in said
    assert number_format_note(model(","), rows, ",") is None
