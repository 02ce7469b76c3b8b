"""What the fit sub-score held at no activity costs: the profile's log-odds is one more
prediction per lead (LightGBM, on the model matrix with the engagement columns set to a
lead without activity), against the SHAP sums it replaced.

Batch scoring (sub-scores and stages, no reasons) and one lead at a time, each timed with
both ways alternately in one run, so the ratio holds on a noisy machine. Uses the champion of
the project's store (run `make demo` first) and the embedded data.
Run: .venv/bin/python -m bench.bench_subscores [--leads 200000] [--rounds 3] [--singles 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from bench._common import machine

AS_OF = pd.Timestamp("2026-10-22")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=2_000)
    args = parser.parse_args()

    from features.build import build_crm_features
    from features.ingest import load_crm
    from features.params import load_params
    from serving.scoring import LoadedModel, load_champion, score_features
    from training.pipeline import Reporter, ensure_embedded_data

    model = load_champion("lead-scorer")
    if model.idle_engagement is None:
        raise SystemExit("the champion predates the held fit sub-score: run `make demo` again")
    crm = load_crm(ensure_embedded_data(load_params(), Reporter()))
    leads = crm.leads[crm.leads["created_at"] < AS_OF].sample(args.leads, replace=True, random_state=0)
    leads = leads.reset_index(drop=True)
    vocabulary = model.scorer.spec.settings["tech_vocabulary"]
    features = build_crm_features(leads, crm.activities, AS_OF, model.feature_params, vocabulary)
    context = leads[["email"]]
    moments = pd.Series([AS_OF] * len(leads))
    # The same model read as one from before the held fit: its sub-scores from SHAP sums.
    shap_sums = LoadedModel(model.scorer, model.name, model.version, model.alias, model.trees)
    shap_sums.__dict__["idle_engagement"] = None  # a cached property: read from here first
    ways = {"held fit (new)": model, "SHAP sums (before)": shap_sums}
    print(f"{machine()}; {model.name} v{model.version}, {model.scorer.booster.num_trees()} trees")

    for with_reasons in (False, True):
        timings: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, loaded in ways.items():
                started = time.perf_counter()
                score_features(loaded, features, context, moments, with_reasons=with_reasons)
                timings[name].append(time.perf_counter() - started)
        new, old = (float(np.median(timings[name])) for name in ways)
        what = "with reasons (what `leadscore score` does)" if with_reasons else "sub-scores and stages, no reasons"
        print(
            f"batch of {len(leads):,} leads, {what}, median of {args.rounds}: "
            f"held fit {new:.2f} s, SHAP sums {old:.2f} s: {new / old:.2f}x"
        )

    one = features.head(1)
    singles: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.singles):
        for name, loaded in ways.items():
            started = time.perf_counter()
            score_features(loaded, one, context.head(1), moments.head(1))
            singles[name].append(time.perf_counter() - started)
    new, old = (np.percentile(np.array(singles[name]) * 1000, [50, 99]) for name in ways)
    print(
        f"one lead with reasons, {args.singles:,} times each, alternated: held fit median {new[0]:.2f} ms "
        f"(p99 {new[1]:.2f}), SHAP sums median {old[0]:.2f} ms (p99 {old[1]:.2f}): {new[0] / old[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
