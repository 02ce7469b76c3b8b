"""Speed and memory of the data stages: generation, loading, feature building, and the whole
`leadscore train` run of `make demo`. Each stage runs in a fresh process so its peak
memory is its own.

Run: .venv/bin/python -m bench.bench_features [--skip-train]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine, use_scratch_store


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _generate(out: str, leads: int, min_activities: int) -> dict:
    import numpy as np
    import pandas as pd

    from features.synthetic import generate_crm, write_crm

    started = time.perf_counter()
    crm = generate_crm(leads, seed=7)
    generated = time.perf_counter() - started
    activities = crm.activities
    if len(activities) < min_activities:
        # Top up to the target size with copies of real rows shifted by up to a week.
        rng = np.random.default_rng(0)
        extra = activities.sample(min_activities - len(activities), replace=True, random_state=0).copy()
        shifted = pd.to_datetime(extra["occurred_at"], errors="coerce") - pd.to_timedelta(
            rng.random(len(extra)) * 7, unit="D"
        )
        extra["occurred_at"] = shifted.dt.strftime("%Y-%m-%dT%H:%M:%S").fillna("not recorded")
        activities = pd.concat([activities, extra], ignore_index=True)
    crm = type(crm)(crm.leads, activities, crm.outcomes, crm.truth)
    write_crm(crm, out)
    return {"seconds": generated, "rows": len(crm.activities), "leads": len(crm.leads), "peak_mb": _peak_mb()}


def _load(folder: str) -> dict:
    from features.ingest import load_crm

    started = time.perf_counter()
    crm = load_crm(folder, ("", "n/a", "-", "select"))
    return {"seconds": time.perf_counter() - started, "rows": len(crm.activities), "peak_mb": _peak_mb()}


def _features(folder: str) -> dict:
    import pandas as pd

    from features.build import build_crm_features
    from features.fit import learn_tech_vocabulary
    from features.ingest import load_crm
    from features.params import load_params
    from training.examples import build_examples

    params = load_params()
    crm = load_crm(folder, params.flat.missing_tokens)
    base = _peak_mb()
    vocabulary = learn_tech_vocabulary(crm.leads, params.features.tech_stack_top_k)
    started = time.perf_counter()
    scored = build_crm_features(crm.leads, crm.activities, crm.export_end, params.features, vocabulary)
    one_moment = time.perf_counter() - started
    started = time.perf_counter()
    examples = build_examples(crm.leads, crm.outcomes, crm.export_end, params.features)
    rows = crm.leads.set_index("lead_id").loc[examples["lead_id"]].reset_index()
    training = build_crm_features(rows, crm.activities, examples["as_of"], params.features, vocabulary)
    snapshots = time.perf_counter() - started
    del scored, training
    return {
        "leads": len(crm.leads),
        "activities": len(crm.activities),
        "one_moment_seconds": one_moment,
        "examples": len(examples),
        "snapshots_seconds": snapshots,
        "peak_mb": _peak_mb(),
        "loaded_mb": base,
        "as_of": str(pd.Timestamp(crm.export_end)),
    }


def _in_child(func, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(func, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-train", action="store_true", help="skip the whole training run")
    args = parser.parse_args()
    print(f"bench_features on {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "50k"), Path(tmp, "100k")
        r = _in_child(_generate, str(small), 50_000, 0)
        print(
            f"generate 50,000 leads: {r['seconds']:.1f} s simulation, {r['rows']:,} activities, peak {r['peak_mb']:.0f} MB"
        )
        r = _in_child(_generate, str(large), 100_000, 2_000_000)
        print(f"generate 100,000 leads, topped up to {r['rows']:,} activities: peak {r['peak_mb']:.0f} MB")
        r = _in_child(_load, str(large))
        print(
            f"load + validate + quarantine (100k leads, {r['rows']:,} activities): {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MB"
        )
        r = _in_child(_features, str(large))
        print(
            f"features for {r['leads']:,} leads and {r['activities']:,} activities as of one moment: "
            f"{r['one_moment_seconds']:.2f} s"
        )
        print(
            f"features for all {r['examples']:,} training snapshots (same data): {r['snapshots_seconds']:.2f} s; "
            f"peak {r['peak_mb']:.0f} MB (of which {r['loaded_mb']:.0f} MB after loading)"
        )
    if not args.skip_train:
        store = use_scratch_store()
        cli = str(Path(sys.executable).parent / "leadscore")
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-v", cli, "train", "--metrics-out", str(store / "m.json")],
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})  # fmt: skip
        wall = time.perf_counter() - started
        peak = [line for line in done.stderr.splitlines() if "Maximum resident" in line]
        print(f"leadscore train on the embedded data (make demo after install): {wall:.0f} s wall, exit {done.returncode}, "
              f"{peak[0].strip() if peak else ''}")  # fmt: skip
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])


if __name__ == "__main__":
    main()
