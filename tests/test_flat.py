import re

import numpy as np
import pandas as pd
import pytest

from features.flat import DUPLICATE_ROW, FlatProfile, clean_flat_columns, field_problems, load_flat
from features.ingest import DataError
from features.leakage import audit_leakage

LEAKY_LEADS_COLUMNS = ["Tags", "Lead Quality", "Lead Profile", "Asymmetrique Activity Index",
                       "Asymmetrique Profile Index", "Asymmetrique Activity Score",
                       "Asymmetrique Profile Score", "Last Notable Activity"]  # fmt: skip


@pytest.fixture
def flat_csv(tmp_path):
    """A form-driven export: trailing comma on every line, 'Select' for blank, an id column."""
    rng = np.random.default_rng(0)
    n = 300
    visits = rng.integers(0, 20, n)
    converted = (rng.random(n) < 0.2 + 0.03 * visits).astype(int)
    source = rng.choice(["Google", "google ", "Referral", "Select"], n, p=[0.4, 0.1, 0.3, 0.2])
    lines = ["Prospect ID,Source,Visits,Do Not Email,Joined,Converted,"]
    for i in range(n):
        lines.append(
            f"p{i:04d},{source[i]},{visits[i]},{'Yes' if i % 7 == 0 else 'No'},2025-01-{i % 28 + 1:02d},{converted[i]},"
        )
    path = tmp_path / "export.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_types_roles_and_quirks_are_inferred(flat_csv, params):
    data = load_flat(flat_csv, FlatProfile(label="Converted"), params.flat)
    assert data.schema["columns"] == {
        "Source": "categorical",
        "Visits": "numeric",
        "Do Not Email": "boolean",
    }
    assert set(data.features["Source"].dropna()) == {"Google", "Referral"}
    assert data.features["Source"].isna().sum() > 0  # 'Select' read as blank
    notes = " ".join(data.quarantine.notes)
    assert "Prospect ID not used: an identifier" in notes
    assert "Joined not used: a date" in notes
    assert "(no header) not used: empty" in notes
    assert data.label.isin([0, 1]).all() and len(data.label) == 300


def test_rows_repeated_in_every_column_without_an_id_are_said(flat_csv, params, tmp_path):
    """A file run in twice trained with each row on both sides of the split, its test AUC 0.03
    higher, without a word: without --id, copies cannot be told from leads alike, so it is said."""
    lines = flat_csv.read_text().splitlines()
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("\n".join(lines + lines[1:41]) + "\n")
    notes = " ".join(load_flat(doubled, FlatProfile(label="Converted"), params.flat).quarantine.notes)
    assert "40 row(s) repeat an earlier row in every column" in notes and "give --id" in notes
    assert "repeat an earlier row" not in " ".join(load_flat(flat_csv, FlatProfile(label="Converted"), params.flat)
                                                   .quarantine.notes)  # fmt: skip


def test_label_problems_are_clear_errors(flat_csv, params):
    with pytest.raises(DataError, match=r"no column.*'Outcome'"):
        load_flat(flat_csv, FlatProfile(label="Outcome"), params.flat)
    with pytest.raises(DataError, match="positive value 'won' not found"):
        load_flat(flat_csv, FlatProfile(label="Converted", positive="won"), params.flat)
    with pytest.raises(DataError, match=r"export\.csv: label column 'Visits' has 20 class"):
        load_flat(flat_csv, FlatProfile(label="Visits"), params.flat)
    with pytest.raises(DataError, match=r"no column\(s\) 'Zip' \(given as types\)"):
        load_flat(flat_csv, FlatProfile(label="Converted", types={"Zip": "categorical"}), params.flat)
    header_only = flat_csv.with_name("header.csv")
    header_only.write_text("Source,Converted\n")
    with pytest.raises(DataError, match=r"header\.csv: a header and no data rows"):
        load_flat(header_only, FlatProfile(label="Converted"), params.flat)
    semicolons = flat_csv.with_name("semicolons.csv")
    semicolons.write_text("a;b;y\n1;2;0\n1,5;2;1\n")
    with pytest.raises(DataError, match=r"separated by ';' or a tab, say so \(--sep ';' or --sep tab\)"):
        load_flat(semicolons, FlatProfile(label="y"), params.flat)


def test_rows_without_label_or_with_a_repeated_id_are_quarantined(tmp_path, params):
    path = tmp_path / "x.csv"
    path.write_text("id,a,y\n1,x,yes\n2,y,\n3,x,no\n3,y,no\n4,x,yes\n4,x,yes\n")
    data = load_flat(path, FlatProfile(label="y", id="id"), params.flat)
    q = data.quarantine.frame()
    assert q.set_index("row")["reason"].to_dict() == {
        2: "label 'y' missing", 3: "id 'id' appears more than once", 4: "id 'id' appears more than once",
        6: "duplicate row: same id and values as an earlier row, counted once",  # exported twice: one lead
    }  # fmt: skip
    assert data.ids.tolist() == ["1", "4"]


