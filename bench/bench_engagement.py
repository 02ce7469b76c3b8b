"""Does one more activity ever lower a lead's score? For open leads of the embedded export,
each is scored as of a moment, then again with one activity of a type added some time before it
(an hour, 20 days and 45 days by default); printed per type: how many leads score lower, the
largest fall and the mean change in points.

The embedded data's true conversion probability never falls with a positive activity (see
`features.synthetic`), so a fall is the model's, not the buyers'. Uses the champion of the
project's store (run `make demo` first), or --model-name in MLFLOW_TRACKING_URI's store.
Run: .venv/bin/python -m bench.bench_engagement [--leads 2000] [--model-name lead-scorer] [--hours-before 1,480]
"""

from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd

from bench._common import machine
from features.schema import ACTIVITY_TYPES

AS_OF = pd.Timestamp("2026-10-22")
POSITIVE_TYPES = tuple(kind for kind in ACTIVITY_TYPES if kind != "unsubscribe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=2000, help="open leads sampled (default 2000)")
    parser.add_argument("--model-name", default="lead-scorer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hours-before", default="1,480,1080", help="when the activity is added, hours before")
    args = parser.parse_args()
    try:
        offsets = [pd.Timedelta(hours=float(h)) for h in args.hours_before.split(",")]
    except ValueError:
        parser.error("--hours-before takes hours separated by commas, e.g. 1,480")
    warnings.filterwarnings("ignore")
    from serving.batch import score_batch
    from serving.scoring import ModelNotReady, load_champion
    from training.pipeline import EMBEDDED_DIR

    try:
        model = load_champion(args.model_name)
    except ModelNotReady as exc:
        sys.exit(f"{exc}: run `make demo` first")
    read = {"dtype": str, "keep_default_na": False}
    leads = pd.read_csv(EMBEDDED_DIR / "leads.csv", **read)
    activities = pd.read_csv(EMBEDDED_DIR / "activities.csv", **read)
    outcomes = pd.read_csv(EMBEDDED_DIR / "outcomes.csv", **read)
    open_ids = set(outcomes.loc[outcomes["status"] == "open", "lead_id"])
    sample = leads[leads["lead_id"].isin(open_ids)].sample(args.leads, random_state=args.seed).reset_index(drop=True)
    theirs = activities[activities["lead_id"].isin(set(sample["lead_id"]))].reset_index(drop=True)
    base = score_batch(model, sample, theirs, AS_OF).scored.set_index("lead_id")
    constrained = "constrained" if "monotone_constraints" in model.scorer.booster.params else "not constrained"
    print(f"bench_engagement on {machine()}: {args.model_name} v{model.version} (engagement {constrained}), "
          f"{len(base):,} open leads as of {AS_OF.date()}")  # fmt: skip
    for before in offsets:
        print(f"one activity added {before} before")
        print(f"  {'activity added':18s} {'leads lower':>12s} {'largest fall':>13s} {'mean change':>12s}")
        for kind in (*POSITIVE_TYPES, "unsubscribe"):
            added = pd.DataFrame({column: "" for column in activities.columns}, index=sample.index)
            added["lead_id"] = sample["lead_id"]
            added["activity_type"] = kind
            added["occurred_at"] = (AS_OF - before).strftime("%Y-%m-%dT%H:%M:%SZ")
            more = score_batch(model, sample, pd.concat([theirs, added], ignore_index=True), AS_OF).scored
            more = more.set_index("lead_id")
            lower = int((more["probability"] - base["probability"] < -1e-12).sum())
            points = more["score"] - base["score"]
            print(f"  {kind:18s} {lower:>12,d} {min(points.min(), 0):>+13.1f} {points.mean():>+12.2f}", flush=True)


if __name__ == "__main__":
    main()
