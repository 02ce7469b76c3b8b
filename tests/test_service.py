"""End to end: the real `bentoml serve` on a loopback port, called over HTTP."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from pydantic import TypeAdapter

from features.criteria import STAGES
from features.ingest import load_crm
from features.params import PROJECT_ROOT
from features.schema import PII_COLUMNS
from serving.batch import score_batch
from serving.schemas import LeadScore, ModelInfo
from serving.scoring import load_champion
from tests.ports import free_port as _free_port

KEYS = ("key-one", "key-two")
CHAMPION_NAME = "svc-model"  # as trained by the `champion_store` fixture
AS_OF = "2025-12-20T12:00:00"


def _start(
    store: str,
    keys: str | None,
    *,
    log_dir: Path | None = None,
    env_extra: dict[str, str | None] | None = None,
    serve_args: tuple[str, ...] = (),
    via_leadscore: bool = False,
) -> tuple[subprocess.Popen, str, Path]:
    """`bentoml serve` (or `leadscore serve`) on a free loopback port, its output in a log
    file; waits for /livez. A port taken between the choice and the server's bind is chosen
    again: any process's outgoing connection can be handed it (a CI run of 2026-12-07 failed so)."""
    for _ in range(2):
        try:
            return _start_once(store, keys, log_dir, env_extra, serve_args, via_leadscore)
        except PortTaken:
            pass
    return _start_once(store, keys, log_dir, env_extra, serve_args, via_leadscore)


class PortTaken(RuntimeError):
    """The server could not bind the port chosen for it."""


