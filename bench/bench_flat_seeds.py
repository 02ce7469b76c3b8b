"""Many-seed gain of the tuned model over the better baseline on a shared CSV: the product's
flat training path (leakage audit, spec, Optuna k-fold tuning with params.yaml, final fit,
both baselines) without MLflow logging or calibration, so that 20 seeds take minutes and a
variant can be compared with the product on the same seeds.

Run: .venv/bin/python -m bench.bench_flat_seeds [--data leads|shoppers] [--seeds 100-119]
         [--set tuning.search_space.max_depth=[2,6]] [--lgbm extra_trees=true] [--add-blank-count]

ROC AUC is of the raw model margins (calibration is monotone; `bench_quality` measures the
calibrated scores). Seeds 100 and up are outside `bench_quality`'s seeds 0-4.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from bench._common import machine, parse_overrides
from bench.bench_quality import LEADS_CSV, LEAKY_LEADS, SHOPPERS_CSV
from training.train import BASE_PARAMS

DATA = {
    "leads": (LEADS_CSV, "Converted", LEAKY_LEADS),
    "shoppers": (SHOPPERS_CSV, "Revenue", []),
}


def gain_on_seed(data: str, seed: int, overrides: dict, add_blank_count: bool) -> dict:
    """One holdout split and tuning run; the AUCs of the tuned model and both baselines."""
    from features.flat import FlatProfile
    from features.leakage import audit_leakage
    from features.params import load_params
    from features.spec import learn_spec, to_model_frame
    from training.baselines import fit_baselines
    from training.pipeline import prepare_flat
    from training.split import CV_FOLDS
    from training.train import fit_final, learned_settings
    from training.tune import tune_cv

    path, label, drop = DATA[data]
    params = load_params(**{"split.seed": seed, "tuning.seed": seed, **overrides})
    dataset = prepare_flat(path, FlatProfile(label=label, drop=drop), params)
    features = dataset.features.copy()
    part = dataset.split.assignment
    fit_rows, test_rows = part.isin(["train", "valid"]).to_numpy(), (part == "test").to_numpy()
    audit = audit_leakage(features[fit_rows], dataset.label[fit_rows], params.leakage.max_single_column_auc, seed=seed)
    excluded = tuple(audit.loc[audit["flagged"], "column"])
    if add_blank_count:
        # What-if: how complete the row is, a sum across columns that depth-2 trees cannot form.
        used = [c for c in features.columns if c not in excluded]
        features["blank_fields"] = features[used].isna().sum(axis=1).astype(float)
    spec = learn_spec(
        features[fit_rows], kind="flat", groups=dataset.groups, settings=dataset.settings, exclude=excluded
    )
    x_fit, x_test = to_model_frame(features[fit_rows], spec), to_model_frame(features[test_rows], spec)
    y_fit, y_test = dataset.label[fit_rows].to_numpy(), dataset.label[test_rows].to_numpy()
    tuning = tune_cv(x_fit, y_fit, params.tuning, folds=CV_FOLDS, fixed=learned_settings(x_fit, y_fit, params.tuning))
    booster = fit_final(x_fit, y_fit, tuning.best_params, n_estimators=tuning.best_iteration, seed=seed)
    baselines = fit_baselines(x_fit, y_fit, x_test, list(spec.categories), seed)
    return {
        "tuned": roc_auc_score(y_test, booster.predict(x_test, raw_score=True)),
        **{name: roc_auc_score(y_test, p) for name, p in baselines.items()},
        "trials": tuning.trials,
        "pruned": tuning.pruned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), default="leads")
    parser.add_argument("--seeds", default="100-119", help="a seed, or first-last inclusive")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a params.yaml override")
    parser.add_argument(
        "--lgbm", action="append", default=[], metavar="KEY=JSON", help="a fixed LightGBM parameter of the tuned model"
    )
    parser.add_argument("--add-blank-count", action="store_true", help="add a blank-fields-per-row feature")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    path = DATA[args.data][0]
    if not path.is_file():
        print(f"{args.data}: SKIPPED, {path} not present")
        return
    try:
        overrides, fixed = parse_overrides(args.set), parse_overrides(args.lgbm)
    except ValueError:
        parser.error("--set and --lgbm take KEY=JSON, e.g. --lgbm extra_trees=true")
    # What-if: the tuned model's trials and final fit start from these (the baselines do not).
    BASE_PARAMS.update(fixed)
    try:
        first, _, last = args.seeds.partition("-")
        first, last = int(first), int(last or first)
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected a seed (100) or a range (100-119)")
    from features.params import load_params

    tuning = load_params(**overrides).tuning
    print(
        f"bench_flat_seeds on {machine()}: {args.data}, overrides {overrides or 'none'}, "
        f"tuning.fixed {tuning.fixed or 'none'}, monotone at |Spearman| >= {tuning.monotone_min_abs_correlation}, "
        f"--lgbm {fixed or 'none'}, blank count {args.add_blank_count}"
    )
    gains = []
    for seed in range(first, last + 1):
        started = time.perf_counter()
        r = gain_on_seed(args.data, seed, overrides, args.add_blank_count)
        better = max(("logistic_regression", "lightgbm_default"), key=r.get)
        gains.append(r["tuned"] - r[better])
        print(
            f"seed {seed}: tuned {r['tuned']:.4f}  LR {r['logistic_regression']:.4f}  "
            f"LGBM default {r['lightgbm_default']:.4f}  gain {gains[-1]:+.4f} over {better}  "
            f"trials {r['trials']} ({r['pruned']} pruned)  {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    print(
        f"GAIN over the better baseline, {len(gains)} seeds: {np.mean(gains):+.4f} ± {np.std(gains):.4f} "
        f"(standard error {np.std(gains) / np.sqrt(len(gains)):.4f}; {sum(g >= 0.005 for g in gains)} of {len(gains)} seeds at +0.005 or more)"
    )


if __name__ == "__main__":
    main()
