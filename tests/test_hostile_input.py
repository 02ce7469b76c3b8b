"""Hostile input: files crafted to break training, bodies crafted to break the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from features.ingest import MAX_CELL_CHARS, MAX_COLUMNS, DataError, read_text_csv

LEADSCORE = str(Path(sys.executable).parent / "leadscore")


def _flat(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.normal(size=rows)
    return pd.DataFrame(
        {
            "lead_no": [f"L{i:05d}" for i in range(rows)],
            "visits": rng.poisson(3, rows) + (score > 0.5),
            "source": rng.choice(["web", "event", "partner"], rows),
            "converted": (score + rng.normal(scale=0.8, size=rows) > 0.8).astype(int),
        }
    )


def test_broken_quoting_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('id,note,label\n1,"fine",1\n2,"never closed,0\n3,ok,1\n')
    with pytest.raises(DataError, match=r"broken\.csv: cannot read as CSV"):
        read_text_csv(path)


def test_a_million_column_header_is_refused_without_reading_the_file(tmp_path):
    path = tmp_path / "wide.csv"
    with path.open("w") as handle:
        handle.write(",".join(f"c{i}" for i in range(1_000_000)) + "\n")
        handle.write(",".join("1" for _ in range(1_000_000)) + "\n")
    with pytest.raises(DataError, match="header"):
        read_text_csv(path)
    narrow = tmp_path / "narrower.csv"
    narrow.write_text(",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n")
    with pytest.raises(DataError, match=f"{MAX_COLUMNS + 1:,} columns"):
        read_text_csv(narrow)


def test_a_huge_field_is_named_by_row_and_column(tmp_path):
    path = tmp_path / "huge.csv"
    frame = _flat(5)
    frame.loc[3, "source"] = "x" * (MAX_CELL_CHARS + 1)
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 4, column 'source'"):
        read_text_csv(path)


def test_mixed_encodings_are_read_line_by_line_and_reported(tmp_path):
    path = tmp_path / "mixed.csv"
    lines = ["id,city,label", "1,Zürich,1", "2,Malmö,0", "3,Paris,1"]
    data = "\n".join(lines[:2]).encode("utf-8") + b"\n" + lines[2].encode("cp1252") + b"\n" + lines[3].encode() + b"\n"
    path.write_bytes(data)
    frame, encoding = read_text_csv(path)
    assert frame["city"].tolist() == ["Zürich", "Malmö", "Paris"]
    assert "1 line(s) not UTF-8" in encoding and "line 3" in encoding


def _train(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "COLUMNS": "200"}
    return subprocess.run([LEADSCORE, "train", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_formula_cells_are_data_and_an_id_leaking_the_label_is_caught(tmp_path):
    frame = _flat(600, seed=3)
    # An id that spells the outcome, as exports built from "won"/"lost" lists do.
    frame["account_code"] = np.where(frame["converted"] == 1, "W-", "L-") + frame["lead_no"]
    marker = tmp_path / "pwned"
    frame["source"] = frame["source"].where(frame.index % 7 != 0, f"=cmd|' /C touch {marker}'!A0")
    frame["visits"] = frame["visits"].astype(object)
    frame.loc[5, "visits"] = "@SUM(1+1)"
    frame["converted"] = frame["converted"].astype(object)
    frame.loc[8, ["lead_no", "converted"]] = ['=HYPERLINK("http://x")', ""]  # quarantined: no label
    path = tmp_path / "hostile.csv"
    frame.to_csv(path, index=False)
    done = _train("--data", str(path), "--label", "converted", "--id", "lead_no", "--trials", "3",
                  "--metrics-out", str(tmp_path / "m.json"), tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    # A flat model gets a name of its own: `lead-scorer@champion` stays the CRM model's.
    assert metrics["model"]["name"] == "lead-scorer-flat-converted"
    assert "--model-name lead-scorer-flat-converted" in " ".join(done.stdout.split())
    assert "account_code" in metrics["leakage"]["flagged"]
    assert "identifier 'account_code' gives the label away" in " ".join(done.stdout.split())
    assert not marker.exists()
    quarantine = pd.read_csv(metrics["data"]["quarantine_file"], dtype=str, keep_default_na=False)
    assert quarantine["lead_id"].str.contains("HYPERLINK").any()  # the row is there, quoted back
    for column in quarantine.columns:  # and no cell would run as a formula in a spreadsheet
        assert not quarantine[column].str.startswith(("=", "+", "-", "@")).any(), column


@pytest.fixture(scope="module")
def debug_server(champion_store, tmp_path_factory):
    from tests.test_service import _start, _stop

    process, url, log = _start(champion_store, None, log_dir=tmp_path_factory.mktemp("debug-logs"),
                               serve_args=("--verbose",))  # fmt: skip
    yield url, log
    _stop(process)


@pytest.mark.slow
def test_deep_json_nan_and_infinity_are_4xx(debug_server):
    url, _ = debug_server
    deep = '{"leads": ' + "[" * 20_000 + "]" * 20_000 + "}"
    answers = [
        httpx.post(f"{url}/score", content=deep, headers={"content-type": "application/json"}),
        httpx.post(
            f"{url}/score", content='{"leads": [{"lead_id": "a", "created_at": "2025-01-01", "employees": NaN}]}'
        ),
        httpx.post(
            f"{url}/score",
            content='{"leads": [{"lead_id": "a", "created_at": "2025-01-01", "annual_revenue": Infinity}]}',
        ),
        httpx.post(
            f"{url}/score",
            content='{"leads": [{"lead_id": "a", "created_at": "2025-01-01", '
            '"activities": [{"occurred_at": "2025-02-01", "activity_type": "visit", '
            '"value": -Infinity}]}]}',
        ),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
    assert "finite" in answers[1].text and "employees" in answers[1].text


@pytest.mark.slow
def test_the_extremes_the_schema_allows_are_scored(debug_server):
    """Histories spanning centuries (the decayed score would overflow a float) and moments at
    the edges of the accepted years, alone and in a batch: answers, not 500s. The latest
    `as_of` taken is the end of today (UTC); the last accepted year's is refused by name."""
    from features.clean import latest_moment

    url, _ = debug_server
    lead = {"lead_id": "old", "created_at": "1900-01-01T00:00:00Z", "activities": [
        {"occurred_at": moment, "activity_type": "demo_request"}
        for moment in ("1900-01-02", "1950-06-01", "2025-01-01T23:59:59+14:00", "2200-12-31T23:59:59")
    ]}  # fmt: skip
    latest = latest_moment().isoformat()
    for leads in ([lead], [lead, {**lead, "lead_id": "old-2"}]):
        answer = httpx.post(f"{url}/score", json={"leads": leads, "as_of": latest})
        assert answer.status_code == 200, answer.text
        assert [a["lead_id"] for a in answer.json()] == [item["lead_id"] for item in leads]
        refused = httpx.post(f"{url}/score", json={"leads": leads, "as_of": "2200-12-31T23:59:59.999999"})
        assert refused.status_code == 400 and "as_of 2200-12-31T23:59:59.999999Z is after today" in refused.text


