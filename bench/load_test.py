"""Load test on loopback with locust: 50 concurrent clients for 60 s sending single leads
(9 in 10 requests) and batches of 100 to the real `bentoml serve`, with an API key.

Clients join 10 a second and the figures count from the moment all 50 are running
(`--reset-stats`): 50 clients started in the same millisecond would measure their own
synchronised first burst, not the service.

Uses the champion of the project's store (run `make demo` first) and the embedded data.
Run: .venv/bin/python -m bench.load_test [--users 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine
from bench.bench_scoring import AS_OF, ROOT, _serve, lead_bodies

KEY = "load-test-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--batch-share", type=int, default=1, help="batches of 100 in every 10 requests (0-10)")
    parser.add_argument("--workers", default="1,cpu_count", help="service worker settings to run, comma-separated")
    args = parser.parse_args()
    from features.ingest import load_crm
    from training.pipeline import EMBEDDED_DIR

    if not (EMBEDDED_DIR / "leads.csv").is_file():
        sys.exit("no embedded data: run `make demo` first")
    print(f"load_test on {machine()}: {args.users} clients for {args.seconds} s")
    work = Path(tempfile.mkdtemp(prefix="leadscore-load-"))
    bodies = work / "bodies.json"
    bodies.write_text(json.dumps(lead_bodies(load_crm(EMBEDDED_DIR))))
    for workers in args.workers.split(","):
        print(f"service.workers = {workers}:")
        _one_run(args, work, bodies, workers)


def _one_run(args, work: Path, bodies: Path, workers: str) -> None:
    import yaml

    from features.params import PARAMS_ENV, default_params_path

    settings = yaml.safe_load(default_params_path().read_text())
    settings["service"]["workers"] = workers if workers == "cpu_count" else int(workers)
    params_file = work / f"params-{workers}.yaml"
    params_file.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "LEADSCORE_API_KEYS": KEY, PARAMS_ENV: str(params_file)}
    service, url = _serve("serving.service:LeadScoring", env)
    locust = str(Path(sys.executable).parent / "locust")
    load_env = {**env, "LEADSCORE_LOAD_BODIES": str(bodies), "LEADSCORE_LOAD_KEY": KEY,
                "LEADSCORE_LOAD_AS_OF": AS_OF.isoformat(), "LEADSCORE_LOAD_BATCH_WEIGHT": str(args.batch_share)}  # fmt: skip
    prefix = work / f"load-{workers}"
    try:
        subprocess.run([locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "--host", url,
                        "-u", str(args.users), "-r", "10", "--reset-stats", "-t", f"{args.seconds + args.users // 10}s",
                        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"],
                       env=load_env, check=False, stdout=subprocess.DEVNULL)  # fmt: skip
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        time.sleep(3)
    with open(f"{prefix}_stats.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        print(f"  {row['Name']:<18} requests {int(row['Request Count']):>6,}  errors {int(row['Failure Count']):>4,}  "
              f"{float(row['Requests/s']):7.1f} req/s  p50 {row['50%']:>4} ms  p99 {row['99%']:>4} ms  "
              f"max {float(row['Max Response Time']):.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