def _start_once(
    store: str,
    keys: str | None,
    log_dir: Path | None,
    env_extra: dict[str, str | None] | None,
    serve_args: tuple[str, ...],
    via_leadscore: bool,
) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "LEADSCORE_MODEL_NAME": CHAMPION_NAME}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env.pop("LEADSCORE_API_KEYS", None)
    if keys:
        env["LEADSCORE_API_KEYS"] = keys
    for name, value in (env_extra or {}).items():
        if value is None:  # not set
            env.pop(name, None)
        else:
            env[name] = value
    if not via_leadscore:  # `leadscore serve` gives itself one: a home of its own, as it does
        # A service starting empties its BentoML home's metrics folder: with one home for every
        # test worker, a service started in one emptied another's /metrics (CI, 2026-12-07).
        from training.cli import bentoml_home

        env.setdefault("BENTOML_HOME", str(bentoml_home("127.0.0.1", port)))
    log = (log_dir or Path(store.removeprefix("sqlite:///")).parent) / f"serve-{port}.log"
    bin_dir = Path(sys.executable).parent
    command = (
        [str(bin_dir / "leadscore"), "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args]
        if via_leadscore
        else [str(bin_dir / "bentoml"), "serve", "serving.service:LeadScoring", "--host", "127.0.0.1",
              "--port", str(port), "--working-dir", str(PROJECT_ROOT), *serve_args]
    )  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/livez", timeout=2).status_code == 200:
                return process, url, log
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    _stop(process)
    output = log.read_text()
    if "Address already in use" in output:
        raise PortTaken(f"port {port} was taken before the server bound it")
    raise RuntimeError(f"bentoml serve did not start: {output[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def store(champion_store) -> str:
    return champion_store


@pytest.fixture(scope="module")
def server(store):
    process, url, log = _start(store, ",".join(KEYS))
    yield url, log
    _stop(process)


@pytest.fixture(scope="module")
def sample(small_crm_dir):
    """Thirty open leads of the small CRM with their activities, as the CRM would send them."""
    crm = load_crm(small_crm_dir)
    open_ids = crm.outcomes.loc[crm.outcomes["status"] == "open", "lead_id"]
    leads = crm.leads[crm.leads["lead_id"].isin(open_ids)].head(30).reset_index(drop=True)
    acts = crm.activities[crm.activities["lead_id"].isin(leads["lead_id"])]
    return leads, acts


def _request(leads: pd.DataFrame, acts: pd.DataFrame) -> dict:
    body = []
    fields = ["industry", "country", "seniority", "department", "lead_source", "employees", "annual_revenue",
              "budget", "authority", "need", "timeline", "tech_stack", "email", "do_not_contact"]  # fmt: skip
    for lead in leads.to_dict(orient="records"):
        item = {"lead_id": lead["lead_id"], "created_at": lead["created_at"].isoformat()}
        for f in fields:
            value = lead.get(f)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                item[f] = bool(value) if f == "do_not_contact" else value
        own = acts[acts["lead_id"] == lead["lead_id"]]
        item["activities"] = [
            {"occurred_at": a.occurred_at.isoformat(), "activity_type": a.activity_type}
            | ({"value": a.value} if not np.isnan(a.value) else {})
            for a in own.itertuples()
        ]
        body.append(item)
    return {"leads": body, "as_of": AS_OF}


def _auth(key: str = KEYS[1]) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.slow
def test_keys_are_required_except_on_probes(server):
    url, _ = server
    body = {"leads": [{"lead_id": "x", "created_at": "2025-01-01"}]}
    assert httpx.post(f"{url}/score", json=body).status_code == 401
    assert httpx.post(f"{url}/score", json=body, headers=_auth("nope")).status_code == 401
    assert httpx.post(f"{url}/score", json=body, headers={"Authorization": "key-one"}).status_code == 401
    assert httpx.post(f"{url}/score", json=body, headers=_auth()).status_code == 200
    assert httpx.get(f"{url}/model").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.slow
def test_every_answer_names_its_request_as_the_access_log_does(server):
    """The guards' answers (401, 404, 405, 413, 415) carried no request id, only the handlers' did."""
    url, log = server
    answers = [
        httpx.post(f"{url}/score", json={"leads": []}),
        httpx.get(f"{url}/no-such-route", headers=_auth()),
        httpx.get(f"{url}/score", headers=_auth()),
        httpx.post(f"{url}/score", content=b"x", headers={**_auth(), "content-type": "text/plain"}),
        httpx.post(f"{url}/score", json={"leads": [{"lead_id": "x", "created_at": "2025-01-01"}]}, headers=_auth()),
    ]
    assert [a.status_code for a in answers] == [401, 404, 405, 415, 200]
    ids = [a.headers.get("x-bentoml-request-id") for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    # None may be framed by another site or sniffed as another type; the pages get their policy.
    for answer in [*answers, httpx.get(f"{url}/ui/digest", headers=_auth()), httpx.get(f"{url}/")]:
        assert answer.headers.get("x-frame-options") == "DENY", answer.headers
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.headers
        assert "frame-ancestors 'none'" in answer.headers.get("content-security-policy", ""), answer.headers
    assert "script-src" not in answers[0].headers["content-security-policy"]  # default-src 'none' only on pages
    assert "default-src 'none'" in httpx.get(f"{url}/ui/digest", headers=_auth()).headers["content-security-policy"]
    # The access log is written as each answer ends: give the last lines a moment to land.
    logged = lambda: all(f"span={request_id}" in log.read_text(errors="replace") for request_id in ids)  # noqa: E731
    _wait_for(logged, 15, f"the access log did not name each of {ids}")


@pytest.mark.slow
def test_metrics_and_the_access_log_name_routes_not_the_paths_sent(server):
    """Each made-up path was a new series on the open /metrics for good, a page's lead id showed
    there, and a path with a line break forged an access-log line."""
    url, log = server
    assert httpx.get(f"{url}/made-up-path-1234").status_code == 401
    assert httpx.get(f"{url}/nothing%0d%0aFORGED now serving version 99").status_code == 401
    page = httpx.get(f"{url}/ui/leads/L-private-77", headers=_auth())
    assert page.status_code in (200, 404) and "L-private-77" in page.text  # the page still gets its path
    body = {"leads": [{"lead_id": "x", "created_at": "2025-01-01"}]}
    assert httpx.post(f"{url}/score", json=body, headers=_auth()).status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'endpoint="/{other}"' in metrics and 'endpoint="/ui/leads/{lead_id}"' in metrics
    assert 'endpoint="/score"' in metrics
    written = metrics + log.read_text()
    assert not any(sent in written for sent in ("made-up-path-1234", "L-private-77", "FORGED"))


def _score_requests_counted(metrics: str) -> float:
    """The answered /score requests the service's /metrics counts."""
    counted = re.findall(r"^bentoml_service_request_total\{([^}]*)\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    wanted = ('endpoint="/score"', 'http_response_code="200"')
    return sum(float(n) for labels, n in counted if all(w in labels for w in wanted))


@pytest.mark.slow
def test_two_services_on_one_machine_count_their_own_requests(champion_store, tmp_path):
    """A service starting emptied BentoML's metrics folder, shared by every service of the
    machine's BentoML home: another service's /metrics then lost its counts."""
    body = {"leads": [{"lead_id": "x", "created_at": "2025-01-01"}]}
    first, url, first_log = _start(champion_store, None, log_dir=tmp_path, via_leadscore=True)
    # Without keys it says which host names it answers (a proxy sending its own name gets a 403).
    said = " ".join(first_log.read_text().split())
    assert "No API keys: requests must be addressed to localhost or 127.0.0.1" in said, said[:2000]
    try:
        for _ in range(3):
            assert httpx.post(f"{url}/score", json=body, timeout=30).status_code == 200
        second, other, _ = _start(champion_store, None, log_dir=tmp_path, via_leadscore=True)
        try:
            assert httpx.post(f"{other}/score", json=body, timeout=30).status_code == 200
            for _ in range(2):
                assert httpx.post(f"{url}/score", json=body, timeout=30).status_code == 200
            assert _score_requests_counted(httpx.get(f"{url}/metrics").text) == 5
            assert _score_requests_counted(httpx.get(f"{other}/metrics").text) == 1
            # Each worker runs with two malloc arenas (memory crept up in idle ones without).
            workers = psutil.Process(first.pid).children(recursive=True)
            assert workers and {w.environ().get("MALLOC_ARENA_MAX") for w in workers} == {"2"}
        finally:
            _stop(second)
    finally:
        _stop(first)


@pytest.mark.slow
def test_service_and_batch_give_identical_numbers(server, store, sample):
    url, _ = server
    leads, acts = sample
    response = httpx.post(f"{url}/score", json=_request(leads, acts), headers=_auth(), timeout=60)
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json())
    assert served["lead_id"].tolist() == leads["lead_id"].tolist()
    TypeAdapter(list[LeadScore]).validate_python(response.json())  # the service checks only the first record

    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        model = load_champion(CHAMPION_NAME)
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(store.removeprefix('sqlite:///'))}"
    text_leads = leads.astype(object).where(leads.notna(), "").astype(str)
    text_leads["created_at"] = leads["created_at"].map(lambda t: t.isoformat())
    text_acts = acts.assign(occurred_at=acts["occurred_at"].map(lambda t: t.isoformat())).astype(str)
    batch = score_batch(model, text_leads, text_acts.replace("nan", ""), pd.Timestamp(AS_OF)).scored
    for column in ("probability", "score", "fit", "engagement"):
        np.testing.assert_allclose(served[column], batch[column].astype(float), rtol=0, atol=1e-9)
    for column in ("grade", "stage", "stage_reason", "next_action", "model_version"):
        assert served[column].tolist() == batch[column].tolist()
    assert [[r["text"] for r in rs] for rs in served["reasons"]] == [
        [r["text"] for r in json.loads(rs)] for rs in batch["reasons"]
    ]
    # One lead per request takes the service's single-lead path: the same numbers again.
    for i in range(8):
        alone = httpx.post(f"{url}/score", json=_request(leads.iloc[[i]], acts), headers=_auth(), timeout=60)
        assert alone.status_code == 200, alone.text
        assert alone.json()[0] == response.json()[i]
    assert served["as_of"].eq(AS_OF + "Z").all()  # the moment scored at, to send again
    # Without as_of, the answer says the moment it used, and sending it back scores the same.
    request = _request(leads.iloc[:3], acts)
    request.pop("as_of", None)
    now = httpx.post(f"{url}/score", json=request, headers=_auth(), timeout=60).json()
    again = httpx.post(f"{url}/score", json={**request, "as_of": now[0]["as_of"]}, headers=_auth(), timeout=60)
    assert again.json() == now and now[0]["as_of"].endswith("Z")
    assert served["grade"].isin(list("ABCD")).all()
    assert served["stage"].isin(STAGES).all()
    assert served["score"].between(0, 100).all() and served["fit"].between(0, 100).all()
    assert all(0 < len(r) <= 6 for r in served["reasons"])


@pytest.mark.slow
def test_bad_input_is_a_4xx_naming_the_field_and_position(server):
    url, _ = server
    post = lambda body: httpx.post(f"{url}/score", json=body, headers=_auth(), timeout=30)  # noqa: E731
    empty = post({"leads": []})
    assert empty.status_code == 400 and "leads" in empty.text
    unknown = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01", "colour": "red"}]})
    assert (
        unknown.status_code == 400
        and '"colour"' in unknown.text
        and '["leads",0,"colour"]' in unknown.text.replace(" ", "")
    )
    # A misspelled top-level field ("asof") would otherwise score as of now without a word.
    misspelled = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01"}], "asof": "2025-06-01"})
    assert misspelled.status_code == 400 and '["asof"]' in misspelled.text.replace(" ", ""), misspelled.text
    explain_extra = httpx.post(f"{url}/explain", json={"lead": {"lead_id": "a", "created_at": "2025-01-01"}, "x": 1},
                               headers=_auth(), timeout=30)  # fmt: skip
    assert explain_extra.status_code == 400 and '["x"]' in explain_extra.text.replace(" ", "")
    blank_id = post({"leads": [{"lead_id": "   ", "created_at": "2025-01-01"}]})
    assert blank_id.status_code == 400 and '["leads",0,"lead_id"]' in blank_id.text.replace(" ", "")
    assert "should hold a visible character" in blank_id.json()["error"] and "\\x00" not in blank_id.text
    wrong_type = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01"}, {"lead_id": "b", "employees": "many"}]})
    assert wrong_type.status_code == 400 and '["leads",1,"employees"]' in wrong_type.text.replace(" ", "")
    # The summary names the count and the first problem; no links to pydantic's site.
    summary = "1 problem in the request, at leads.1.employees: Input should be a valid number"
    assert wrong_type.json()["error"] == summary
    assert "url" not in wrong_type.json()["detail"][0]
    # A date the API does not read says which it does ("invalid character in year" did not).
    us_date = post({"leads": [{"lead_id": "a", "created_at": "09/01/2026"}]})
    problem = us_date.json()["detail"][0]
    assert us_date.status_code == 400 and problem["loc"] == ["leads", 0, "created_at"], us_date.text
    assert "send ISO 8601 (2026-10-22T12:00:00Z, or 2026-10-22 read as UTC; hours 00-23" in problem["msg"]
    # Not the parser's reason, which misleads: hour 25 was "unexpected extra characters at the end".
    hour_25 = post({"leads": [{"lead_id": "a", "created_at": "2026-10-22T25:00:00Z"}]})
    assert hour_25.json()["detail"][0]["msg"].startswith("not a date or time this API reads; send ISO 8601")
    feb_30 = post({"leads": [{"lead_id": "a", "created_at": "2026-02-30"}]})  # the form is right, the day is not
    assert feb_30.json()["detail"][0]["msg"].startswith("day value is outside expected range; send ISO 8601")
    # One mistake on every activity: 200 listed, all counted, whether pydantic or the service finds them.
    dated = [{"occurred_at": "10/01/2026", "activity_type": "email_open"}] * 20
    every_row = post({"leads": [{"lead_id": f"u{i}", "created_at": "2025-01-01", "activities": dated}
                                for i in range(30)]})  # fmt: skip
    assert every_row.status_code == 400 and every_row.json()["error"].startswith("600 problems in the request")
    assert len(every_row.json()["detail"]) == 201 and "and 400 more problems" in every_row.json()["detail"][-1]["msg"]
    undated = post({"leads": [{"lead_id": f"n{i}"} for i in range(250)]})
    assert undated.status_code == 400 and undated.json()["error"].startswith("250 problems in the request")
    assert undated.json()["detail"][-1]["msg"].startswith("and 50 more problems")
    # A type of punctuation alone is none, as the spec says (it said any type other than the contract's is `other`).
    dashed = post({"leads": [{"lead_id": "d", "created_at": "2025-01-01",
                              "activities": [{"occurred_at": "2025-02-01", "activity_type": "-"}]}]})  # fmt: skip
    assert dashed.status_code == 400 and "missing activity_type" in dashed.json()["error"], dashed.text
    from serving.service import SPEC

    said = SPEC["components"]["schemas"]["Activity"]["properties"]["activity_type"]["description"]
    assert "('-') is none (400: missing activity_type)" in said
    # A union field fails with one error at the field, not one per branch of the union.
    stack = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01", "tech_stack": 5}]})
    assert [e["loc"] for e in stack.json()["detail"]] == [["leads", 0, "tech_stack"]], stack.text
    flat_value = post({"leads": [{"lead_id": "a", "fields": {"City": [1]}}]})
    assert [e["loc"] for e in flat_value.json()["detail"]] == [["leads", 0, "fields", "City"]], flat_value.text
    # A flat model's `fields` sent to this CRM model would be ignored: the lead scored is not the one sent.
    with_fields = {"lead_id": "b", "created_at": "2025-01-01", "fields": {"City": "Pune"}}
    crm_fields = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01"}, with_fields]})
    assert [e["loc"] for e in crm_fields.json()["detail"]] == [["leads", 1, "fields"]], crm_fields.text
    alone = post({"leads": [with_fields]})  # one lead takes the direct path: it scored, ignoring `fields`
    assert [e["loc"] for e in alone.json()["detail"]] == [["leads", 0, "fields"]], alone.text
    # A lead sent twice exactly (a CRM retrying part of a batch) is answered twice, scored once; a
    # problem after it is named at its place as sent; a repeated id that differs is refused.
    lead = {"lead_id": "r1", "created_at": "2025-01-01",
            "activities": [{"occurred_at": "2025-02-01", "activity_type": "demo_request"}]}  # fmt: skip
    retried = post({"leads": [lead, lead, {"lead_id": "r2", "created_at": "2025-01-02"}], "as_of": "2025-06-01"})
    assert retried.status_code == 200 and [r["lead_id"] for r in retried.json()] == ["r1", "r1", "r2"], retried.text
    assert retried.json()[0] == retried.json()[1]
    late = post({"leads": [lead, lead, {"lead_id": "r3", "created_at": "2025-09-01"}], "as_of": "2025-06-01"})
    assert [e["loc"] for e in late.json()["detail"]] == [["leads", 2, "created_at"]], late.text
    differing = post({"leads": [lead, {**lead, "industry": "Retail"}], "as_of": "2025-06-01"})
    assert differing.status_code == 400 and "sent more than once, with other values" in differing.text, differing.text
    # Its activities in another order are the same lead; one more activity is not (it read "same values").
    two = [{"occurred_at": "2025-02-01", "activity_type": "demo_request"},
           {"occurred_at": "2025-03-01", "activity_type": "pricing_page"}]  # fmt: skip
    # ... and a moment written with another offset, or without one (UTC), is the same moment.
    shifted = [{**two[1], "occurred_at": "2025-02-28T19:00:00-05:00"}, two[0]]
    again = {**lead, "created_at": "2025-01-01T00:00:00Z", "activities": shifted}
    reordered = post({"leads": [{**lead, "activities": two}, again], "as_of": "2025-06-01"})
    assert reordered.status_code == 200 and len(reordered.json()) == 2, reordered.text
    more = post({"leads": [lead, {**lead, "activities": two}, {"lead_id": "r2", "created_at": "2025-01-02"},
                           {"lead_id": "r2", "created_at": "2025-01-02"}], "as_of": "2025-06-01"})  # fmt: skip
    assert [e["loc"] for e in more.json()["detail"]] == [["leads", 0, "lead_id"], ["leads", 1, "lead_id"]], more.text
    # Every problem of every lead in one answer, in the order sent (a missing created_at hid the others).
    many = post({"leads": [{"lead_id": "x", "created_at": "2027-01-01"}, {"lead_id": "y"},
                           {"lead_id": "z", "created_at": "2025-01-01", "fields": {"City": "Pune"}}],
                 "as_of": "2025-06-01"})  # fmt: skip
    assert [e["loc"] for e in many.json()["detail"]] == [
        ["leads", 0, "created_at"], ["leads", 1, "created_at"], ["leads", 2, "fields"]], many.text  # fmt: skip
    no_created = post({"leads": [{"lead_id": "a"}]})
    assert no_created.status_code == 400 and '["leads",0,"created_at"]' in no_created.text.replace(" ", "")
    ancient = post({"leads": [{"lead_id": "a", "created_at": "2025-01-01"}], "as_of": "0145-02-13T16:36:48"})
    assert ancient.status_code == 400 and "greater than or equal to 1900" in ancient.text
    wrong_json_types = {"lead_id": "a", "created_at": "2025-01-01", "employees": True, "do_not_contact": "yes"}
    as_number = post({"leads": [wrong_json_types]})
    assert as_number.status_code == 400 and "employees" in as_number.text and "do_not_contact" in as_number.text
    form = httpx.post(f"{url}/score", content=b"{}", headers={**_auth(), "content-type": "multipart/form-data"})
    assert form.status_code == 415
    packed = {**_auth(), "content-type": "application/json", "content-encoding": "gzip"}
    gzipped = httpx.post(f"{url}/score", content=gzip.compress(b'{"leads": []}'), headers=packed)
    assert gzipped.status_code == 415 and "uncompressed" in gzipped.text, gzipped.text
    # `?as_of=` scored as of now without a word.
    one = {"lead_id": "a", "created_at": "2024-06-01"}
    queried = httpx.post(f"{url}/score?as_of=2020-01-01", json={"leads": [one]}, headers=_auth())
    assert queried.status_code == 400 and [e["loc"] for e in queried.json()["detail"]] == [["query", "as_of"]]
    # JSON is UTF-8 whatever the label: Latin-1 bytes are refused as such (they were "invalid unicode
    # code point"), as is UTF-16 ("key must be a string"); UTF-8 under any label is read.
    text = json.dumps({"leads": [{**one, "country": "España"}]}, ensure_ascii=False)
    declared = {**_auth(), "content-type": "application/json; charset=iso-8859-1"}
    latin = httpx.post(f"{url}/score", content=text.encode("latin-1"), headers=declared)
    assert latin.status_code == 415 and latin.json()["error"] == (
        "send the body in UTF-8, as JSON is written (declared charset iso-8859-1)")  # fmt: skip
    assert httpx.post(f"{url}/score", content=text.encode(), headers=declared).status_code == 200
    wide = {**_auth(), "content-type": "application/json; charset=utf-16"}
    assert httpx.post(f"{url}/score", content=text.encode("utf-16-le"), headers=wide).status_code == 415
    unlabelled = {**_auth(), "content-type": "application/json"}
    assert httpx.post(f"{url}/score", content=text.encode("utf-16-le"), headers=unlabelled).status_code == 415
    for label in ("us-ascii", '"UTF-8"'):  # what some Java clients send
        labelled = {**_auth(), "content-type": f"application/json; charset={label}"}
        assert httpx.post(f"{url}/score", content=text.encode(), headers=labelled).status_code == 200, label
    too_many = post({"leads": [{"lead_id": str(i), "created_at": "2025-01-01"} for i in range(1001)]})
    assert too_many.status_code == 400
    ok_lead = {"lead_id": "a", "created_at": "2024-06-01"}
    future_lead = {"lead_id": "b", "created_at": "2030-01-01", "activities": [
        {"occurred_at": "2024-12-01", "activity_type": "web_visit"}]}  # fmt: skip
    future = post({"leads": [ok_lead, future_lead], "as_of": "2025-01-01"})
    assert future.status_code == 400, future.text
    assert "after the scoring moment (as_of): 2030-01-01 UTC after 2025-01-01 UTC" in future.text
    # One mistake, one error, pointing at the lead and field (its activity is not "of an unknown lead").
    assert [e["loc"] for e in future.json()["detail"]] == [["leads", 1, "created_at"]], future.text
    # The place once (it was "at leads.1.created_at: leads[1] (lead_id 'b'): ..."), then the lead's id.
    assert future.json()["detail"][0]["msg"].startswith("lead_id 'b': created_at is after"), future.text
    twice = post({"leads": [ok_lead, {**ok_lead, "industry": "Retail"}]})
    assert twice.status_code == 400 and ["leads", 0, "lead_id"] in [e["loc"] for e in twice.json()["detail"]]
    bad_json = httpx.post(
        f"{url}/score", content=b'{"leads": [', headers={**_auth(), "content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"].startswith("1 problem in the request: Invalid JSON")
    # The router's own answers are JSON {error} too, as the spec says of every error.
    no_route = httpx.get(f"{url}/scores", headers=_auth())
    assert no_route.status_code == 404 and "/scores" in no_route.json()["error"]
    wrong_method = httpx.get(f"{url}/score", headers=_auth())
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "GET is not allowed on /score: use POST"
    for route in ("model", "docs", "docs.json", "healthz"):  # an uptime monitor's HEAD got a 405 on the first two
        head = httpx.head(f"{url}/{route}", headers=_auth())
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0, route
        if route.startswith("docs"):  # the headers of the document GET answers (BentoML's own spec's were sent)
            assert head.headers["content-length"] == str(len(httpx.get(f"{url}/{route}", headers=_auth()).content))
    # A slash at the end is no route: a 307 to an http:// address built from the Host header sent
    # a retried POST's leads over plain HTTP behind a TLS proxy.
    for method, route in (("POST", "score/"), ("POST", "explain/"), ("GET", "model/"), ("POST", "reload/")):
        slashed = httpx.request(method, f"{url}/{route}", json={"leads": []}, headers=_auth())
        assert slashed.status_code == 404 and "location" not in slashed.headers, (route, slashed.headers)
        assert slashed.json()["error"] == f"no route {method} /{route}: the API is described at /docs.json"
    mounted = httpx.post(f"{url}/model", headers=_auth())  # a route of the mounted FastAPI app
    assert mounted.status_code == 405 and mounted.json()["error"] == "POST is not allowed on /model: use GET"
    unknown_values = post(
        {
            "leads": [
                {
                    "lead_id": "a",
                    "created_at": "2025-01-01",
                    "industry": "Space mining",
                    "activities": [{"occurred_at": "2025-01-02", "activity_type": "hologram_call"}],
                }
            ]
        }
    )
    assert unknown_values.status_code == 200  # unknown categories and activity types score normally
    # A CRM whose clock runs a little ahead stamps a lead it just created "in the future": scored as of
    # that stamp, alone or in a batch, when no as_of is sent; far ahead is still refused.
    soon = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=20)).isoformat()
    late = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)).isoformat()
    other = {"lead_id": "b", "created_at": "2025-01-01"}
    for leads in ([{"lead_id": "a", "created_at": soon}], [{"lead_id": "a", "created_at": soon}, other]):
        ahead = post({"leads": leads})
        assert ahead.status_code == 200 and len(ahead.json()) == len(leads), ahead.text
    far = post({"leads": [{"lead_id": "a", "created_at": late}, other]})
    assert far.status_code == 400 and "created_at is after the scoring moment" in far.text
    assert " UTC after " in far.text and "without an offset is UTC" in far.text  # bare times read as local
    # The moment of arrival to the second (it had microseconds); the value sent is shown as sent.
    assert re.search(r" after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC ", far.json()["detail"][0]["msg"]), far.text
    # An as_of after today read every lead as gone quiet for the days to come, without a word.
    beyond = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)).isoformat()
    for route, body in (("score", {"leads": [other], "as_of": beyond}), ("explain", {"lead": other, "as_of": beyond})):
        coming = httpx.post(f"{url}/{route}", json=body, headers=_auth())
        assert coming.status_code == 400 and [e["loc"] for e in coming.json()["detail"]] == [["as_of"]], coming.text
        assert "is after today (UTC; the clock here reads " in coming.json()["detail"][0]["msg"], coming.text
    # Today in a time zone ahead of UTC (tomorrow's date here, at midnight) and a clock a little ahead.
    tomorrow = str((pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)).date())
    for moment in (soon, tomorrow):
        assert post({"leads": [other], "as_of": moment}).status_code == 200, moment
    # A name repeated in one object was read as its last copy: an opted-out lead as one to call.
    opted_out = json.dumps({"leads": [other, {"lead_id": "c", "created_at": "2025-01-01", "do_not_contact": True}]})
    twice_named = opted_out.replace('"do_not_contact": true', '"do_not_contact": true, "do_not_contact": false')
    for route, body in (("score", twice_named), ("explain", '{"lead": {"lead_id": "a", "lead_id": "b"}}')):
        refused = httpx.post(f"{url}/{route}", content=body, headers={**_auth(), "content-type": "application/json"})
        where = ["leads", 1, "do_not_contact"] if route == "score" else ["lead", "lead_id"]
        assert refused.status_code == 400 and [e["loc"] for e in refused.json()["detail"]] == [where], refused.text
        assert "sent 2 times in one object" in refused.json()["error"], refused.text
    # A demo request an hour ago in Tokyo, sent as local time without its offset, reads as UTC and
    # eight hours ahead: not read, as any activity at or after the moment, and each answer says so.
    created = (pd.Timestamp.now(tz="Asia/Tokyo") - pd.Timedelta(days=10)).isoformat()
    local = (pd.Timestamp.now(tz="Asia/Tokyo") - pd.Timedelta(hours=1)).tz_localize(None).isoformat()
    tokyo = {"lead_id": "t1", "created_at": created, "activities": [
        {"occurred_at": local, "activity_type": "demo_request"},
        {"occurred_at": local + "+09:00", "activity_type": "pricing_page"}]}  # fmt: skip
    for body in ({"leads": [tokyo]}, {"leads": [tokyo, other]}):
        answered = post(body)
        assert (
            answered.status_code == 200
            and [a["activities_not_read"] for a in answered.json()] == [1, 0][: len(body["leads"])]
        ), answered.text
    explained = httpx.post(f"{url}/explain", json={"lead": tokyo}, headers=_auth())
    assert explained.status_code == 200 and explained.json()["activities_not_read"] == 1, explained.text
    before_both = post({"leads": [tokyo], "as_of": created})
    assert before_both.status_code == 200 and before_both.json()[0]["activities_not_read"] == 2, before_both.text
    # One sent twice (the same moment, type and value, the type spelt otherwise) counts once, as
    # batch scoring counts it; with another value it is another activity.
    twice = [{"occurred_at": local, "activity_type": "Demo Request"},
             {"occurred_at": local, "activity_type": "demo_request", "value": 45}]  # fmt: skip
    repeated = {**tokyo, "activities": [*tokyo["activities"], *twice]}
    again = post({"leads": [repeated], "as_of": created})
    assert again.status_code == 200 and again.json()[0]["activities_not_read"] == 3, again.text
    # A byte order mark, as .NET writes UTF-8 by default, read as "Invalid JSON at column 1".
    marked = b"\xef\xbb\xbf" + json.dumps({"leads": [other], "as_of": "2025-06-01"}).encode()
    with_bom = httpx.post(f"{url}/score", content=marked, headers={**_auth(), "content-type": "application/json"})
    assert with_bom.status_code == 200 and with_bom.json()[0]["lead_id"] == "b", with_bom.text