def test_a_stage_column_with_open_deals_trains_on_the_closed_ones(tmp_path, params):
    """A pipeline export's stage column holds open stages too: --negative names the lost value,
    and rows of the other values (no outcome yet) are set aside by name and value."""
    path = tmp_path / "deals.csv"
    path.write_text("id,a,stage\n1,x,Won\n2,y,Engaging\n3,x,lost\n4,y,Prospecting\n5,x,\n6,y,won\n")
    with pytest.raises(DataError, match=r"has 4 classes .*; a binary label is needed, or --negative naming the lost"):
        load_flat(path, FlatProfile(label="stage", id="id", positive="Won"), params.flat)
    data = load_flat(path, FlatProfile(label="stage", id="id", positive="Won", negative="Lost"), params.flat)
    assert data.ids.tolist() == ["1", "3", "6"] and data.label.tolist() == [1.0, 0.0, 1.0]
    assert data.quarantine.frame().set_index("row")["reason"].to_dict() == {
        2: "label 'stage' is 'Engaging', neither 'Won' nor 'Lost': no outcome yet",
        4: "label 'stage' is 'Prospecting', neither 'Won' nor 'Lost': no outcome yet",
        5: "label 'stage' missing",
    }
    with pytest.raises(DataError, match="negative value 'Closed Lost' not found"):
        load_flat(path, FlatProfile(label="stage", positive="Won", negative="Closed Lost"), params.flat)
    for settings, problem in [({"negative": "Lost"}, "the converted one must be too"),
                              ({"positive": "won", "negative": "Won"}, "'Won' is a positive value too"),
                              ({"positive": ["Won", "1"], "negative": "1.0"}, "'1.0' is a positive value too"),
                              ({"positive": []}, r"positive\n.*expected at least one value")]:  # fmt: skip
        with pytest.raises(ValueError, match=problem):
            FlatProfile(label="stage", **settings)


def test_a_crm_writing_two_spellings_of_won_trains_on_both(tmp_path, params):
    """A stage column holding "Won" and "Closed Won" (an export merged from two pipelines): each
    spelling is given, and a lead of either is converted; one alone leaves the other unsaid."""
    path = tmp_path / "deals.csv"
    path.write_text("id,a,stage\n1,x,Won\n2,y,Closed Won\n3,x,Lost\n4,y,Open\n5,x,closed lost\n")
    with pytest.raises(DataError, match=r"has 5 classes .*, 4 of them not 'Won'; .* its own --positive"):
        load_flat(path, FlatProfile(label="stage", id="id", positive="Won"), params.flat)
    both = FlatProfile(label="stage", id="id", positive=["Won", "closed won"], negative=["Lost", "Closed Lost"])
    data = load_flat(path, both, params.flat)
    assert data.ids.tolist() == ["1", "2", "3", "5"] and data.label.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert data.quarantine.frame()["reason"].tolist() == [
        "label 'stage' is 'Open', neither 'Won', 'closed won' nor 'Lost', 'Closed Lost': no outcome yet"
    ]
    without_lost = tmp_path / "closed.csv"
    without_lost.write_text("id,a,stage\n1,x,Won\n2,y,Closed Won\n3,x,Lost\n")
    data = load_flat(without_lost, FlatProfile(label="stage", positive=["Won", "Closed Won"]), params.flat)
    assert data.label.tolist() == [1.0, 1.0, 0.0]
    # A typo (or a stage renamed in the CRM) would set that stage's deals aside as open: refused.
    typo = FlatProfile(label="stage", id="id", positive=["Won", "Closd Won"], negative=["Lost", "Closed Lost"])
    with pytest.raises(DataError, match=r"positive value 'Closd Won' not found \(is 'closed won' meant\?\)"):
        load_flat(path, typo, params.flat)
    # A month in which one pipeline closed nothing: the profile still serves, and says so.
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("id,a,stage\n1,x,Won\n2,y,Lost\n3,x,Won\n")
    data = load_flat(quiet, FlatProfile(label="stage", positive=["Won", "Closed Won"]), params.flat)
    assert data.label.tolist() == [1.0, 0.0, 1.0]
    assert "label column 'stage': positive value(s) 'Closed Won' not in this file" in data.quarantine.notes


def test_a_row_exported_twice_is_one_lead_whatever_the_spaces_around_its_id(tmp_path, params):
    path = tmp_path / "x.csv"
    path.write_text("id,a,y\n1,x,yes\n 1,x,yes\n2,x,no\n")
    data = load_flat(path, FlatProfile(label="y", id="id"), params.flat)
    assert data.quarantine.frame()["reason"].tolist() == [DUPLICATE_ROW] and data.ids.tolist() == ["1", "2"]
    # An id column called lead_id is still compared: two leads with the same answers are two leads.
    named = tmp_path / "named.csv"
    named.write_text("lead_id,a,y\nA,x,yes\nB,x,yes\nC,y,no\n")
    data = load_flat(named, FlatProfile(label="y", id="lead_id"), params.flat)
    assert data.quarantine.frame().empty and data.ids.tolist() == ["A", "B", "C"]


