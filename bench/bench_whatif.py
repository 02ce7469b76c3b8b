"""What would move a lead to SQL (`serving.whatif.path_to_sql`, on every lead page): time per
lead against scoring that lead once, on open leads of the embedded export and on one lead with
thousands of activities, with the peak memory it allocates (tracemalloc: NumPy and pandas
buffers included).

Uses the champion of the store in force (`MLFLOW_TRACKING_URI`, else the project's: run `make
demo` first) and the embedded data.
Run: .venv/bin/python -m bench.bench_whatif [--leads 40] [--heavy-activities 4960]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd

from bench._common import machine

AS_OF = pd.Timestamp("2026-10-22T12:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=40, help="open leads to time (a seeded sample)")
    parser.add_argument("--heavy-activities", type=int, default=4960, help="activities of the heavy lead")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from features.params import load_params
    from features.tracking import tracking_uri
    from serving.batch import score_batch
    from serving.scoring import load_champion
    from serving.whatif import path_to_sql
    from training.pipeline import ensure_embedded_data
    from training.progress import Reporter

    print(machine())
    params = load_params()
    model = load_champion(params.mlflow.model_name)
    print(f"model {model.name} v{model.version} from {tracking_uri()}; as of {AS_OF}")
    folder = ensure_embedded_data(params, Reporter())
    leads = pd.read_csv(folder / "leads.csv", dtype=str, keep_default_na=False)
    acts = pd.read_csv(folder / "activities.csv", dtype=str, keep_default_na=False)
    created = pd.to_datetime(leads["created_at"], errors="coerce", format="mixed")
    open_leads = leads[created < AS_OF - pd.Timedelta(days=1)]
    sample = open_leads.sample(args.leads, random_state=5)
    by_lead = dict(tuple(acts[acts["lead_id"].isin(sample["lead_id"])].groupby("lead_id")))
    empty = acts.head(0)

    what_if, once, kinds = [], [], {}
    path_to_sql(model, sample.head(1), by_lead.get(sample["lead_id"].iloc[0], empty), AS_OF)  # warm-up
    for _, row in sample.iterrows():
        lead = row.to_frame().T
        history = by_lead.get(row["lead_id"], empty)
        started = time.perf_counter()
        result = path_to_sql(model, lead, history, AS_OF)
        what_if.append(time.perf_counter() - started)
        started = time.perf_counter()
        score_batch(model, lead, history, AS_OF)
        once.append(time.perf_counter() - started)
        kind = "BANT answers scored" if result.bant_needed else result.message.split(":")[0].split(" ")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    what_if, once = np.array(what_if), np.array(once)
    print(
        f"{args.leads} open leads: path_to_sql mean {what_if.mean():.3f} s, max {what_if.max():.3f} s; "
        f"scoring the lead once mean {once.mean():.3f} s; ratio of means {what_if.mean() / once.mean():.1f}x; "
        f"answers: {kinds}"
    )

    heavy_id = sample["lead_id"].iloc[0]
    heavy = sample.head(1).assign(budget="", authority="", need="", timeline="")
    others = acts[pd.to_datetime(acts["occurred_at"], errors="coerce", format="mixed") < AS_OF - pd.Timedelta(days=1)]
    history = others.head(args.heavy_activities).assign(lead_id=heavy_id)
    started = time.perf_counter()
    result = path_to_sql(model, heavy, history, AS_OF)
    seconds = time.perf_counter() - started
    tracemalloc.start()  # a second run for the memory: tracing slows the first's timing
    path_to_sql(model, heavy, history, AS_OF)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    started = time.perf_counter()
    score_batch(model, heavy, history, AS_OF)
    single = time.perf_counter() - started
    print(
        f"one lead with {len(history):,} activities and no BANT answer: path_to_sql {seconds:.2f} s "
        f"({seconds / single:.1f}x scoring it once, {single:.2f} s); allocated at peak {peak:,.0f} MB; "
        f"{result.message[:90]}..."
    )


if __name__ == "__main__":
    main()