@pytest.mark.slow
def test_no_personal_data_in_the_logs_even_at_debug_level(debug_server):
    url, log = debug_server
    pii = {"email": "jane.roe@example.org", "first_name": "Janeforename", "last_name": "Roesurname",
           "phone": "+44 20 7946 0958", "company": "Roe Holdings Secretco"}  # fmt: skip
    good = {"lead_id": "pii-1", "created_at": "2025-06-01T00:00:00", **pii}
    httpx.post(f"{url}/score", json={"leads": [good], "as_of": "2025-12-01T00:00:00"})
    httpx.post(f"{url}/score", json={"leads": [good, good], "as_of": "2025-12-01T00:00:00"})
    httpx.post(f"{url}/score", json={"leads": [{**pii}]})  # invalid: no lead_id, whole lead in the error
    httpx.post(f"{url}/score", json={"leads": [{**good, "employees": "many"}]})
    httpx.post(f"{url}/explain", json={"lead": {**good, "created_at": "not a date"}})
    text = log.read_text(errors="replace")
    assert "DEBUG" in text  # the level really is debug
    for value in pii.values():
        assert value not in text, value


def test_a_truncated_booster_without_checksums_is_refused_before_lightgbm_reads_it(tmp_path):
    from features.bundle import check_bundle_files

    booster = tmp_path / "booster.txt"
    booster.write_text("tree\nversion=v4\nnum_class=1\n\nTree=0\nnum_leaves=3\n")  # cut before "end of trees"
    with pytest.raises(ValueError, match="ends before its last tree"):
        check_bundle_files({"booster": booster}, metadata={})
    booster.write_text(booster.read_text() + "\nend of trees\n")
    check_bundle_files({"booster": booster}, metadata={})
    with pytest.raises(ValueError, match="differs from the file written at training time"):
        check_bundle_files({"booster": booster}, metadata={"file_sha256": {"booster": "0" * 64}})