@pytest.mark.slow
def test_explain_model_and_docs(server, sample):
    url, _ = server
    leads, acts = sample
    one = _request(leads.head(1), acts)
    explained = httpx.post(f"{url}/explain", json={"lead": one["leads"][0], "as_of": AS_OF}, headers=_auth())
    assert explained.status_code == 200, explained.text
    body = explained.json()
    scored = httpx.post(f"{url}/score", json=one, headers=_auth()).json()[0]
    assert body["score"] == pytest.approx(scored["score"], abs=0.05)
    points = sum(c["points"] for c in body["contributions"])
    assert body["base_score"] + points == pytest.approx(body["score"], abs=0.1)
    info = httpx.get(f"{url}/model", headers=_auth()).json()
    assert info["name"] == "svc-model" and info["version"] == "1" and info["alias"] == "champion"
    ModelInfo.model_validate(info)
    assert pd.Timestamp(info["checked_at"]) >= pd.Timestamp(info["loaded_at"])  # the alias is as of that check
    assert info["grade_bands"] and info["criteria"]["sql"]["min_score"] > 0 and info["test_metrics"]["roc_auc"] > 0.5
    assert info["stages"] == ["disqualified", "nurture", "MQL", "SAL", "SQL"]
    spec = httpx.get(f"{url}/docs", headers=_auth()).json()
    assert "/score" in spec["paths"] and "/explain" in spec["paths"]
    # The API page at / is BentoML's Swagger UI without the tag manager its file loads.
    page = httpx.get(f"{url}/", headers=_auth())
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text and "googletagmanager" not in page.text
    assert httpx.get(f"{url}/static_content/swagger-ui-bundle.js", headers=_auth()).status_code == 200


