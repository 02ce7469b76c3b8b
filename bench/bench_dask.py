"""Batch scoring with reasons: one process against a Dask LocalCluster, in one run.

Uses the champion of the project's store (run `make demo` first) on a generated export.
Run: .venv/bin/python -m bench.bench_dask [--leads 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from bench._common import machine

AS_OF = pd.Timestamp("2026-10-22")


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM: a started worker's own, not its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from distributed import Client, LocalCluster

    from features.synthetic import generate_crm
    from features.tracking import tracking_uri
    from serving.batch import read_table, score_batch
    from serving.dask_batch import score_on_dask
    from serving.scoring import ModelNotReady, load_champion

    print(f"bench_dask on {machine()}")
    try:
        model = load_champion("lead-scorer")
    except ModelNotReady as exc:
        sys.exit(f"{exc}: run `make demo` first")
    folder = Path(tempfile.mkdtemp(prefix="leadscore-dask-"))
    crm = generate_crm(args.leads, seed=21, start="2024-11-01", months=24)
    for name, frame in (("leads", crm.leads), ("activities", crm.activities)):
        frame.astype(object).where(frame.notna(), "").astype(str).to_parquet(folder / f"{name}.parquet", index=False)
    n_acts = len(crm.activities)
    print(f"export: {args.leads:,} leads, {n_acts:,} activities (parquet in {folder})")

    started = time.perf_counter()
    single = score_batch(model, read_table(folder / "leads.parquet"), read_table(folder / "activities.parquet"), AS_OF)
    one = time.perf_counter() - started
    print(f"one process: {len(single.scored):,} leads scored with reasons in {one:.1f} s "
          f"({len(single.scored) / one:,.0f}/s), peak {_peak_mb():,.0f} MB")  # fmt: skip

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    with Client(cluster) as client:
        client.run(lambda: None)
        started = time.perf_counter()
        run = score_on_dask(client, model, tracking_uri(), folder / "leads.parquet", folder / "activities.parquet",
                            folder / "out", AS_OF)  # fmt: skip
        seconds = time.perf_counter() - started
        peaks = client.run(_peak_mb)
    cluster.close()
    print(f"LocalCluster of {args.workers} single-threaded workers: {run.scored:,} leads in {seconds:.1f} s "
          f"({run.scored / seconds:,.0f}/s; {one / seconds:.2f}x the one process); "
          f"peak per worker {', '.join(f'{v:,.0f}' for v in peaks.values())} MB")  # fmt: skip


if __name__ == "__main__":
    main()