def test_a_bundle_of_a_newer_format_is_refused_by_name_not_misread(tmp_path):
    """An older checkout read a newer bundle's changed sub-score reference without a word (every
    lead's fit near 100) or failed with a traceback on its new criteria keys."""
    from features.bundle import BUNDLE_FORMAT, check_bundle_files

    booster = tmp_path / "booster.txt"
    booster.write_text("tree\nend of trees\n")
    check_bundle_files({"booster": booster}, metadata={"bundle_format": BUNDLE_FORMAT})
    with pytest.raises(ValueError, match=r"newer than this release of leadscore reads.*update this checkout"):
        check_bundle_files({"booster": booster}, metadata={"bundle_format": BUNDLE_FORMAT + 1})
    for damaged in ("3", None, 2.0, True, 0, -1):  # not a newer release: updating would not help
        with pytest.raises(ValueError, match="damaged bundle: its metadata's bundle_format is"):
            check_bundle_files({"booster": booster}, metadata={"bundle_format": damaged})


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    """No early exit: a wrong key, a right one and a right prefix all cost one constant-time
    comparison per configured key (timing says nothing about which key or how much matched)."""
    import hmac

    from serving import guards

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(guards.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    keys = (b"first-key-123", b"second-key-456", b"third-key-789")
    for token in (b"first-key-123", b"first-key-12", b"nope", b""):
        calls.clear()
        guards.key_matches(token, keys)
        assert len(calls) == len(keys)
    assert guards.key_matches(b"second-key-456", keys) and not guards.key_matches(b"second-key-45", keys)


def test_error_bodies_rewrites_only_the_frameworks_errors():
    """A chunked 400 is rewritten whole; a 200, an HTML 404 (a lead page) and a HEAD pass as sent."""
    import asyncio

    from serving.guards import ErrorBodies

    def app_answering(status: int, media: bytes, chunks: list[bytes]):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", media)]})
            for i, chunk in enumerate(chunks):
                await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

        return app

    def call(app, method: str = "POST") -> tuple[int, dict[bytes, bytes], bytes]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": "/score"}
        asyncio.run(ErrorBodies(app)(scope, None, send))
        start, bodies = sent[0], [m.get("body", b"") for m in sent[1:]]
        return start["status"], dict(start["headers"]), b"".join(bodies)

    problems = {"error": "2 validation error for request", "detail": [
        {"type": "missing", "loc": ["leads", 0, "created_at"], "msg": "Field required", "url": "x", "input": "p"},
        {"type": "float_type", "loc": ["leads", 2, "employees"], "msg": "Input should be a valid number"}]}  # fmt: skip
    raw = json.dumps(problems).encode()
    status, headers, body = call(app_answering(400, b"application/json", [raw[:30], raw[30:]]))
    answer = json.loads(body)
    assert status == 400 and int(headers[b"content-length"]) == len(body)
    assert answer["error"] == "2 problems in the request; the first, at leads.0.created_at: Field required"
    assert [sorted(p) for p in answer["detail"]] == [["loc", "msg", "type"]] * 2
    # A mistake repeated on every row: the first 200 listed, all of them counted (200,000 dates in
    # another form made an answer of 58 MB, counted as 201).
    many = {"detail": [{"type": "x", "loc": ["leads", i, "activities", 0, "occurred_at"], "msg": "not a date"}
                       for i in range(1000)]}  # fmt: skip
    status, _, body = call(app_answering(400, b"application/json", [json.dumps(many).encode()]))
    answer = json.loads(body)
    assert answer["error"].startswith("1000 problems in the request; the first, at leads.0.activities.0.occurred_at")
    more = {"loc": ["leads"], "msg": "and 800 more problems, not listed: fix these first", "type": "not_listed"}
    assert len(answer["detail"]) == 201 and answer["detail"][-1] == more
    untouched = ((200, b"application/json", "POST"), (404, b"text/html", "GET"), (404, b"text/plain", "HEAD"))
    for status, media, method in untouched:
        assert call(app_answering(status, media, [b"as", b" sent"]), method)[2] == b"as sent"
    assert json.loads(call(app_answering(404, b"text/plain", [b"Not Found"]), "GET")[2]) == {
        "error": "no route GET /score: the API is described at /docs.json"
    }
    # A mounted FastAPI app (/model, /reload, /ui) answers the same in JSON: named the same way.
    mounted = app_answering(405, b"application/json", [b'{"detail": "Method Not Allowed"}'])
    assert json.loads(call(mounted, "PUT")[2]) == {"error": "PUT is not allowed on /score: use another method"}
    ours = json.dumps({"error": "no lead 'x'", "detail": "Not Found"}).encode()
    assert call(app_answering(404, b"application/json", [ours]), "GET")[2] == ours


def test_rows_that_end_with_a_separator_the_header_lacks_are_read_as_the_header_says(tmp_path):
    """pandas takes such a file's first column for an index and shifts every column by one."""
    path = tmp_path / "trailing.csv"
    path.write_text("id,visits,label\nA1,3,1,\nA2,5,0,\n")
    frame, _ = read_text_csv(path)
    assert frame.to_dict("list") == {"id": ["A1", "A2"], "visits": ["3", "5"], "label": ["1", "0"]}
    path.write_text("id,visits,label\nA1,3,1,x\nA2,5,0,y\n")  # fields with values: a header name is missing
    with pytest.raises(DataError, match=r"trailing\.csv: its rows have 1 more field\(s\) than its header"):
        read_text_csv(path)


def test_a_quote_that_swallows_rows_is_named_by_row_and_column(tmp_path):
    rows = [f"L{i},web,{i},{i % 2}" for i in range(20)]
    rows[4] = 'L4,"web,4,0'  # opened, closed by a quote far below: the rows between become one cell
    rows[15] = 'L15,web",15,1'
    path = tmp_path / "quote.csv"
    path.write_text("id,source,visits,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"quote\.csv: row 5, column 'source': a quoted cell runs over 12 lines"):
        read_text_csv(path)
    # Closed part way along a later row, by a quote of that row's: the lost row's start reads as
    # the first fields of a row (an id like the others, a source the column holds).
    rows[15] = "L15,web,15,1"
    rows[5] = 'L5,web,"5",1'
    path.write_text("id,source,visits,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"quote\.csv: row 5, column 'source': a quoted cell runs over 2 lines"):
        read_text_csv(path)
    # A note written over several lines, with commas in it, is an ordinary cell.
    path.write_text('id,note,visits,label\nL1,"called, no answer\nretry, Monday",3,1\nL2,ok,1,0\n')
    assert read_text_csv(path)[0]["note"].tolist() == ["called, no answer\nretry, Monday", "ok"]


@pytest.mark.parametrize("header", ["id,City,visits,City,label", "id,City,visits,City ,label"])
def test_two_columns_of_one_name_are_named_not_merged(tmp_path, header):
    path = tmp_path / "twice.csv"
    path.write_text(header + "\n1,Paris,3,Lyon,1\n")
    with pytest.raises(DataError, match=r"twice\.csv: columns 2 and 4 of the header are both named 'City'"):
        read_text_csv(path)


def test_scoring_reads_files_as_training_does(tmp_path):
    """Legacy encodings and spaces around header names: a file that trains also scores."""
    from serving.batch import read_table

    path = tmp_path / "legacy.csv"
    path.write_bytes(" lead_id , city \nL1,S\xe3o Paulo\nL2,Lyon\n".encode("latin-1"))
    assert read_table(path).to_dict("list") == {"lead_id": ["L1", "L2"], "city": ["São Paulo", "Lyon"]}


def test_classic_mac_line_ends_and_a_short_row_get_messages_that_name_them(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"id,visits,label\rA1,3,1\rA2,5,0\r")
    with pytest.raises(DataError, match=r"mac\.csv: its lines end with a carriage return alone"):
        read_text_csv(path)
    # A row with a field too many: the message says where; no hint at another separator.
    path = tmp_path / "short.csv"
    path.write_text("id,visits,label\nA1,3,1\nA2,5,0,7,8\n")
    with pytest.raises(
        DataError, match=r"short\.csv: line 3 holds 5 fields where the rows before it hold 3: a separator"
    ):
        read_text_csv(path)
    # A row with fields too few (a line break in a value that is not quoted): named, not read as blanks.
    path.write_text("id,visits,label\nA1,3,1\nA2,5\nstill A2's note,0\nA3,4,0\n")
    with pytest.raises(
        DataError, match=r"fewer fields than the header's 3 in row 2 \(2 of them\), row 3 \(2 of them\)"
    ):
        read_text_csv(path)
    # A report export's footer is named as one (it read as rows cut short by a line break).
    path.write_text('id,visits,label\nA1,3,1\nA2,5,0\n\n"Confidential Information - Do Not Distribute"\n'
                    '"Copyright (c) 2000-2026 salesforce.com, inc. All rights reserved."\n')  # fmt: skip
    with pytest.raises(DataError, match=r"its last 2 row\(s\) hold 1 or 2 fields .*'Copyright \(c\) 2000-2026 "
                                        r"salesforce\.com, inc\. All rights rese'\): a report's footer\?"):  # fmt: skip
        read_text_csv(path)
    path.write_text("id,visits,label\nA1,3,1\nA2,5")  # the last row cut short: said as such
    with pytest.raises(DataError, match=r"ends part way through a line \(no line break after its last row, row 2\)"):
        read_text_csv(path)
    path.write_text("id,visits,label\nA1,3,1\nA2,5,0")  # whole, without its line break (the shoppers CSV): read
    assert len(read_text_csv(path)[0]) == 2
    # Lines of spaces are no rows, as pandas reads them, and do not shift the rows named.
    path.write_text("id,visits,label\nA1,3,1\n  \nA2,4,\n \n")
    assert len(read_text_csv(path)[0]) == 2
    path.write_text("id,visits,label\nA1,3,1\n  \nA2,4\nA3,5,0\n")
    with pytest.raises(DataError, match=r"in row 2 \(2 of them\): a row cut short"):
        read_text_csv(path)
    # A header ending with a separator its rows lack: the blank column it names needs no field.
    path.write_text("Lead ID,Visits,Converted,\nA1,3,Yes\nA2,4,No\n")
    assert read_text_csv(path)[0]["Unnamed: 3"].tolist() == ["", ""]
    path.write_text("id;visits;label\nA1;3;1\nA2;3,5;1\n")  # a header of one column: another separator, likely
    with pytest.raises(DataError, match=r"header holds no ',', so it reads as one column, and rows do not; if fields"):
        read_text_csv(path, sep_option=True)  # a flat CSV to train on: --sep
    with pytest.raises(DataError, match=r"saw 2\); is it a CSV file\? Its header shows none of the separators"):
        read_text_csv(path)  # an export folder's file, read in its header's separator: no --sep to give
    path.write_text("  \n\n \n")
    with pytest.raises(DataError, match=r"no header: the file holds only spaces and blank lines"):
        read_text_csv(path)


def test_training_over_a_newer_releases_champion_says_to_update_not_to_replace_it(monkeypatch):
    """It advised promoting by hand or removing the alias: that would undo the upgrade."""
    import mlflow

    from features.bundle import NEWER_BUNDLE
    from training import register

    monkeypatch.setattr(register, "MlflowClient", lambda: None)
    monkeypatch.setattr(register, "current_version", lambda client, name: "2")
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda uri: (_ for _ in ()).throw(ValueError(f"x {NEWER_BUNDLE}")))
    check = register.champion_auc("m", "crm", None, None)
    assert check.uncompared and "registered by a newer release" in check.note and "update this checkout" in check.note
    assert "notebook 02" not in check.note


def test_a_repeated_name_in_a_huge_nested_body_is_found_without_a_path_per_value():
    """A path built for every value of a body once a name repeated took 1.2 GB for 300 KB."""
    import tracemalloc

    from serving.guards import repeated_names

    body = ('{"a":1,"a":2,"b":' + "[" * 900 + ",".join(["0"] * 150_000) + "]" * 900 + "}").encode()
    tracemalloc.start()
    try:
        found = repeated_names(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [where for where, _ in found] == [("a",)] and peak < 100e6, peak
    many = ('{"x":[' + ",".join(['{"a":1,"a":2}'] * 5000) + "]}").encode()
    assert [where for where, _ in repeated_names(many)] == [("x", i, "a") for i in range(20)]