@pytest.mark.slow
def test_logs_hold_no_keys_and_no_personal_data(server, sample):
    url, log = server
    leads, acts = sample
    httpx.post(f"{url}/score", json=_request(leads.head(5), acts), headers=_auth())
    httpx.post(
        f"{url}/score",
        json={"leads": [{"lead_id": "a", "email": "secret.person@example.com", "x": 1}]},
        headers=_auth(),
    )
    text = log.read_text()
    assert "key-one" not in text and "key-two" not in text
    for column in PII_COLUMNS:
        for value in leads.head(5).get(column, pd.Series(dtype=object)).dropna():
            assert str(value) not in text, column
    assert "secret.person@example.com" not in text
    # A client's mistake is logged as one, where and why (BentoML's "Exception on /score [POST]").
    assert "POST /score refused (the client's request): leads.0.x: extra_forbidden" in text, text[-2000:]


@pytest.mark.slow
def test_without_a_model_the_service_starts_and_says_why(tmp_path):
    process, url, _ = _start(f"sqlite:///{tmp_path / 'empty.db'}", None)
    try:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        scored = httpx.post(f"{url}/score", json={"leads": [{"lead_id": "a", "created_at": "2025-01-01"}]})
        assert scored.status_code == 503 and "leadscore train" in scored.text
        assert scored.headers["retry-after"] == "30"  # when the workers look for a champion again
        # Without keys, a page of another site whose name was rebound to 127.0.0.1 reads nothing.
        port = url.rsplit(":", 1)[1]
        rebound = httpx.get(f"{url}/model", headers={"Host": f"rebind.attacker.example:{port}"})
        assert rebound.status_code == 403 and "service.allowed_hosts" in rebound.json()["error"], rebound.text
        assert httpx.get(f"{url}/ui/digest", headers={"Host": "rebind.attacker.example"}).status_code == 403
        assert httpx.get(f"{url}/model", headers={"Host": f"localhost:{port}"}).status_code == 503  # on to the model
        assert httpx.get(f"{url}/healthz", headers={"Host": "rebind.attacker.example"}).status_code == 200  # probes
    finally:
        _stop(process)