def test_serving_rows_are_cleaned_by_the_same_schema(flat_csv, params):
    data = load_flat(flat_csv, FlatProfile(label="Converted"), params.flat)
    rows = pd.DataFrame({"Source": ["GOOGLE", "Select"], "Visits": ["1,000", "x"], "Do Not Email": ["yes", None]})
    cleaned, notes = clean_flat_columns(rows, data.schema)
    assert cleaned["Source"].tolist() == ["GOOGLE", None]  # case is matched to levels in the spec
    assert cleaned["Visits"].tolist()[0] == 1000.0 and np.isnan(cleaned["Visits"][1])
    assert notes == ["Visits: 1 value(s) not numeric read as missing ('x')"]


def test_spreadsheet_formula_errors_are_missing_and_counted(tmp_path, params):
    """A text column's `#DIV/0!` was a category level of its own, learned and shown in reasons;
    a numeric column's was noted as "not numeric". Both are a broken formula: missing, counted."""
    path = tmp_path / "sheet.csv"
    lines = ["id,Segment,Visits,y"]
    for i in range(120):
        segment = "#DIV/0!" if i % 20 == 0 else "#VALUE!" if i == 7 else ("SMB", "Enterprise")[i % 2]
        visits = " #div/0!" if i % 30 == 1 else str(i % 9)
        lines.append(f"r{i},{segment},{visits},{('yes', 'no')[i % 3 == 0]}")
    path.write_text("\n".join(lines) + "\n")
    data = load_flat(path, FlatProfile(label="y", id="id"), params.flat)
    assert data.schema["columns"] == {"Segment": "categorical", "Visits": "numeric"}
    assert sorted(data.features["Segment"].dropna().unique()) == ["Enterprise", "SMB"]
    assert data.features["Segment"].isna().sum() == 7 and data.features["Visits"].isna().sum() == 4
    notes = data.quarantine.notes
    assert "Segment: 7 spreadsheet formula error(s) read as missing ('#DIV/0!', '#VALUE!')" in notes, notes
    assert "Visits: 4 spreadsheet formula error(s) read as missing ('#div/0!')" in notes, notes
    assert not [n for n in notes if "not numeric" in n]
    # A model trained before they were placeholders keeps reading them as it learned.
    older = {**data.schema, "missing_tokens": ["", "#n/a"]}
    cleaned, said = clean_flat_columns(pd.DataFrame({"Segment": ["#DIV/0!"], "Visits": ["#DIV/0!"]}), older)
    assert cleaned["Segment"].tolist() == ["#DIV/0!"] and said == ["Visits: 1 value(s) not numeric read as missing "
                                                                   "('#DIV/0!')"]  # fmt: skip


def test_rows_sent_one_by_one_are_checked_against_the_schema():
    """What the service refuses in `fields` instead of scoring blanks: a column spelt otherwise,
    no column of the model, a value its column cannot read."""
    schema = {"columns": {"Lead Source": "categorical", "TotalVisits": "numeric", "Opted In": "boolean"},
              "missing_tokens": ["", "select"]}  # fmt: skip
    rows = [
        {"Lead Source": "Google", "TotalVisits": 5, "Opted In": "Yes", "Prospect ID": "p1"},  # fine, id ignored
        {"lead source": "Google", "total_visits": 5},
        {"Nonsense": "x"},
        {},
        None,
        {"TotalVisits": True, "Opted In": "maybe", "Lead Source": "Select"},
        {"Lead Source": "Google", "lead_source": "Bing", "TotalVisits": "Select"},  # exact name wins; a blank
    ]
    problems = field_problems(schema, rows)
    assert [(i, key) for i, key, _ in problems] == [
        (1, "lead source"), (1, "total_visits"), (2, None), (3, None), (4, None), (5, "TotalVisits"), (5, "Opted In")
    ]  # fmt: skip
    assert problems[0][2] == "not a column of the model, 'Lead Source' is (names are matched as written)"
    assert "none of the model's columns is here (it reads 'Lead Source', 'TotalVisits', 'Opted In')" in problems[2][2]
    assert problems[5][2] == "true is not a number: the model reads this column as numeric"
    assert problems[6][2] == "'maybe' is not yes or no: the model reads this column as boolean"


