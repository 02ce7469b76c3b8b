"""Scoring speed: exact SHAP methods side by side, batch throughput with and without reasons,
and the service's latency on loopback next to a trivial BentoML endpoint.

Uses the champion of the project's store (run `make demo` first) and the embedded data.
Run: .venv/bin/python -m bench.bench_scoring [--leads 1000000] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench._common import machine

ROOT = Path(__file__).resolve().parent.parent
AS_OF = pd.Timestamp("2026-10-22")


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def shap_methods(model, x: pd.DataFrame) -> None:
    import shap

    from serving.treeshap import shap_values

    booster = model.scorer.booster
    started = time.perf_counter()
    booster.predict(x, raw_score=True)
    predict = time.perf_counter() - started
    started = time.perf_counter()
    reference = booster.predict(x, pred_contrib=True)
    contrib = time.perf_counter() - started
    explainer = shap.TreeExplainer(booster)
    started = time.perf_counter()
    via_shap = explainer.shap_values(x)
    tree_explainer = time.perf_counter() - started
    shap_values(model.trees, x.head(10))
    started = time.perf_counter()
    fast = shap_values(model.trees, x)
    fast_seconds = time.perf_counter() - started
    via_shap = via_shap[1] if isinstance(via_shap, list) else via_shap
    print(
        f"exact SHAP on {len(x):,} leads ({model.scorer.booster.num_trees()} trees): "
        f"plain prediction {_rate(len(x), predict)}; "
        f"LightGBM pred_contrib {_rate(len(x), contrib)} ({contrib / predict:.0f}x prediction); "
        f"shap TreeExplainer {_rate(len(x), tree_explainer)} ({tree_explainer / predict:.0f}x); "
        f"fast TreeSHAP {_rate(len(x), fast_seconds)} ({fast_seconds / predict:.0f}x; {contrib / fast_seconds:.1f}x faster than pred_contrib)"
    )
    print(
        f"  max |fast - pred_contrib| = {np.abs(fast - reference).max():.2e}; "
        f"max |TreeExplainer - pred_contrib| = {np.abs(via_shap - reference[:, :-1]).max():.2e}"
    )


def batch(model, crm, leads_count: int) -> pd.DataFrame:
    from features.build import build_crm_features
    from serving.scoring import score_features

    leads = crm.leads.sample(leads_count, replace=True, random_state=0).reset_index(drop=True)
    started = time.perf_counter()
    features = build_crm_features(
        leads, crm.activities, AS_OF, model.feature_params, model.scorer.spec.settings["tech_vocabulary"]
    )
    built = time.perf_counter() - started
    context = leads[["email"]].reset_index(drop=True)
    moments = pd.Series([AS_OF] * leads_count)
    started = time.perf_counter()
    score_features(model, features, context, moments, with_reasons=False)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    score_features(model, features, context, moments)
    full = time.perf_counter() - started
    print(
        f"batch of {leads_count:,} leads: features {built:.1f} s; scoring with SHAP sub-scores and stages "
        f"{plain:.1f} s ({_rate(leads_count, plain)}); the same with reasons {full:.1f} s ({_rate(leads_count, full)})"
    )
    return features


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(target: str, env: dict) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    process = subprocess.Popen([bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise RuntimeError(f"{target} did not become ready")


def _latencies(client, url: str, body: dict, count: int) -> np.ndarray:
    for _ in range(10):
        client.post(url, json=body)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(url, json=body)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
    return np.array(times) * 1000


def lead_bodies(crm, count: int = 1000) -> list[dict]:
    """`count` leads of the export open before AS_OF, with their activities, as a CRM sends them."""
    leads = crm.leads[crm.leads["created_at"] < AS_OF].sample(count, random_state=1)
    acts = crm.activities[crm.activities["lead_id"].isin(leads["lead_id"]) & (crm.activities["occurred_at"] < AS_OF)]
    by_lead = {k: v for k, v in acts.groupby("lead_id")}
    body = []
    for lead in leads.to_dict(orient="records"):
        item = {"lead_id": lead["lead_id"], "created_at": lead["created_at"].isoformat()}
        for field in (
            "industry",
            "country",
            "seniority",
            "department",
            "lead_source",
            "budget",
            "authority",
            "need",
            "timeline",
            "email",
        ):
            if isinstance(lead.get(field), str):
                item[field] = lead[field]
        for field in ("employees", "annual_revenue"):
            if not np.isnan(lead.get(field, np.nan)):
                item[field] = lead[field]
        own = by_lead.get(lead["lead_id"])
        item["activities"] = (
            []
            if own is None
            else [
                {"occurred_at": a.occurred_at.isoformat(), "activity_type": a.activity_type} for a in own.itertuples()
            ]
        )
        body.append(item)
    return body


def latency(crm, requests: int) -> None:
    import httpx

    body = lead_bodies(crm)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("LEADSCORE_API_KEYS", None)
    trivial, trivial_url = _serve("bench.trivial_service:Trivial", env)
    service, service_url = _serve("serving.service:LeadScoring", env)
    try:
        with httpx.Client(timeout=60) as client:
            floor = _latencies(client, f"{trivial_url}/score", {"leads": body[:1]}, requests)
            one = _latencies(client, f"{service_url}/score", {"leads": body[:1], "as_of": AS_OF.isoformat()}, requests)
            hundred = _latencies(
                client,
                f"{service_url}/score",
                {"leads": body[:100], "as_of": AS_OF.isoformat()},
                max(requests // 5, 20),
            )
            thousand = _latencies(client, f"{service_url}/score", {"leads": body, "as_of": AS_OF.isoformat()}, 20)
            floor_thousand = _latencies(client, f"{trivial_url}/score", {"leads": body}, 20)
    finally:
        for process in (trivial, service):
            os.killpg(process.pid, signal.SIGTERM)
    p = lambda a, q: np.percentile(a, q)  # noqa: E731
    print(
        f"latency on loopback, sequential requests (ms): trivial BentoML endpoint p50 {p(floor, 50):.2f} p99 {p(floor, 99):.2f}; "
        f"/score 1 lead p50 {p(one, 50):.2f} p99 {p(one, 99):.2f} ({p(one, 50) / p(floor, 50):.1f}x the trivial p50); "
        f"100 leads p50 {p(hundred, 50):.1f} p99 {p(hundred, 99):.1f}; 1,000 leads p50 {p(thousand, 50):.0f} p99 {p(thousand, 99):.0f} "
        f"(the trivial endpoint with the same 1,000-lead body: p50 {p(floor_thousand, 50):.0f} p99 {p(floor_thousand, 99):.0f})"
    )
    request_parsing(body)


def request_parsing(body: list[dict]) -> None:
    """What BentoML's validation of a 1,000-lead body into `Lead` models costs, in process, and
    next to it the service's own reading of the body: the check for names repeated in one
    object and the count of activities at or after `as_of`."""
    import json

    from serving.guards import repeated_names
    from serving.service import LeadScoring, _not_read

    spec = LeadScoring.apis["score"].input_spec
    raw = json.dumps({"leads": body, "as_of": AS_OF.isoformat()}).encode()
    leads = spec.model_validate_json(raw).leads
    timings = {}
    for name, step in (
        ("json.loads", lambda: json.loads(raw)),
        ("validation into Lead models", lambda: spec.model_validate_json(raw)),
        ("repeated-name check", lambda: repeated_names(raw)),
        ("activities not read", lambda: _not_read(leads, AS_OF)),
    ):
        step()
        started = time.perf_counter()
        for _ in range(5):
            step()
        timings[name] = (time.perf_counter() - started) / 5 * 1000
    activities = sum(len(lead["activities"]) for lead in body)
    print(
        f"request body of {len(body):,} leads ({len(raw) / 1e6:.1f} MB, {activities:,} activities), in process: "
        + "; ".join(f"{name} {ms:.0f} ms" for name, ms in timings.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--parsing-only", action="store_true", help="only the request body's reading, in process")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from features.ingest import load_crm
    from features.spec import to_model_frame
    from serving.scoring import ModelNotReady, load_champion
    from training.pipeline import EMBEDDED_DIR

    print(f"bench_scoring on {machine()}")
    try:
        model = load_champion("lead-scorer")
    except ModelNotReady as exc:
        sys.exit(f"{exc}: run `make demo` first")
    crm = load_crm(EMBEDDED_DIR)
    if args.parsing_only:
        request_parsing(lead_bodies(crm))
        return
    features = batch(model, crm, args.leads)
    shap_methods(model, to_model_frame(features.head(20_000), model.scorer.spec))
    if not args.skip_latency:
        latency(crm, args.requests)


if __name__ == "__main__":
    main()
