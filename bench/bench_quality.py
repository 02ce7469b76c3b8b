"""Model quality: the embedded data against its Bayes AUC, and the shared CSVs against the
baselines trained on the same split, over several seeds (mean and spread).

Run: .venv/bin/python bench/bench_quality.py [--embedded-seeds 3] [--csv-seeds 5]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench._common import SHARED_DATA, machine, use_scratch_store

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

    params = load_params()
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
            }
        )
        r = rows[-1]
        print(
            f"embedded seed {r['seed']}: tuned {r['model']:.4f}  Bayes {r['bayes']:.4f}  "
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


def flat(name: str, path: Path, label: str, drop: list[str], seeds: int, leakage_action: str) -> None:
    from features.flat import FlatProfile
    from features.params import load_params
    from training.pipeline import prepare_flat, train_and_register

    if not path.is_file():
        print(f"{name}: SKIPPED, {path} not present")
        return
    rows = []
    for seed in range(seeds):
        params = load_params(**{"split.seed": seed, "tuning.seed": seed, "leakage.action": leakage_action})
        dataset = prepare_flat(path, FlatProfile(label=label, drop=drop), params)
        m = train_and_register(dataset, params, model_name=f"bench-{name}-{seed}")
        best = max(b["roc_auc"] for b in m["baselines"].values())
        rows.append(
            {
                "model": m["test"]["roc_auc"],
                "best_baseline": best,
                "ece": m["test"]["ece"],
                "floor": m["test"]["ece_noise_floor"],
                **{k: v["roc_auc"] for k, v in m["baselines"].items()},
                "flagged": m["leakage"]["flagged"],
            }
        )
        r = rows[-1]
        print(
            f"{name} seed {seed}: tuned {r['model']:.4f}  LR {r['logistic_regression']:.4f}  "
            f"LGBM default {r['lightgbm_default']:.4f}  gain {r['model'] - best:+.4f}  ECE {r['ece']:.4f} (noise floor {r['floor']:.4f})  "
            f"flagged {r['flagged']}",
            flush=True,
        )
    gains = [r["model"] - r["best_baseline"] for r in rows]
    print(
        f"{name.upper()} ({seeds} seeds, leakage.action={leakage_action}): "
        f"tuned {_spread([r['model'] for r in rows])}, LR {_spread([r['logistic_regression'] for r in rows])}, "
        f"LGBM default {_spread([r['lightgbm_default'] for r in rows])}, "
        f"gain over better baseline {_spread(gains)}, ECE {_spread([r['ece'] for r in rows])} "
        f"(noise floor of a perfectly calibrated model, same predictions: {_spread([r['floor'] for r in rows])})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embedded-seeds", type=int, default=3)
    parser.add_argument("--embedded-leads", type=int, default=50_000)
    parser.add_argument("--csv-seeds", type=int, default=5)
    parser.add_argument("--only", choices=["embedded", "csv", "leads"], default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    use_scratch_store()
    print(f"bench_quality on {machine()}")
    leads = SHARED_DATA / "x_education_leads" / "Leads.csv"
    shoppers = SHARED_DATA / "online_shoppers_intention" / "online_shoppers_intention.csv"
    if args.only in (None, "csv", "leads"):
        flat("leads_csv_leak_free", leads, "Converted", LEAKY_LEADS, args.csv_seeds, "exclude")
    if args.only in (None, "csv"):
        flat("shoppers_csv_default", shoppers, "Revenue", [], args.csv_seeds, "exclude")
        flat("shoppers_csv_all_columns", shoppers, "Revenue", [], args.csv_seeds, "warn")
    if args.only in (None, "embedded"):
        embedded(args.embedded_seeds, args.embedded_leads)


if __name__ == "__main__":
    main()