def test_a_key_of_no_column_of_the_export_is_named_with_the_column_meant():
    """With the export's header kept, a misspelt name is told apart from a column the model
    leaves out (the id, a leak): the first is a mistake, the second is what a CRM sends."""
    schema = {"columns": {"Lead Source": "categorical", "TotalVisits": "numeric", "Country": "categorical"},
              "missing_tokens": [""],
              "header": ["Prospect ID", "Lead Source", "TotalVisits", "Country", "Tags"]}  # fmt: skip
    rows = [
        {"Lead Source": "Google", "TotalVisits": 3, "Prospect ID": "p1", "Tags": "Will revert"},
        {"Lead Sorce": "Google", "TotalVisits": 3},
        {"Lead Source": "Google", "Colour": "red"},
        {"TotalVisits": "12,5 visits"},
    ]
    problems = field_problems(schema, rows)
    assert problems == [
        (1, "Lead Sorce", "not a column of the model, 'Lead Source' is (names are matched as written)"),
        (2, "Colour", "not a column of the export the model was trained on"),  # not "'Country' is"
        (3, "TotalVisits", "'12,5 visits' is not a number: the model reads this column as numeric"),
    ]


def test_leads_csv_just_works_and_tags_is_flagged(params, shared_file):
    path = shared_file("x_education_leads", "Leads.csv")
    data = load_flat(path, FlatProfile(label="Converted"), params.flat)
    assert len(data.label) == 9240 and data.label.mean() == pytest.approx(0.385, abs=0.001)
    assert "Prospect ID" not in data.features and "Lead Number" not in data.features
    # Without --id, the scored rows are named by number: the note says which flag names them.
    assert any("--id 'Prospect ID' names them by it" in note for note in data.quarantine.notes)
    assert not any(c.startswith("Unnamed") for c in data.features)
    assert data.features["Specialization"].isna().mean() > 0.3  # 'Select' means blank
    audit = audit_leakage(data.features, data.label, params.leakage.max_single_column_auc)
    flagged = audit.loc[audit["flagged"], "column"].tolist()
    assert "Tags" in flagged
    assert set(flagged) <= set(LEAKY_LEADS_COLUMNS)


def test_shoppers_csv_just_works(params, shared_file):
    path = shared_file("online_shoppers_intention", "online_shoppers_intention.csv")
    data = load_flat(path, FlatProfile(label="Revenue"), params.flat)
    assert data.label.mean() == pytest.approx(0.155, abs=0.001)
    assert data.schema["columns"]["Month"] == "categorical"
    assert data.schema["columns"]["Weekend"] == "boolean"