@pytest.mark.slow
def test_without_a_model_callers_still_need_a_key(tmp_path, params_file):
    # One worker, so that every request below meets the same count of failed keys.
    params = params_file("keys.yaml", **{"service.failed_key_limit": 3, "service.workers": 1})
    process, url, log = _start(f"sqlite:///{tmp_path / 'empty.db'}", "k", serve_args=("--params", str(params)),
                               via_leadscore=True)  # fmt: skip
    try:
        started = log.read_text()
        assert "key 1 of LEADSCORE_API_KEYS is shorter than 16 characters" in started and "'k'" not in started
        assert httpx.post(f"{url}/score", json={"leads": []}).status_code == 401
        assert httpx.get(f"{url}/model", headers={"Authorization": "Bearer k"}).status_code == 503
        # The key is asked for before the body is read: 20 MB from a caller without one is not held.
        huge = b'{"leads": [' + b" " * 20_000_001 + b"]}"
        unkeyed = httpx.post(f"{url}/score", content=huge, headers={"content-type": "application/json"})
        assert unkeyed.status_code == 401, unkeyed.text
        # With keys, the key protects: any host name a proxy or a CRM uses is served.
        named = httpx.get(f"{url}/model", headers={"Authorization": "Bearer k", "Host": "scoring.example"})
        assert named.status_code == 503, named.text
        # A script trying keys: the pages' sign-in and the API count together, then even the
        # right key waits (a script would otherwise learn it is right).
        signed_in = httpx.post(f"{url}/ui/login", data={"key": "j", "next": "/ui/digest"})
        assert signed_in.status_code == 401, signed_in.text
        assert [httpx.get(f"{url}/model", headers={"Authorization": f"Bearer {guess}"}).status_code
                for guess in ("a", "b")] == [401, 401]  # fmt: skip
        held = httpx.get(f"{url}/model", headers={"Authorization": "Bearer k"})
        assert held.status_code == 429 and 1 <= int(held.headers["retry-after"]) <= 60, held.text
        assert "too many failed API keys or sign-ins" in held.json()["error"]
        assert httpx.post(f"{url}/ui/login", data={"key": "k", "next": "/ui/digest"}).status_code == 429
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open
    finally:
        _stop(process)


