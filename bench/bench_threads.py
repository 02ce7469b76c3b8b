"""LightGBM training on a busy machine: how much slower a bare `lgb.train` loop gets when
another process keeps the cores busy, with OpenMP's default waiting (threads spin at each
barrier), a short spin (`GOMP_SPINCOUNT=1000`) and `OMP_WAIT_POLICY=passive` (threads sleep
at once). Each setting runs in fresh processes, since OpenMP reads the variables once; the
ratios are measured in one run. The product's own pipeline did not follow this loop (see
BENCHMARKS.md), so the product sets neither variable.

Run: .venv/bin/python -m bench.bench_threads [--rows 9000] [--rounds 300] [--repeats 7] [--burners 1]
         [--rival lightgbm|python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench._common import machine

TRAIN = """
import json, sys, time
import numpy as np, lightgbm as lgb
rows, rounds = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.normal(size=(rows, 30))
y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=rows) > 0).astype(int)
params = {"objective": "binary", "num_leaves": 4, "max_depth": 2, "learning_rate": 0.05, "n_jobs": 2,
          "verbose": -1, "min_child_samples": 50}
started = time.perf_counter()
lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

BURN = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"
# Another LightGBM job training over and over, as a test run or a second training would.
RIVAL = (
    TRAIN.replace("started = time.perf_counter()", "while True:")
    .replace("lgb.train(", "    lgb.train(")
    .replace('print(json.dumps({"seconds": time.perf_counter() - started}))', "")
)


OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SETTINGS = {
    "OpenMP default (spin ~300,000 times at a barrier)": {},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "OMP_WAIT_POLICY=passive (sleep at once)": {"OMP_WAIT_POLICY": "passive"},
}


def _env(setting: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}, **setting}


def _train(rows: int, rounds: int, setting: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-c", TRAIN, str(rows), str(rounds)], env=_env(setting),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=9000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--burners", type=int, default=1, help="busy processes competing for the cores")
    parser.add_argument(
        "--rival",
        choices=["python", "lightgbm"],
        default="lightgbm",
        help="what the busy processes run: a Python loop, or LightGBM training with the same setting",
    )
    args = parser.parse_args()
    print(f"bench_threads on {machine()}: {args.rows} rows, {args.rounds} rounds of depth-2 trees, n_jobs 2, "
          f"{args.burners} busy {args.rival} process(es) competing, median of {args.repeats}")  # fmt: skip
    results = {}
    for name, setting in SETTINGS.items():
        alone = statistics.median(_train(args.rows, args.rounds, setting) for _ in range(args.repeats))
        rival = [BURN, "3600"] if args.rival == "python" else [RIVAL, str(args.rows), str(args.rounds)]
        burners = [subprocess.Popen([sys.executable, "-c", *rival], env=_env(setting)) for _ in range(args.burners)]
        try:
            time.sleep(1.0)
            busy = statistics.median(_train(args.rows, args.rounds, setting) for _ in range(args.repeats))
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        results[name] = (alone, busy)
        print(f"{name:50}  alone {alone:6.2f} s   busy {busy:6.2f} s   slowdown {busy / alone:5.1f}x")
    base_alone, base_busy = next(iter(results.values()))
    for name, (alone, busy) in list(results.items())[1:]:
        print(f"{name} / default: alone {alone / base_alone:.2f}x, busy {busy / base_busy:.2f}x")


if __name__ == "__main__":
    main()