def test_profile_file_with_flags_overriding_it(tmp_path):
    from features.flat import load_profile

    path = tmp_path / "profile.yaml"
    path.write_text("label: Converted\npositive: 'Yes'\ndrop: [Tags]\nsep: ';'\ntypes: {Zip: categorical}\n")
    profile, replaced = load_profile(path, positive="Y", drop=None, sep=",")
    assert profile.label == "Converted" and profile.positive == ["Y"] and profile.drop == ["Tags"]
    assert profile.sep == "," and profile.types == {"Zip": "categorical"} and replaced == ["positive", "sep"]
    path.write_text("label: x\nunknown_key: 1\n")
    with pytest.raises(DataError, match="unknown_key: unknown key \\(the keys are label, positive, negative, id"):
        load_profile(path)
    # YAML reads these as numbers and booleans; they mean the text they were written as.
    path.write_text("label: Revenue\npositive: TRUE\nid: 660737\ndrop: [2019]\ntypes: {2020: numeric}\n")
    profile, _ = load_profile(path)
    assert (profile.positive, profile.id, profile.drop) == (["true"], "660737", ["2019"])
    assert profile.types == {"2020": "numeric"}
    path.write_text("label: Converted\npositive: Yes\ndrop: [No, On]\n")  # YAML 1.1 would read booleans
    profile, _ = load_profile(path)
    assert (profile.positive, profile.drop) == (["Yes"], ["No", "On"])
    path.write_text("label: stage\npositive: [Won, Closed Won]\nnegative: 0\n")  # a list, or one value as text
    profile, _ = load_profile(path)
    assert (profile.positive, profile.negative) == (["Won", "Closed Won"], ["0"])
    path.write_text("label: x\ndrop: [Tags\n")
    with pytest.raises(DataError, match=r"profile\.yaml:3:1: not valid YAML \(expected .* starts on line 2\)"):
        load_profile(path)
    path.write_text("label: Converted\nid: Lead Number\nlabel: Revenue\n")  # the last one was kept without a word
    with pytest.raises(DataError, match=r"profile\.yaml:3:1: not valid YAML \('label' is written twice in one section"):
        load_profile(path)
    path.write_bytes(b"label: \xff\n")
    with pytest.raises(DataError, match=r"profile\.yaml: not UTF-8 text"):
        load_profile(path)
    path.write_text("- label\n- Converted\n")
    with pytest.raises(DataError, match=r"expected keys such as label.*found a list"):
        load_profile(path)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"label": "y", "sep": ""}, "sep: String should have at least 1 character"),
        ({"label": "y", "sep": "||"}, "sep: String should have at most 1 character"),
        ({"label": "y", "drop": ["a", "y"]}, "the label column 'y' cannot also be given as drop"),
        ({"label": "y", "id": "y"}, "the label column 'y' cannot also be given as id"),
        ({"label": "y", "time": "t", "drop": ["t"]}, "the time column 't' cannot also be dropped"),
        ({"label": "y", "id": "t", "time": "t"}, "the id column 't' cannot also be the time column"),
        ({"label": "y", "drop": ["t"], "types": {"t": "numeric"}}, "types: 't' is given as drop too"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(settings, error):
    from features.flat import make_profile

    with pytest.raises(DataError, match=f"invalid settings from the command line: .*{re.escape(error)}"):
        make_profile(settings)
    if "label column" in error:  # a rule across fields names no single field
        with pytest.raises(DataError, match=f"command line: {re.escape(error)}"):
            make_profile(settings)


def test_a_tab_separator_can_be_spelled():
    from features.flat import make_profile

    assert {make_profile({"label": "y", "sep": spelled}).sep for spelled in ("\\t", "tab", "TAB", "\t")} == {"\t"}


def test_a_time_column_gives_a_time_split(flat_csv):
    from features.params import load_params
    from training.pipeline import prepare_flat

    params = load_params(**{"split.test_days": 7, "split.valid_days": 7})
    dataset = prepare_flat(flat_csv, FlatProfile(label="Converted", time="Joined"), params)
    part = dataset.split.assignment
    joined = pd.to_datetime(pd.read_csv(flat_csv)["Joined"])
    assert dataset.split.by_time
    assert joined[part == "train"].max() < joined[part == "valid"].min() <= joined[part == "valid"].max()
    assert joined[part == "valid"].max() < joined[part == "test"].min()
    assert "Joined" not in dataset.features


def test_column_names_lightgbm_refuses_are_renamed_the_same_way_in_training_and_serving(tmp_path, params):
    path = tmp_path / "brackets.csv"
    rows = [f"{i % 9},{i % 4}.5,{'ab'[i % 2]},{int(i % 3 == 0)}" for i in range(60)]
    path.write_text('Visits [raw],"Time: min, total",Source {web},y\n' + "\n".join(rows) + "\n")
    data = load_flat(path, FlatProfile(label="y"), params.flat)
    assert list(data.features.columns) == ["Visits (raw)", "Time; min; total", "Source (web)"]
    assert any("'Visits [raw]' -> 'Visits (raw)'" in note for note in data.quarantine.notes)
    served, _ = clean_flat_columns(pd.DataFrame({"Visits [raw]": ["3"], "Source {web}": ["b"]}), data.schema)
    assert served.loc[0, "Visits (raw)"] == 3.0 and served.loc[0, "Source (web)"] == "b"
    assert served["Time; min; total"].isna().all()
    path.write_text("Score [raw],Score (raw),y\n" + "\n".join(f"{i % 7},{i % 5},{i % 2}" for i in range(60)) + "\n")
    with pytest.raises(DataError, match=r"'Score \[raw\]', 'Score \(raw\)' would share the feature name"):
        load_flat(path, FlatProfile(label="y"), params.flat)


def test_a_type_override_must_read_its_column(flat_csv, params):
    with pytest.raises(DataError, match=r"column 'Source' has no numeric value \(values such as 'Referral', 'Google'"):
        load_flat(flat_csv, FlatProfile(label="Converted", types={"Source": "numeric"}), params.flat)


def test_the_separator_is_kept_with_the_schema(tmp_path, params):
    path = tmp_path / "semi.csv"
    rows = [f"{i};{'A' if i % 3 else 'B'};{i % 7};{'yes' if i % 2 else 'no'}" for i in range(60)]
    path.write_text("id;source;visits;y\n" + "\n".join(rows) + "\n")
    # Given the wrong separator, the file's own is named, not a label missing from one long column.
    for wrong, said in (("\t", "separator tab"), (",", "separator ','")):
        with pytest.raises(DataError, match=f"only one column found with the {said}; its header is separated by ';'"):
            load_flat(path, FlatProfile(label="y", id="id", sep=wrong), params.flat)
    data = load_flat(path, FlatProfile(label="y", id="id", sep=";"), params.flat)
    assert data.schema["sep"] == ";"
    from serving.batch import read_leads

    leads, _, _ = read_leads(path, None, flat_schema=data.schema)
    assert list(leads.columns[:3]) == ["id", "source", "visits"] and leads["lead_id"].iloc[5] == "5"


def test_a_champion_is_compared_on_numbers_read_its_own_way(tmp_path, params):
    """A champion reading "1.532" as 1.532 (trained before a ';' export read as decimal commas, or
    on an export whose values said so) was gated on this run's 1532, not as it scores in service."""
    from features.flat import read_as_model
    from training.pipeline import prepare_flat

    path = tmp_path / "semi.csv"
    rows = [f"{i};{'A' if i % 3 else 'B'};{1 + i % 7}.{i:03d};{'yes' if i % 2 else 'no'}" for i in range(200)]
    path.write_text("id;source;seconds;y\n" + "\n".join(rows) + "\n")
    dataset = prepare_flat(path, FlatProfile(label="y", id="id", sep=";"), params)
    ours = dataset.settings["flat"]
    assert ours["number_formats"]["seconds"]["dots_group"]  # a ';' export: "3.003" is 3003
    test = (dataset.split.assignment == "test").to_numpy()
    assert dataset.features_for(ours, [], test) is None  # read alike: nothing to rebuild
    theirs = {**ours, "number_formats": {"seconds": {"dots_group": False, "comma_decimal": False}}}
    rebuilt = dataset.features_for(theirs, [], test)
    written = pd.Series(rows)[test].str.split(";").str[2].astype(float).to_numpy()
    assert rebuilt["seconds"].tolist() == pytest.approx(written.tolist())
    assert rebuilt["source"].tolist() == dataset.features.loc[test, "source"].tolist()
    before = {key: value for key, value in theirs.items() if key != "number_formats"}  # reads each batch's way
    assert dataset.features_for(before, [], test)["seconds"].tolist() == pytest.approx(written.tolist())
    with pytest.raises(ValueError, match="test rows only"):
        dataset.features_for(theirs, [], ~test)
    # A column the champion reads as text, or does not read, is left as this run reads it.
    assert read_as_model(dataset.features, pd.DataFrame({"seconds": ["1.5"]}), ours,
                         {**theirs, "columns": {"seconds": "categorical"}}) is None  # fmt: skip


def test_a_time_column_splits_on_past_dates_only(tmp_path, params):
    path = tmp_path / "timed.csv"
    rows = [
        f"{i},{'A' if i % 3 else 'B'},{i % 7},2025-01-{i % 28 + 1:02d},{'yes' if i % 2 else 'no'}" for i in range(60)
    ]
    rows[0], rows[1] = "0,A,1,2099-01-01,yes", "1,A,1,soon,no"  # a mistyped year; not a date
    path.write_text("id,source,visits,created,y\n" + "\n".join(rows) + "\n")
    data = load_flat(path, FlatProfile(label="y", id="id", time="created"), params.flat)
    assert data.quarantine.frame().set_index("row")["reason"].to_dict() == {
        1: "time column 'created' after today: 2099-01-01",
        2: "time column 'created' missing or not a date: soon",
    }
    assert len(data.features) == len(data.times) == 58
    with pytest.raises(DataError, match=r"time column 'source': only 0% of its values read as dates \(values such as"):
        load_flat(path, FlatProfile(label="y", id="id", time="source"), params.flat)


def test_ids_labels_and_numbers_read_as_a_person_means_them(tmp_path, params):
    """A blank id is a missing id; a data column called lead_id does not name rows; 'YES' and
    'yes' are one label; 'inf' is no number; a column named `_row` is refused by name."""
    path = tmp_path / "form.csv"
    lines = ["pid,lead_id,visits,pages,y"]
    labels = ["yes", "YES", "no", "No"]
    for i in range(120):
        lines.append(f"p{i},x,{'inf' if i == 3 else i % 9},{'many' if i % 10 == 0 else i % 7},{labels[i % 4]}")
    lines += [",x,1,2,yes", " ,x,2,3,no"]
    path.write_text("\n".join(lines) + "\n")
    data = load_flat(path, FlatProfile(label="y", id="pid"), params.flat)
    assert data.quarantine.frame()[["row", "reason"]].values.tolist() == [[121, "id 'pid' missing"],
                                                                          [122, "id 'pid' missing"]]  # fmt: skip
    assert data.label.mean() == 0.5 and data.ids.iloc[0] == "p0"
    assert any("column lead_id not used: rows are named by the id column 'pid'" in n for n in data.quarantine.notes)
    assert "lead_id" not in data.features and np.isnan(data.features["visits"].iloc[3])
    assert any(n.startswith("visits: 1 value(s) not numeric read as missing (") for n in data.quarantine.notes)
    # A column of mostly numbers read as categories is said, with the values that made it so.
    assert any(n.startswith("column pages read as categorical: 90% of its values are numbers, the others not "
                            "(such as 'many')") for n in data.quarantine.notes)  # fmt: skip
    path.write_text("_row,visits,y\n1,2,yes\n")
    with pytest.raises(DataError, match=r"form\.csv: a column is named '_row'.*rename it"):
        load_flat(path, FlatProfile(label="y"), params.flat)


def test_a_row_of_thousands_of_made_up_keys_is_refused_after_matching_a_few():
    """Each key is matched against every column: 70,000 keys held a worker for minutes."""
    from features.flat import MAX_KEYS_MATCHED, field_problems

    schema = {"columns": {"Visits": "numeric", "Lead Source": "categorical"}, "missing_tokens": [""],
              "header": ["Prospect ID", "Visits", "Lead Source", "Converted"]}  # fmt: skip
    row = {"Visits": 3, **{f"Visits{i}": 1 for i in range(5000)}}
    problems = field_problems(schema, [row])
    assert len(problems) == MAX_KEYS_MATCHED + 1
    assert problems[-1] == (0, None, f"{5000 - MAX_KEYS_MATCHED:,} more keys are not columns of the model")
    # A model from before the header was kept: a key spelt another way is still caught past the first few.
    older = {key: value for key, value in schema.items() if key != "header"}
    crm_record = {"Visits": 3, **{f"crm_field_{i}": "x" for i in range(25)}, "lead source": "Google"}
    assert field_problems(older, [crm_record]) == [
        (0, "lead source", "not a column of the model, 'Lead Source' is (names are matched as written)")
    ]


def test_a_column_name_that_reads_as_tex_is_drawn_as_written(tmp_path):
    """`Spend $\\frac$` made matplotlib parse math and fail training after tuning."""
    import lightgbm as lgb

    from serving.charts import waterfall
    from training.plots import shap_summary_plot

    name = r"Spend $\frac$"
    gen = np.random.default_rng(0)
    x = pd.DataFrame({name: gen.normal(size=300), "Visits": gen.integers(0, 9, 300).astype(float)})
    y = (x[name] + gen.normal(size=300) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 3}, lgb.Dataset(x, y), 10)
    assert shap_summary_plot(booster, x, tmp_path).is_file()
    assert name in waterfall(20.0, [(name, 5.0), ("Visits", -2.0)], 23.0)
    # A backslash LightGBM writes into its model dump unescaped: `\a` made the registered
    # champion unloadable. As a feature it becomes a look-alike.
    from features.flat import model_column_name

    column = model_column_name(r"Last $\alpha^{2}$ Activity")
    renamed = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 3},
                        lgb.Dataset(x.set_axis([column, "Visits"], axis=1), y), 5)  # fmt: skip
    assert renamed.dump_model()["feature_names"][0] == "Last_$\u2216alpha^(2)$_Activity"


