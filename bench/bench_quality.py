"""Model quality: the embedded data against its Bayes AUC, and the shared CSVs against the
baselines trained on the same split, over several seeds (mean and spread).

Run: .venv/bin/python -m bench.bench_quality [--embedded-seeds 3] [--csv-seeds 5] [--set KEY=JSON ...]
     .venv/bin/python -m bench.bench_quality --only leads --csv-scheme folds [--folds 5 --repeats 2]

The shared CSVs are measured either on stratified 20% holdouts, one per seed (`holdout`), or
by outer k-fold cross-validation repeated with reshuffles (`folds`): every row is a test row
once per repeat, so the calibration error is also measured on all of them at once (its noise
floor on about 1,800 holdout rows is itself about 0.02).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench._common import SHARED_DATA, machine, parse_overrides, use_scratch_store

# params.yaml overrides of every run (`--set`), e.g. {"tuning.engagement_monotone": false}.
OVERRIDES: dict = {}
LEADS_CSV = SHARED_DATA / "x_education_leads" / "Leads.csv"
SHOPPERS_CSV = SHARED_DATA / "online_shoppers_intention" / "online_shoppers_intention.csv"
LEAKY_LEADS = [
    "Tags",
    "Lead Quality",
    "Lead Profile",
    "Asymmetrique Activity Index",
    "Asymmetrique Profile Index",
    "Asymmetrique Activity Score",
    "Asymmetrique Profile Score",
    "Last Notable Activity",
]


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def embedded(seeds: int, leads: int) -> None:
    from features.params import load_params
    from features.synthetic import generate_crm, write_crm
    from training.pipeline import prepare_crm, train_and_register

    params = load_params(**OVERRIDES)
    rows = []
    for seed in range(seeds):
        folder = Path(tempfile.mkdtemp(prefix="embedded-"))
        write_crm(generate_crm(leads, seed=params.data.embedded_seed + seed), folder)
        started = time.perf_counter()
        dataset = prepare_crm(folder, params)
        m = train_and_register(dataset, params, model_name=f"bench-embedded-{seed}")
        rows.append(
            {
                "seed": params.data.embedded_seed + seed,
                "model": m["test"]["roc_auc"],
                "bayes": m["bayes"]["roc_auc"],
                "lr": m["baselines"]["logistic_regression"]["roc_auc"],
                "lgbm": m["baselines"]["lightgbm_default"]["roc_auc"],
                "ece": m["test"]["ece"],
                "floor": m["test"]["ece_noise_floor"],
                "seconds": time.perf_counter() - started,
                "trials": m["tuning"]["trials"],
            }
        )
        r = rows[-1]
        print(
            f"embedded seed {r['seed']} ({r['trials']} trials): tuned {r['model']:.4f}  Bayes {r['bayes']:.4f}  "
            f"gap {r['bayes'] - r['model']:.4f}"
            f"  LR {r['lr']:.4f}  LGBM default {r['lgbm']:.4f}  ECE {r['ece']:.4f} (floor {r['floor']:.4f})  ({r['seconds']:.0f} s)",
            flush=True,
        )
    gaps = [r["bayes"] - r["model"] for r in rows]
    print(
        f"EMBEDDED ({leads:,} leads, {seeds} seeds): tuned {_spread([r['model'] for r in rows])}, "
        f"Bayes {_spread([r['bayes'] for r in rows])}, gap to Bayes {_spread(gaps)}, "
        f"ECE {_spread([r['ece'] for r in rows])} (noise floor {_spread([r['floor'] for r in rows])})"
    )


def _report_run(label: str, m: dict) -> dict:
    """Print one training run's figures and return them as a row."""
    row = {
        "model": m["test"]["roc_auc"],
        "best_baseline": max(b["roc_auc"] for b in m["baselines"].values()),
        "ece": m["test"]["ece"],
        "floor": m["test"]["ece_noise_floor"],
        **{k: v["roc_auc"] for k, v in m["baselines"].items()},
    }
    print(
        f"{label}: tuned {row['model']:.4f}  LR {row['logistic_regression']:.4f}  "
        f"LGBM default {row['lightgbm_default']:.4f}  gain {row['model'] - row['best_baseline']:+.4f}  "
        f"ECE {row['ece']:.4f} (noise floor {row['floor']:.4f})  flagged {m['leakage']['flagged']}",
        flush=True,
    )
    return row


def flat(name: str, path: Path, label: str, drop: list[str], seeds: int, leakage_action: str) -> None:
    from features.flat import FlatProfile
    from features.params import load_params
    from training.pipeline import prepare_flat, train_and_register

    if not path.is_file():
        print(f"{name}: SKIPPED, {path} not present")
        return
    rows = []
    for seed in range(seeds):
        params = load_params(**{"split.seed": seed, "tuning.seed": seed, "leakage.action": leakage_action, **OVERRIDES})
        dataset = prepare_flat(path, FlatProfile(label=label, drop=drop), params)
        m = train_and_register(dataset, params, model_name=f"bench-{name}-{seed}")
        rows.append(_report_run(f"{name} seed {seed}", m))
    gains = [r["model"] - r["best_baseline"] for r in rows]
    print(
        f"{name.upper()} ({seeds} seeds, leakage.action={leakage_action}): "
        f"tuned {_spread([r['model'] for r in rows])}, LR {_spread([r['logistic_regression'] for r in rows])}, "
        f"LGBM default {_spread([r['lightgbm_default'] for r in rows])}, "
        f"gain over better baseline {_spread(gains)}, ECE {_spread([r['ece'] for r in rows])} "
        f"(noise floor of a perfectly calibrated model, same predictions: {_spread([r['floor'] for r in rows])})"
    )


