"""Features and batch scoring with reasons: one process against a Dask LocalCluster, in one
run; then, with --large-leads, an export whose activity table is larger than one worker's
memory limit, built and scored on the cluster with the peak memory of each worker.

Uses the champion of the project's store (run `make demo` first) on generated exports.
Run: .venv/bin/python -m bench.bench_dask [--leads 100000] [--workers 2]
         [--large-leads 400000 --memory-limit 1.5GB]
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


def _export(leads: int, seed: int) -> tuple[Path, int, float]:
    """A generated export as text-cell parquet, each table both as one file (the one-process
    path) and as a folder of 50,000-row files (what a partitioned export looks like); its
    activity count and in-memory size (MB)."""
    from features.synthetic import generate_crm

    folder = Path(tempfile.mkdtemp(prefix="leadscore-dask-"))
    crm = generate_crm(leads, seed=seed, start="2024-11-01", months=24)
    size = 0.0
    for name, frame in (("leads", crm.leads), ("activities", crm.activities)):
        text = frame.astype(object).where(frame.notna(), "").astype(str)
        text.to_parquet(folder / f"{name}.parquet", index=False)
        (folder / name).mkdir()
        for number, start in enumerate(range(0, len(text), 50_000)):
            text.iloc[start : start + 50_000].to_parquet(folder / name / f"part-{number:04d}.parquet", index=False)
        if name == "activities":
            size = text.memory_usage(deep=True).sum() / 2**20
    return folder, len(crm.activities), size


def _single_features(folder: Path, params, vocabulary) -> pd.DataFrame:
    """Features of every lead as of AS_OF in one process (the single-process cleaning and code)."""
    from features.build import build_crm_features
    from features.ingest import Quarantine, clean_activities, clean_leads
    from serving.batch import read_table

    quarantine = Quarantine()
    raw = read_table(folder / "leads.parquet")
    raw.insert(0, "_row", range(len(raw)))
    leads = clean_leads(raw, quarantine, ("",))
    leads = leads[leads["created_at"] < AS_OF].reset_index(drop=True)
    acts = read_table(folder / "activities.parquet")
    acts.insert(0, "_row", range(len(acts)))
    clean = clean_activities(acts, pd.Index(leads["lead_id"]), quarantine)
    return build_crm_features(leads, clean, AS_OF, params.features, vocabulary)


def _dask_features(client, folder: Path, params, vocabulary, partitions: int) -> tuple[int, float]:
    from serving.dask_batch import features_on_dask, read_frame

    started = time.perf_counter()
    frame = features_on_dask(read_frame(folder / "leads"), read_frame(folder / "activities"),
                             AS_OF, params.features, vocabulary, partitions=partitions)  # fmt: skip
    rows = int(frame.map_partitions(len).compute().sum())
    return rows, time.perf_counter() - started


def _restarts(client, before: set[str]) -> int:
    return len(before - set(client.scheduler_info()["workers"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--large-leads", type=int, default=0, help="also run an export of this many leads")
    parser.add_argument("--memory-limit", default="1.5GB", help="per worker, for the large export")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from features.params import load_params
    from features.tracking import tracking_uri
    from serving.batch import read_table, score_batch
    from serving.dask_batch import score_on_dask
    from serving.scoring import ModelNotReady, load_champion

    print(f"bench_dask on {machine()}")
    try:
        model = load_champion("lead-scorer")
    except ModelNotReady as exc:
        sys.exit(f"{exc}: run `make demo` first")
    params = load_params()
    vocabulary = list(model.scorer.spec.settings.get("tech_vocabulary", []))
    folder, n_acts, acts_mb = _export(args.leads, seed=21)
    print(f"export: {args.leads:,} leads, {n_acts:,} activities ({acts_mb:,.0f} MB as text in memory; in {folder})")

    started = time.perf_counter()
    features = _single_features(folder, params, vocabulary)
    one_features = time.perf_counter() - started
    print(f"features, one process: {len(features):,} leads from {n_acts:,} activities in {one_features:.1f} s "
          f"({n_acts / one_features:,.0f} activities/s)")  # fmt: skip

    started = time.perf_counter()
    single = score_batch(model, read_table(folder / "leads.parquet"), read_table(folder / "activities.parquet"), AS_OF)
    one = time.perf_counter() - started
    print(f"one process: {len(single.scored):,} leads scored with reasons in {one:.1f} s "
          f"({len(single.scored) / one:,.0f}/s), peak {_peak_mb():,.0f} MB")  # fmt: skip

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    with Client(cluster) as client:
        client.run(lambda: None)
        rows, seconds = _dask_features(client, folder, params, vocabulary, partitions=2 * args.workers)
        print(f"features, LocalCluster of {args.workers}: {rows:,} leads in {seconds:.1f} s "
              f"({n_acts / seconds:,.0f} activities/s; {one_features / seconds:.2f}x the one process)")  # fmt: skip
        client.restart()
        started = time.perf_counter()
        run = score_on_dask(client, model, tracking_uri(), folder / "leads", folder / "activities",
                            folder / "out", AS_OF)  # fmt: skip
        seconds = time.perf_counter() - started
        peaks = client.run(_peak_mb)
    cluster.close()
    print(f"LocalCluster of {args.workers} single-threaded workers: {run.scored:,} leads in {seconds:.1f} s "
          f"({run.scored / seconds:,.0f}/s; {one / seconds:.2f}x the one process); "
          f"peak per worker {', '.join(f'{v:,.0f}' for v in peaks.values())} MB")  # fmt: skip
    if args.large_leads:
        _large(args, model, params, vocabulary, parse_bytes(args.memory_limit))


def _large(args, model, params, vocabulary, limit: int) -> None:
    """An export whose activities alone exceed one worker's memory limit, on the cluster only."""
    from distributed import Client, LocalCluster

    from features.tracking import tracking_uri
    from serving.dask_batch import score_on_dask

    folder, n_acts, acts_mb = _export(args.large_leads, seed=22)
    print(f"large export: {args.large_leads:,} leads, {n_acts:,} activities, {acts_mb:,.0f} MB as text in memory "
          f"vs a memory limit of {limit / 2**20:,.0f} MB per worker ({acts_mb / (limit / 2**20):.1f}x)")  # fmt: skip
    partitions = max(8, int(acts_mb // 16))  # small partitions keep each task well under the limit
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           memory_limit=limit)  # fmt: skip
    with Client(cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        rows, seconds = _dask_features(client, folder, params, vocabulary, partitions=partitions)
        peaks = client.run(_peak_mb)
        print(f"  features on {partitions} partitions: {rows:,} leads in {seconds:.1f} s "
              f"({n_acts / seconds:,.0f} activities/s); peak per worker "
              f"{', '.join(f'{v:,.0f}' for v in peaks.values())} MB; workers restarted: {_restarts(client, workers)}")  # fmt: skip
        client.restart()
        workers = set(client.scheduler_info()["workers"])
        started = time.perf_counter()
        run = score_on_dask(client, model, tracking_uri(), folder / "leads", folder / "activities",
                            folder / "out", AS_OF, partitions=partitions)  # fmt: skip
        seconds = time.perf_counter() - started
        peaks = client.run(_peak_mb)
        print(f"  scoring with reasons: {run.scored:,} leads in {seconds:.1f} s ({run.scored / seconds:,.0f}/s); "
              f"peak per worker {', '.join(f'{v:,.0f}' for v in peaks.values())} MB; "
              f"workers restarted: {_restarts(client, workers)}")  # fmt: skip
    cluster.close()


if __name__ == "__main__":
    main()