def test_a_european_excel_export_reads_its_numbers_as_written(tmp_path, params):
    """Saved with ';' and decimal commas, 1532 seconds on the site are written 1.532: read as 1.532 s,
    they scored a keen lead as a cold one without a word."""
    seconds = [(i % 7 + 1) * 1000 + (i % 3) * 111 for i in range(80)]
    rows = [f"{i};{s // 1000}.{s % 1000:03d};{i % 4},5;{i % 2}" for i, s in enumerate(seconds)]
    path = tmp_path / "euro.csv"
    path.write_text("id;Seconds on site;Pages per visit;y\n" + "\n".join(rows) + "\n")
    data = load_flat(path, FlatProfile(label="y", id="id", sep=";"), params.flat)
    assert data.features["Seconds on site"].tolist() == seconds
    assert data.features["Pages per visit"].iloc[:3].tolist() == [0.5, 1.5, 2.5]
    said = [note for note in data.quarantine.notes if "dots grouping thousands" in note]
    assert said == ["Seconds on site: 80 value(s) such as '1.000' read as whole numbers, dots grouping thousands"]
    euro = {"dots_group": True, "comma_decimal": True}
    assert data.schema["number_formats"] == {"Seconds on site": euro, "Pages per visit": euro}
    # One lead scored later, in a file or a request with no decimal comma in it, reads alike; a
    # number sent as a number keeps its value.
    one = pd.DataFrame({"Seconds on site": ["2.111", 1.532], "Pages per visit": ["3", 2.0]})
    served, _ = clean_flat_columns(one, data.schema)
    assert served["Seconds on site"].tolist() == [2111.0, 1.532]