def test_failed_keys_are_counted_per_address_within_a_minute():
    from serving.guards import FailedKeyThrottle

    now = [1000.0]
    throttle = FailedKeyThrottle(limit=3, window=60.0, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("10.0.0.1")
        now[0] += 10
    assert throttle.wait_seconds("10.0.0.1") == 0  # two failures: still checked
    throttle.failed("10.0.0.1")  # the third, at 1020
    assert throttle.wait_seconds("10.0.0.1") == 40  # until the first (1000) leaves the window
    assert throttle.wait_seconds("10.0.0.2") == 0  # another address is not held
    now[0] = 1061
    assert throttle.wait_seconds("10.0.0.1") == 0  # the first failure is over a minute old
    assert FailedKeyThrottle(limit=0).wait_seconds("x") == 0
    # A sign-in's failure is taken back, not another one counted while it ran.
    signing = FailedKeyThrottle(limit=2, clock=lambda: now[0])
    counted = signing.failed("10.0.0.3")
    now[0] += 50
    signing.failed("10.0.0.3")  # a wrong key meanwhile
    signing.forgive("10.0.0.3", counted)  # the sign-in answered 303
    assert signing.failures["10.0.0.3"] == [now[0]]
    off = FailedKeyThrottle(limit=0)
    for _ in range(100):
        off.failed("x")
    assert off.wait_seconds("x") == 0 and not off.failures
    crowd = FailedKeyThrottle(limit=1, clock=lambda: now[0])
    crowd.MAX_ADDRESSES = 5
    for i in range(8):
        crowd.failed(f"10.0.1.{i}")
    assert len(crowd.failures) == 5 and "10.0.1.7" in crowd.failures and "10.0.1.0" not in crowd.failures


def test_only_tried_keys_count_as_failures(monkeypatch):
    """A caller with no key at all (a page opened signed out, a CRM not set up yet) guesses
    nothing; a wrong key or page token does."""
    import asyncio

    from serving.guards import ApiKeyGuard

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent = []

    async def send(message):
        sent.append(message)

    monkeypatch.setenv("LEADSCORE_API_KEYS", "a-key-long-enough-for-use")
    guard = ApiKeyGuard(app, failed_key_limit=2)

    def status(headers: list, path: str = "/model", address: str = "10.0.0.9") -> int:
        sent.clear()
        scope = {"type": "http", "path": path, "method": "GET", "headers": headers, "client": (address, 5000)}
        asyncio.run(guard(scope, None, send))
        return sent[0]["status"]

    assert [status([]) for _ in range(5)] == [401] * 5
    assert [status([], "/ui/digest") for _ in range(5)] == [303] * 5  # to the sign-in form
    # An expired page token is a rep's browser, not a guess: it counts nothing.
    assert [status([(b"cookie", b"leadscore_key=1.abc")], "/ui/digest") for _ in range(5)] == [303] * 5
    # A current one that no key made is one made from a guessed key (a keyed hash anyone can compute).
    from serving.guards import page_token

    guessed = b"leadscore_key=" + page_token(b"a-guess")
    assert [status([(b"cookie", guessed)], "/ui/digest") for _ in range(2)] == [303, 303]
    assert status([(b"authorization", b"Bearer a-key-long-enough-for-use")]) == 429
    assert [status([(b"authorization", b"Bearer nope")], address="10.0.0.6") for _ in range(3)] == [401, 401, 429]
    assert status([(b"authorization", b"Bearer a-key-long-enough-for-use")], address="10.0.0.8") == 200
    # An IPv6 host holds a whole /64: each of its addresses counts against it.
    guesses = [status([(b"authorization", b"Bearer nope")], address=f"2001:db8::{i}") for i in (1, 2, 3)]
    assert guesses == [401, 401, 429]
    assert status([(b"authorization", b"Bearer nope")], address="2001:db8:0:1::1") == 401  # another /64
    assert status([(b"authorization", b"Bearer nope")], address="::ffff:10.0.0.7") == 401  # IPv4, as 10.0.0.7
    assert status([(b"authorization", b"Bearer nope")], address="10.0.0.7") == 401
    assert status([(b"authorization", b"Bearer a-key-long-enough-for-use")], address="::ffff:10.0.0.7") == 429


def test_sign_ins_sent_at_once_are_counted_before_their_keys_are_checked(monkeypatch):
    """The login form checks keys in a thread: 1,000 sign-ins sent at once were all checked before
    the first failure came back to be counted."""
    import asyncio

    from serving.guards import ApiKeyGuard

    checked = []

    async def login(scope, receive, send):
        checked.append(scope)
        await asyncio.sleep(0.01)  # the key compared in a worker thread
        status = 303 if scope["headers"] == [(b"x-key", b"right")] else 401
        await send({"type": "http.response.start", "status": status, "headers": []})

    monkeypatch.setenv("LEADSCORE_API_KEYS", "a-key-long-enough-for-use")
    guard = ApiKeyGuard(login, failed_key_limit=3)
    answers = []

    async def send(message):
        if message["type"] == "http.response.start":
            answers.append(message["status"])

    async def sign_in(headers: list, address: str = "10.1.0.1") -> None:
        scope = {"type": "http", "path": "/ui/login", "method": "POST", "headers": headers, "client": (address, 1)}
        await guard(scope, None, send)

    async def at_once() -> None:
        await asyncio.gather(*(sign_in([]) for _ in range(20)))

    asyncio.run(at_once())
    assert len(checked) == 3 and sorted(answers) == [401] * 3 + [429] * 17
    # A sign-in that succeeds is not a failure once it has answered: one after another, they never
    # hold an address off (while `limit` are in flight at once, a further one waits).
    checked.clear()
    answers.clear()

    async def signed_in_at_once() -> None:
        await asyncio.gather(*(sign_in([(b"x-key", b"right")], "10.1.0.2") for _ in range(3)))

    asyncio.run(signed_in_at_once())
    asyncio.run(sign_in([(b"x-key", b"right")], "10.1.0.2"))
    assert answers == [303] * 4 and len(checked) == 4


@pytest.mark.slow
def test_oversized_bodies_are_refused_before_parsing(server):
    url, _ = server
    huge = b'{"leads": [' + b" " * 20_000_001 + b"]}"
    response = httpx.post(f"{url}/score", content=huge, headers={**_auth(), "content-type": "application/json"})
    assert response.status_code == 413

    def chunks(body: bytes, size: int = 1 << 20):
        yield from (body[i : i + size] for i in range(0, len(body), size))

    # Without Content-Length (chunked), the same limit and the same answer, not a 500.
    chunked = httpx.post(f"{url}/score", content=chunks(huge), headers={**_auth(), "content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert "request body over" in chunked.json()["error"]
    # A chunked body within the limit still reaches the handler whole.
    small = json.dumps({"leads": [{"lead_id": "c1", "created_at": AS_OF}], "as_of": AS_OF}).encode()
    ok = httpx.post(f"{url}/score", content=chunks(small, 7), headers={**_auth(), "content-type": "application/json"})
    assert ok.status_code == 200, ok.text


def test_committed_openapi_copy_is_current():
    from serving.service import SPEC

    committed = json.loads((PROJECT_ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(SPEC)), "run `leadscore openapi`"


def test_the_spec_is_valid_openapi_and_says_what_the_service_reads():
    """As an integrator's validator and client generator read it (they refused 3.1 content
    labelled 3.0, and a request schema without the null `as_of` the service accepts)."""
    from openapi_spec_validator import validate

    from serving.service import SPEC

    validate(SPEC)
    assert SPEC["openapi"] == "3.1.0"
    schemas = SPEC["components"]["schemas"]
    for path, name in (("/score", "ScoreRequest"), ("/explain", "ExplainRequest")):
        body = SPEC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}
        assert {"type": "null"} in schemas[name]["properties"]["as_of"]["anyOf"]
    assert {"type": "null"} in schemas["CrmLead"]["properties"]["activities"]["anyOf"]
    assert schemas["LeadScore"]["properties"]["stage"]["enum"] == ["disqualified", "nurture", "MQL", "SAL", "SQL"]
    problem = SPEC["paths"]["/score"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert problem["properties"]["detail"]["items"]["required"] == ["loc", "msg", "type"]
    reload = SPEC["paths"]["/reload"]["post"]["responses"]
    assert "503" in reload and "400" not in reload  # it reads no body
    model = SPEC["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert model == {"$ref": "#/components/schemas/ModelInfo"}  # named: a generated client's type is ModelInfo
    model = schemas["ModelInfo"]
    assert model["properties"]["kind"]["enum"] == ["crm", "flat"] and "grade_bands" in model["required"]
    explained = SPEC["paths"]["/explain"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert explained == {"$ref": "#/components/schemas/Explanation"} and "as_of" in schemas["Explanation"]["required"]
    # What a generated client is made of: a CRM lead needs created_at, a flat one takes only fields;
    # bodies are required; functions named by what they do; no model that nothing uses.
    assert {"lead_id", "created_at"} <= set(schemas["CrmLead"]["required"])
    assert schemas["FlatLead"]["properties"]["industry"]["anyOf"] == [{"type": "null"}]
    assert [branch["$ref"] for branch in schemas["Lead"]["anyOf"]] == [
        "#/components/schemas/CrmLead", "#/components/schemas/FlatLead"]  # fmt: skip
    operations = {(path, method): op for path, ops in SPEC["paths"].items() for method, op in ops.items()}
    assert operations["/score", "post"]["operationId"] == "score"
    assert operations["/model", "get"]["operationId"] == "getModel"
    assert all(op["requestBody"]["required"] for op in operations.values() if "requestBody" in op)
    assert "404" not in operations["/score", "post"]["responses"] and ("/docs.json", "get") in operations
    assert "text/plain" in operations["/readyz", "get"]["responses"]["503"]["content"]
    assert "InvalidArgument" not in schemas and "TaskStatusResponse" not in schemas
    assert "as_of" in schemas["LeadScore"]["required"]
    assert schemas["LeadScore"]["properties"]["probability"]["maximum"] == 1


@pytest.mark.slow
def test_service_follows_the_champion_and_rollback(champion_store, params_file, tmp_path, monkeypatch):
    """Promotion and rollback reach the running service without a restart; a version that
    cannot be loaded is refused while the live one keeps serving."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from training.register import promote

    store = tmp_path / "mlflow.db"
    shutil.copy(champion_store.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous_uri = mlflow.get_tracking_uri()
    # `promote`, and MLflow's check that a new version's source is a logged model, talk to the
    # store the process is set to, whatever the client's own URI.
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    first = client.get_model_version_by_alias(CHAMPION_NAME, "champion")
    second = str(client.create_model_version(CHAMPION_NAME, source=first.source, run_id=first.run_id).version)
    before = str(first.version)
    monkeypatch.setenv(
        "LEADSCORE_PARAMS", str(params_file("reload.yaml", **{"service.reload_seconds": 1, "service.workers": 1}))
    )
    process, url, log = _start(uri, None)
    try:
        live = lambda: httpx.get(f"{url}/model", timeout=10).json()["version"]  # noqa: E731
        assert live() == before
        promote(CHAMPION_NAME, second)
        _wait_for(lambda: live() == second)
        # The operator on call reads in the service's log when a promotion went live (logged just
        # after the swap a request may see first).
        _wait_for(lambda: f"now serving {CHAMPION_NAME} version {second} (was {before})" in log.read_text(),
                  what="the service did not log the promotion")  # fmt: skip

        cli = str(Path(sys.executable).parent / "leadscore")
        done = subprocess.run([cli, "rollback", "--model-name", CHAMPION_NAME], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"version {before} is @champion again" in done.stdout
        typo = subprocess.run([cli, "rollback", "--model-name", "svc-modle"], capture_output=True, text=True)
        assert typo.returncode == 2 and "no registered model named 'svc-modle'" in typo.stderr
        assert CHAMPION_NAME in typo.stderr  # the names there are, to spot the typo
        reloaded = httpx.post(f"{url}/reload", timeout=30).json()
        assert reloaded["live_version"] == before and live() == before

        broken = client.create_model_version(CHAMPION_NAME, source=str(tmp_path / "no-such-bundle"), run_id=None)
        promote(CHAMPION_NAME, str(broken.version))
        refused = httpx.post(f"{url}/reload", timeout=30)
        assert refused.status_code == 503  # a scheduler that promoted it learns it is not live
        assert refused.json()["live_version"] == before and "could not be loaded" in refused.json()["error"]
        body = {"leads": [{"lead_id": "x", "created_at": "2025-01-01"}], "as_of": AS_OF}
        assert httpx.post(f"{url}/score", json=body, timeout=30).json()[0]["model_version"] == before
        # Still served, but no longer the champion: /model must not call it that.
        info = httpx.get(f"{url}/model", timeout=30).json()
        assert (
            info["version"] == before and info["alias"] is None and "could not be loaded" in info["last_check_problem"]
        )
        assert "no longer @champion" in httpx.get(f"{url}/ui/model", timeout=30).text  # the page says so too
        # A rollback to a version that cannot be served (a newer release's bundle, a broken one) is refused.
        promote(CHAMPION_NAME, before)  # @previous is now the broken version
        back = subprocess.run([cli, "rollback", "--model-name", CHAMPION_NAME], capture_output=True, text=True)
        assert back.returncode == 2 and "not rolled back: @previous cannot be served" in back.stderr, back.stderr
        assert str(client.get_model_version_by_alias(CHAMPION_NAME, "champion").version) == before
    finally:
        _stop(process)
        mlflow.set_tracking_uri(previous_uri)


def _wait_for(condition, seconds: float = 30, what: str = "the service did not pick up the new champion") -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} in time")


def test_leadscore_serve_stops_with_its_workers_on_sigterm(store, tmp_path):
    """A supervisor (systemd, Docker) stops the service with SIGTERM to the process it started:
    the workers must go with it, not keep serving."""
    # --model-name names the model served, whatever the shell's LEADSCORE_MODEL_NAME says.
    process, url, _ = _start(store, None, log_dir=tmp_path, via_leadscore=True,
                             env_extra={"LEADSCORE_MODEL_NAME": "not-this-one"},
                             serve_args=("--model-name", CHAMPION_NAME))  # fmt: skip
    try:
        deadline = time.time() + 60
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200 and time.time() < deadline:
            time.sleep(0.5)
        assert httpx.get(f"{url}/model", timeout=10).json()["name"] == CHAMPION_NAME
        process.send_signal(signal.SIGTERM)  # that process only, not its group
        process.wait(timeout=30)
        time.sleep(1)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/livez", timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever a failed run left behind


def test_a_key_setting_with_no_key_in_it_refuses_requests_rather_than_letting_all_in(monkeypatch):
    """Started without `leadscore serve` (which refuses it), the guard fails closed."""
    import asyncio

    from serving.guards import ApiKeyGuard

    async def app(scope, receive, send):
        raise AssertionError("a request reached the service")

    sent = []

    async def send(message):
        sent.append(message)

    monkeypatch.setenv("LEADSCORE_API_KEYS", ",")
    guard = ApiKeyGuard(app)
    asyncio.run(guard({"type": "http", "path": "/model", "method": "GET", "headers": []}, None, send))
    assert sent[0]["status"] == 503 and b"holds no key" in sent[1]["body"]
    sent.clear()  # nor ready: an orchestrator would send traffic to a service that refuses it all
    asyncio.run(guard({"type": "http", "path": "/readyz", "method": "GET", "headers": []}, None, send))
    assert sent[0]["status"] == 503


def test_a_page_token_opens_the_pages_for_its_lifetime_only():
    """A token copied off a browser used to open the pages for as long as its key stayed set."""
    from serving.guards import CLOCK_SLACK_SECONDS, PAGE_TOKEN_SECONDS, page_token, page_token_matches

    keys, issued = (b"k1", b"k2"), 1_800_000_000
    token = page_token(b"k2", issued)
    assert page_token_matches(token, keys, now=issued + 60)
    assert page_token_matches(token, keys, now=issued + PAGE_TOKEN_SECONDS)
    assert not page_token_matches(token, keys, now=issued + PAGE_TOKEN_SECONDS + 1)  # expired
    assert not page_token_matches(token, keys, now=issued - CLOCK_SLACK_SECONDS - 1)  # from the future
    assert not page_token_matches(token, (b"k1",), now=issued)  # its key was removed
    moved = token.replace(b"%d." % issued, b"%d." % (issued + 3600))  # a later moment, the same hash
    for forged in (moved, b"k2", b"", b".", token.split(b".")[1], b"9" * 40 + b"." + token.split(b".")[1]):
        assert not page_token_matches(forged, keys, now=issued)


def test_websocket_paths_are_named_by_route_too():
    """uvicorn accepts a WebSocket upgrade on any path: BentoML's metrics and access log named it as sent."""
    import io
    import logging

    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from serving.guards import RealPath, name_requests_by_route

    name_requests_by_route()
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    access = logging.getLogger("bentoml.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)

    async def echo(request):
        return PlainTextResponse(request.url.path)

    app = Starlette(routes=[Route("/ui/leads/{lead_id:path}", echo)], middleware=[
        Middleware(RunnerTrafficMetricsMiddleware, namespace="t"), Middleware(AccessLogMiddleware), Middleware(RealPath)
    ])  # fmt: skip
    try:
        client = TestClient(app)
        assert client.get("/ui/leads/L-private-9").text == "/ui/leads/L-private-9"  # the app gets the real path
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws-made-up%0aFORGED-WS"):
            pass
        # Metrics turned off (to close the open /metrics): the access log alone still names routes.
        log_only = Starlette(routes=app.routes, middleware=[Middleware(AccessLogMiddleware), Middleware(RealPath)])
        assert TestClient(log_only).get("/ui/leads/L-private-9").text == "/ui/leads/L-private-9"
        TestClient(log_only).get("/ui/leads/L-private-9%0aFORGED")
    finally:
        access.removeHandler(handler)
        # BentoML's metrics client marks its process dead when collected, importing at interpreter
        # exit ("sys.meta_path is None"): a served worker's business, not a test process's.
        from bentoml._internal.configuration.containers import BentoMLContainer

        BentoMLContainer.metrics_client.get().multiproc = False
    assert "/ui/leads/{lead_id}" in written.getvalue() and "/{other}" in written.getvalue(), written.getvalue()
    assert "FORGED" not in written.getvalue() and "L-private-9" not in written.getvalue()


def test_an_unforeseen_failure_of_a_champion_check_is_a_failed_check_not_the_end_of_the_watcher(monkeypatch):
    """A bundle an older checkout misread raised a ValidationError out of the check: the
    watcher thread ended (that worker never looked for a champion again) and /reload was a 500."""
    import threading

    from serving import service

    monkeypatch.setitem(service.NOT_READY, "reason", "")  # a module global: restored afterwards
    monkeypatch.setattr(service, "local_database", lambda: None)
    monkeypatch.setattr(service, "champion_version", lambda name: "7")
    monkeypatch.setattr(service, "load_champion", lambda name, version: (_ for _ in ()).throw(KeyError("criteria")))
    worker = service.LeadScoring.inner.__new__(service.LeadScoring.inner)
    worker.model_name, worker.live, worker.not_ready, worker.not_champion = "m", None, "starting", False
    worker.last_check_problem, worker.checked_at, worker._reload_lock = "", "", threading.Lock()
    answer = worker.reload()
    assert answer["changed"] is False and answer["error"] == "checking @champion failed: KeyError: 'criteria'"
    assert worker.checked_at and worker.not_ready == answer["error"] and service.NOT_READY["reason"] == answer["error"]


def test_a_byte_order_mark_is_read_past_however_the_body_arrives_in_chunks():
    """A mark split across the first chunks reached the JSON parser ("Invalid JSON at column 1")."""
    import asyncio

    from serving.guards import JsonBodyGuard

    async def passed_on(chunks: list[bytes]) -> bytes:
        got = b""

        async def app(scope, receive, send):
            nonlocal got
            while True:
                message = await receive()
                got += message.get("body", b"")
                if not message.get("more_body"):
                    return

        messages = iter([{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                         for i, c in enumerate(chunks)])  # fmt: skip

        async def receive():
            return next(messages)

        async def send(message):
            raise AssertionError(f"the guard answered: {message}")

        scope = {"type": "http", "method": "POST", "path": "/score", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")]}  # fmt: skip
        await JsonBodyGuard(app, frozenset({"/score"}))(scope, receive, send)
        return got

    mark = b"\xef\xbb\xbf"
    for chunks in ([mark + b"{}"], [b"\xef", b"\xbb\xbf{}"], [b"", mark, b"{}"], [b"\xef\xbb", b"\xbf", b"{", b"}"]):
        assert asyncio.run(passed_on(chunks)) == b"{}", chunks
    for chunks in ([b"{}"], [b"{", b"}"], [b""]):  # no mark: as sent
        assert asyncio.run(passed_on(chunks)) == b"".join(chunks), chunks
    with pytest.raises(AssertionError, match="'status': 415"):  # part of a mark alone is no UTF-8
        asyncio.run(passed_on([b"\xef"]))


def test_without_keys_a_local_request_must_name_a_local_host_or_an_allowed_one(monkeypatch):
    import asyncio

    from serving.guards import HostGuard

    monkeypatch.delenv("LEADSCORE_API_KEYS", raising=False)

    def answer(host: bytes, server: str = "127.0.0.1", allowed: tuple[str, ...] = ()) -> int:
        sent: list[dict] = []

        async def app(scope, receive, send):
            sent.append({"type": "http.response.start", "status": 200})

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/model", "headers": [(b"host", host)],
                 "server": (server, 3000)}  # fmt: skip
        asyncio.run(HostGuard(app, allowed)(scope, None, send))
        return sent[0]["status"]

    for local in (b"127.0.0.1:3000", b"localhost", b"LOCALHOST:3000", b"[::1]:3000", b"app.localhost", b"127.0.0.2"):
        assert answer(local) == 200, local
    assert answer(b"rebind.example:3000") == 403 and answer(b"10.0.0.5:3000") == 403
    assert answer(b"Proxy.Internal:443", allowed=("proxy.internal",)) == 200  # service.allowed_hosts
    assert answer(b"proxy.internal", allowed=("Proxy.Internal:8080",)) == 200  # an entry written with its port
    assert answer(b"localhost.:3000") == 200
    # An IPv4 connection to a service listening on "::" arrives on ::ffff:127.0.0.1: still checked.
    assert answer(b"rebind.example", server="::ffff:127.0.0.1") == 403
    assert answer(b"crm-facing.example", server="10.0.0.5") == 200  # over the network: keys are its guard
    assert answer(b"rebind.example", server="::1") == 403