def flat_folds(
    name: str, path: Path, label: str, drop: list[str], folds: int, repeats: int, leakage_action: str
) -> None:
    """Outer k-fold cross-validation: each fold is the test set of one full training run."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from features.flat import FlatProfile
    from features.params import load_params
    from training.evaluate import ece_noise_floor, expected_calibration_error
    from training.pipeline import prepare_flat, train_and_register
    from training.split import SplitReport

    if not path.is_file():
        print(f"{name}: SKIPPED, {path} not present")
        return
    params = load_params(**{"leakage.action": leakage_action, **OVERRIDES})
    dataset = prepare_flat(path, FlatProfile(label=label, drop=drop), params)
    y = dataset.label.to_numpy()
    bins = params.calibration.ece_bins
    rows, pooled = [], []
    for repeat in range(repeats):
        probability = np.full(len(y), np.nan)
        outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=repeat)
        for fold, (rest, test) in enumerate(outer.split(np.zeros(len(y)), y)):
            seed = repeat * folds + fold
            # Train and validation rows are tuned and calibrated together by inner k-fold
            # cross-validation; the split into the two only has to hold both classes.
            train, valid = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=seed)
            part = pd.Series("", index=dataset.label.index, dtype=object)
            part.iloc[train], part.iloc[valid], part.iloc[test] = "train", "valid", "test"
            split = SplitReport(part, f"outer fold {fold + 1}/{folds}, repeat {repeat + 1}", {}, 0, by_time=False)

            def keep(
                scores: np.ndarray, labels: np.ndarray, into: np.ndarray = probability, rows: np.ndarray = test
            ) -> None:
                into[rows] = scores

            run_params = load_params(
                **{"split.seed": seed, "tuning.seed": seed, "leakage.action": leakage_action, **OVERRIDES}
            )
            m = train_and_register(
                dataclasses.replace(dataset, split=split),
                run_params,
                model_name=f"bench-{name}-folds",
                on_test_scores=keep,
            )
            rows.append(_report_run(f"{name} repeat {repeat} fold {fold}", m))
        pooled.append((expected_calibration_error(y, probability, bins), ece_noise_floor(probability, bins)))
        print(
            f"{name} repeat {repeat}: ECE of all {len(y):,} out-of-fold probabilities {pooled[-1][0]:.4f} "
            f"(noise floor {pooled[-1][1]:.4f})",
            flush=True,
        )
    gains = [r["model"] - r["best_baseline"] for r in rows]
    print(
        f"{name.upper()} ({folds}-fold x {repeats}, {len(rows)} runs, leakage.action={leakage_action}): "
        f"tuned {_spread([r['model'] for r in rows])}, LR {_spread([r['logistic_regression'] for r in rows])}, "
        f"LGBM default {_spread([r['lightgbm_default'] for r in rows])}, "
        f"gain over better baseline {_spread(gains)} (standard error {np.std(gains) / np.sqrt(len(gains)):.4f}), "
        f"ECE per fold {_spread([r['ece'] for r in rows])}, "
        f"ECE of all out-of-fold probabilities {_spread([e for e, _ in pooled])} "
        f"(noise floor {_spread([f for _, f in pooled])})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embedded-seeds", type=int, default=3)
    parser.add_argument("--embedded-leads", type=int, default=50_000)
    parser.add_argument("--csv-seeds", type=int, default=5)
    parser.add_argument("--only", choices=["embedded", "csv", "leads", "shoppers"], default=None)
    parser.add_argument("--csv-scheme", choices=["holdout", "folds"], default="holdout")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a params.yaml override")
    args = parser.parse_args()
    try:
        OVERRIDES.update(parse_overrides(args.set))
    except ValueError:
        parser.error("--set takes KEY=JSON, e.g. --set tuning.engagement_monotone=false")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    use_scratch_store()
    print(f"bench_quality on {machine()}, overrides {OVERRIDES or 'none'}")
    leads, shoppers = LEADS_CSV, SHOPPERS_CSV

    def measure(name: str, path: Path, label: str, drop: list[str], leakage_action: str) -> None:
        if args.csv_scheme == "folds":
            flat_folds(name, path, label, drop, args.folds, args.repeats, leakage_action)
        else:
            flat(name, path, label, drop, args.csv_seeds, leakage_action)

    if args.only in (None, "csv", "leads"):
        measure("leads_csv_leak_free", leads, "Converted", LEAKY_LEADS, "exclude")
    if args.only in (None, "csv", "shoppers"):
        measure("shoppers_csv_default", shoppers, "Revenue", [], "exclude")
    if args.only in (None, "csv"):
        measure("shoppers_csv_all_columns", shoppers, "Revenue", [], "warn")
    if args.only in (None, "embedded"):
        embedded(args.embedded_seeds, args.embedded_leads)


if __name__ == "__main__":
    main()