@pytest.mark.parametrize("converted,lost", [(1, 100), (3, 3)])
def test_a_flat_export_with_too_few_of_a_class_is_refused_with_the_counts(tmp_path, params, converted, lost):
    """Refused before the stratified split, whose scikit-learn error ("the least populated class
    in y has only 1 member") said nothing of the 40 needed."""
    from training.pipeline import prepare_flat

    path = tmp_path / "few.csv"
    rows = [f"p{i},{i % 5},{1 if i < converted else 0}" for i in range(converted + lost)]
    path.write_text("id,visits,y\n" + "\n".join(rows) + "\np0,9,1\n")  # and a repeated id: both set aside
    with pytest.raises(
        DataError,
        match=rf"few\.csv: too few examples to train: {converted - 1} "
        rf"that converted and {lost} that did not.*set aside: 2 flat row\(s\): id 'id' appears",
    ) as refused:
        prepare_flat(path, FlatProfile(label="y", id="id"), params)
    assert len(refused.value.quarantine.frame()) == 2  # kept for the file the refusal names


def test_a_column_named_in_another_case_is_suggested(flat_csv, params):
    with pytest.raises(DataError, match=r"no column\(s\) 'converted' \(given as label; did you mean 'Converted'\?\)"):
        load_flat(flat_csv, FlatProfile(label="converted"), params.flat)


def test_columns_as_messy_exports_write_them_are_read_as_what_they_hold(tmp_path, params):
    """Amounts with cents, a value-or-blank flag, accounting negatives, zip codes, a label
    re-saved as 1.0 and a column without a header were dropped, misread or not said."""
    rng = np.random.default_rng(1)
    n = 400
    converted = rng.random(n) < 0.35
    deal = np.round(np.exp(rng.normal(8, 1, n)) * np.where(converted, 1.6, 1.0) + rng.random(n), 2)
    opted = np.where(converted, rng.random(n) < 0.7, rng.random(n) < 0.1)
    margin = np.round(rng.normal(0, 50, n), 2)
    frame = pd.DataFrame({
        "Deal Size": deal.astype(str),
        "Opted In": np.where(opted, "Yes", ""),
        "Margin": [f"({-m:.2f})" if m < 0 else f"{m:.2f}" for m in margin],
        "Zip": rng.choice(["02134", "00501", "10001", "94105", "60601"], n),
        "": rng.integers(0, 9, n).astype(str),
        "Ticket": np.arange(5000, 5000 + n).astype(str),
        "Budget": [f"{'EUR' if i % 9 == 0 else 'USD'} {rng.integers(1, 90) * 1000:,}" for i in range(n)],
        "Converted": [("1.0" if i % 2 else "1") if c else ("0.0" if i % 3 else "0") for i, c in enumerate(converted)],
    })  # fmt: skip
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    data = load_flat(path, FlatProfile(label="Converted"), params.flat)
    assert data.schema["columns"] == {"Deal Size": "numeric", "Opted In": "categorical", "Margin": "numeric",
                                      "Zip": "categorical", "Unnamed: 4": "numeric", "Budget": "numeric"}  # fmt: skip
    assert data.label.tolist() == converted.astype(float).tolist()  # "1" and "1.0" are one class
    assert data.features["Margin"].tolist() == pytest.approx(margin.tolist())
    assert set(data.features["Zip"]) == {"02134", "00501", "10001", "94105", "60601"}
    notes = " ".join(data.quarantine.notes)
    assert "column Opted In read as categorical: 'Yes' or blank" in notes
    assert "values such as '0" in notes and "keep their leading zeros" in notes
    assert "column 5 has no header: read as numeric under the name 'Unnamed: 4'" in notes
    assert "Ticket not used: an identifier" in notes and "give it the numeric type in a profile" in notes
    assert "column Budget read as numeric: amounts in more than one currency (EUR, USD) read as one unit" in notes
    frame.rename(columns={"Margin": "Margin, USD"}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"""goes in double quotes: --drop '"Margin, USD"'"""):
        load_flat(path, FlatProfile(label="Converted", drop=["Margin", "USD"]), params.flat)
    frame.to_csv(path, index=False)
    positive = load_flat(path, FlatProfile(label="Converted", positive="1.00"), params.flat)
    assert positive.label.tolist() == data.label.tolist()
    blank = frame.assign(Converted=np.where(converted, "1", ""))
    blank.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"has 1 class\(es\) \['1'\] \(\d+ rows have a blank label, read as no outcome"):
        load_flat(path, FlatProfile(label="Converted"), params.flat)


def test_dates_written_in_both_orders_are_said_as_such(tmp_path, params):
    """Month-first dates in a day-first column were "missing or not a date", and the column
    without --time "free text or an identifier"."""
    rng = np.random.default_rng(2)
    n = 400
    days = pd.date_range("2023-01-01", periods=n // 2, freq="3D").repeat(2)  # two leads a day: not unique
    written = [d.strftime("%m/%d/%Y") if i % 5 == 0 and d.day > 12 else d.strftime("%d/%m/%Y")
               for i, d in enumerate(days)]  # fmt: skip
    frame = pd.DataFrame({"Created": written, "Visits": rng.integers(0, 9, n), "Converted": rng.integers(0, 2, n)})
    path = tmp_path / "dates.csv"
    frame.to_csv(path, index=False)
    swapped = sum(i % 5 == 0 and d.day > 12 for i, d in enumerate(days))
    timed = load_flat(path, FlatProfile(label="Converted", time="Created"), params.flat)
    reasons = timed.quarantine.frame()["reason"]
    against = reasons.str.startswith("time column 'Created' holds a date against its order (day first")
    assert against.sum() == swapped and len(reasons) == swapped, reasons.tolist()[:3]
    untimed = load_flat(path, FlatProfile(label="Converted"), params.flat)
    assert any(n.startswith("column Created not used: dates, ") for n in untimed.quarantine.notes)
    # Unique to the second, a creation time is no identifier.
    frame.assign(Created=[f"2024-0{1 + i % 9}-1{i % 10} 10:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(n)]).to_csv(
        path, index=False
    )
    notes = load_flat(path, FlatProfile(label="Converted"), params.flat).quarantine.notes
    assert "column Created not used: a date (pass --time to split by it)" in notes, notes
