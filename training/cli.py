"""The `leadscore` command: thin wrappers that parse arguments and call the pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.flat import DUPLICATE_ROW, FlatProfile, load_profile, make_profile
from features.ingest import DUPLICATE_LEAD, DataError, export_folder
from features.params import PARAMS_ENV, PROJECT_ROOT, Params, ParamsError, load_params
from features.synthetic import STEP_DAYS, generate_crm, write_crm
from features.tracking import check_writable, without_password
from training import stopping
from training.progress import PrintReporter
from training.stopping import Terminated

# Charts of a command go to files: no window, whatever display the shell has (a notebook,
# which does not import this module, keeps its own backend).
os.environ.setdefault("MPLBACKEND", "Agg")


def _given_path(text: str | Path) -> Path:
    """A path's value from the command line (or an option's default, already a Path). An empty
    one (`--out "$DIR"` with DIR unset in a script) would mean the current folder; it is
    refused instead."""
    if isinstance(text, str) and not text.strip():
        raise typer.BadParameter("is empty: give a folder or file name")
    return Path(text)


_given_path.__name__ = "path"  # the type `--help` shows for an argument
GIVEN_PATH: dict[str, Any] = {"parser": _given_path, "metavar": "<path>"}

ParamsFile = Annotated[
    Path | None,
    typer.Option("--params", help="params.yaml to use (default: $LEADSCORE_PARAMS, else the project's)", **GIVEN_PATH),
]

app = typer.Typer(
    help="Predictive lead scoring: train and register models, score leads in batch or as a service, "
    "write the pages, recalibrate and roll back.",
    no_args_is_help=True,
    add_completion=False,
)
# An output that cannot write every character (a scheduler's latin-1 or ASCII stdout): "?" for
# the one it cannot, not an exit 1 after the work was done ("→" in a summary line).
for _stream in (sys.stdout, sys.stderr):
    if (getattr(_stream, "encoding", None) or "utf-8").replace("_", "-").lower() not in ("utf-8", "utf8"):
        with contextlib.suppress(AttributeError, ValueError):
            _stream.reconfigure(errors="replace")
console = Console()
if not console.is_terminal:  # a log (cron, CI): long lines whole, tables not squeezed into 80 columns
    console = Console(soft_wrap=True, width=None if os.environ.get("COLUMNS") else 160)
err = Console(stderr=True, soft_wrap=True)  # one line per error, whatever the width (cron logs)


class RichReporter(PrintReporter):
    """Renders pipeline progress: a line per stage, a bar over the Optuna trials (in a log, the
    printed reporter's line every 15 s instead: a bar would print once, at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self._progress: Progress | None = None
        self._task: Any = None

    def stage(self, text: str) -> None:
        # In a log each stage also says when it began, so a run can be found by its date.
        when = "" if console.is_terminal else f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} "  # as `_log_time`
        console.print(f"[dim]{when}{time.perf_counter() - self.started:6.1f}s[/dim] [bold]{escape(text)}[/bold]")

    def note(self, text: str) -> None:
        console.print(f"        {escape(text)}")

    def warn(self, text: str) -> None:
        console.print(f"        [yellow]! {escape(text)}[/yellow]")

    def trials_started(self, total: int) -> None:
        super().trials_started(total)
        if not console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("        trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(), console=console, transient=False,
        )  # fmt: skip
        self._progress.start()
        self._task = self._progress.add_task("tuning", total=total, best="")

    def trial_done(self, number: int, state: str, best: float | None) -> None:
        if self._progress is None:
            super().trial_done(number, state, best)
            return
        self.done += 1
        self._progress.update(
            self._task, advance=1, best=f"best validation score {best:.4f}" if best is not None else ""
        )

    def trials_finished(self) -> None:
        if self._progress is not None:
            # A search the time budget ended stays at its count ("2/60"); the line below says why.
            self._progress.stop()
            self._progress = None
        super().trials_finished()


MODEL_NAME_HELP = "Registered model (default: $LEADSCORE_MODEL_NAME, else mlflow.model_name in params.yaml)"
DEFAULT_TUNING_ROWS = 200_000  # training examples sampled for Optuna on the Dask engine


def _leads(count: int) -> str:
    return f"{count:,} lead" + ("" if count == 1 else "s")


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"{_log_time()}[red]error:[/red] {escape(without_password(message))}")
    raise typer.Exit(code=code)


def _log_time(to: Console = err) -> str:
    """The moment, before a line written to a log file rather than a terminal (a scheduler's
    log appends run after run: an undated error cannot be placed)."""
    return "" if to.is_terminal else f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} "


def _refuse_dask_only_flags(engine: str, flags: dict[str, Any]) -> None:
    """Settings of the Dask engine given to a local run are refused, not ignored."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given and engine != "dask":
        _fail(f"{', '.join(given)}: for --engine dask; this run uses --engine {engine}")


def _served_model_name() -> str:
    """The registered model `serve` serves, and whose scorings the pages show."""
    return _model_name(None, _params())


def _model_name(given: str | None, params: Params) -> str:
    """`--model-name`, else the served model ($LEADSCORE_MODEL_NAME), else params.yaml's: a shell
    set up to serve one model scores, reports on, recalibrates and rolls back that model."""
    return given or os.environ.get("LEADSCORE_MODEL_NAME") or params.mlflow.model_name


def _os_error_text(exc: OSError) -> str:
    """An OS error as `path: reason`, so the user knows which file to look at. A full disk met
    while writing names no file: the folders the command writes to are named instead."""
    reason = exc.strerror or str(exc)
    if exc.filename:
        return f"{exc.filename}: {reason}"
    if exc.errno == errno.ENOSPC:
        from features.tracking import MODELS_DIR

        return f"{reason} (it writes to {MODELS_DIR} and to the MLflow store's artifacts: free space there)"
    return reason


def _quiet_libraries() -> None:
    from features.tracking import quiet_tracking

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_tracking()
    for name in ("optuna", "lightgbm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# About 19 activities per lead: 2M leads make an export of several GB in memory.
MAX_GENERATED_LEADS = 2_000_000


@app.command()
def generate(
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder to write leads.csv, activities.csv, outcomes.csv, truth.csv", **GIVEN_PATH),
    ],
    leads: Annotated[
        int, typer.Option("--leads", min=1, max=MAX_GENERATED_LEADS, help="How many leads to create")
    ] = 50_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files)")] = 7,
    start: Annotated[str, typer.Option("--start", help="First day of the period (YYYY-MM-DD)")] = "2024-11-01",
    months: Annotated[int, typer.Option("--months", min=2, max=120, help="Length of the period in 30-day months")] = 24,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a CRM export in --out that was not generated here")
    ] = False,
) -> None:
    """Generate a synthetic CRM export in the raw data contract, with known truth."""
    from features.schema import TABLE_FILES, TRUTH_FILE

    existing = [name for name in TABLE_FILES.values() if (out / name).is_file()]
    if existing and not (out / TRUTH_FILE).is_file() and not force:
        # No truth.csv: a real export, maybe the only copy, not an earlier synthetic one.
        _fail(f"{out} holds {', '.join(existing)} of an export not generated here; give another --out (or --force)")
    started = time.perf_counter()
    with console.status(f"Simulating {leads:,} leads over {months} months"):
        try:
            crm = generate_crm(leads, seed, start, months)
            paths = write_crm(crm, out)
        except ValueError as exc:
            _fail(f"cannot generate: {exc}")
        except MemoryError:
            _fail(f"cannot generate {leads:,} leads: not enough memory; try fewer --leads")
        except OSError as exc:
            hint = " (--out takes a folder)" if out.is_file() else ""
            _fail(f"cannot write to {out}: {exc.strerror or exc}{hint}")
    table = Table(title=f"Synthetic CRM export in {out} ({time.perf_counter() - started:.1f} s)")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, frame in (
        ("leads", crm.leads),
        ("activities", crm.activities),
        ("outcomes", crm.outcomes),
        ("truth", crm.truth),
    ):
        table.add_row(paths[name].name, f"{len(frame):,}")
    console.print(table)
    status = crm.outcomes["status"].value_counts()
    console.print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in status.items()))


def _column_list(text: str) -> list[str]:
    """Comma-separated column names; a name holding a comma in double quotes (`"Value, USD",Tags`)."""
    import csv

    return [name.strip() for name in next(csv.reader([text], skipinitialspace=True), []) if name.strip()]


def _profile(
    data: Path,
    label: str | None,
    positive: list[str] | None,
    negative: list[str] | None,
    id_column: str | None,
    drop: str | None,
    sep: str | None,
    time_column: str | None,
    profile: Path | None,
    reporter: RichReporter,
) -> FlatProfile:
    flags = {
        "label": label,
        "positive": positive,
        "negative": negative,
        "id": id_column,
        "drop": _column_list(drop) if drop else None,
        "sep": sep,
        "time": time_column,
    }
    if profile:
        settings, replaced = load_profile(profile, **flags)
        if replaced:
            flags_given = ", ".join(f"--{key}" for key in replaced)
            reporter.note(f"{flags_given} given on the command line: replaces the same key(s) of {profile}")
        return settings
    if not label:
        _fail(f"{data} is a single CSV file: say which column is the outcome with --label (or give --profile)")
    return make_profile({k: v for k, v in flags.items() if v is not None})


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _summary(metrics: dict[str, Any]) -> None:
    test = metrics["test"]
    held_out = "Test holdout" if metrics["data"]["split"].startswith("stratified") else "Test period"
    examples = metrics["data"]["examples"]["test"]
    table = Table(title=f"{held_out}: {examples:,} examples, {test['positives']:,} converted")
    for col in ("model", "ROC AUC", "PR AUC", "log loss", "Brier", "ECE"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row(
        "tuned LightGBM, calibrated",
        f"{test['roc_auc']:.4f}",
        f"{test['pr_auc']:.4f}",
        f"{test['log_loss']:.4f}",
        f"{test['brier']:.4f}",
        f"{test['ece']:.4f}",
    )
    for name, values in metrics["baselines"].items():
        table.add_row(f"baseline: {name.replace('_', ' ')}", f"{values['roc_auc']:.4f}", "", "", "", "")
    if metrics.get("bayes"):
        table.add_row(
            "best possible (Bayes, from truth.csv)",
            f"{metrics['bayes']['roc_auc']:.4f}",
            "",
            "",
            "",
            "",
        )
    console.print(table)
    engine = metrics.get("engine") or {}
    if engine.get("engine") == "dask":
        console.print(
            f"Engine: Dask, {engine['workers']} worker(s), {engine['partitions']} partitions; {engine['tuning_note']}; "
            f"final fit by LightGBM's DaskLGBMClassifier on {engine.get('final_fit_examples', 0):,} examples"
        )

    grades = Table(title=f"Conversion by grade on the {held_out.lower()}")
    for col in ("grade", "share of leads", "conversion"):
        grades.add_column(col, justify="right")
    for letter, row in metrics["grades"].items():
        conv = "" if row["conversion"] is None else f"{row['conversion']:.1%}"
        grades.add_row(letter, f"{row['share']:.1%}", conv)
    console.print(grades)
    qualification = metrics.get("qualification")
    if qualification:
        mql, nurture = qualification["test"]["MQL"], qualification["test"]["nurture"]
        console.print(
            f"MQL from score {qualification['mql_min_score']:g} (where the top {qualification['mql_top_share']:.0%} "
            f"of held-out training predictions sit; flat.mql_top_share): on the {held_out.lower()}, "
            f"{mql['leads']:,} MQLs converting at {_rate(mql['conversion'])}, "
            f"{nurture['leads']:,} in nurture at {_rate(nurture['conversion'])}"
        )

    gates = Table(title="Registration gates")
    gates.add_column("gate")
    gates.add_column("result")
    gates.add_column("detail")
    for gate in metrics["gates"]:
        gates.add_row(
            gate["name"],
            "[green]pass[/green]" if gate["passed"] else "[red]fail[/red]",
            gate["detail"],
        )
    console.print(gates)
    model = metrics["model"]
    if metrics["promoted"]:
        console.print(
            f"[green]Registered {model['name']} version {model['version']} as @champion[/green]"
            + (f" (version {model['previous_champion']} is now @previous)" if model["previous_champion"] else "")
        )
    else:
        console.print(
            f"[yellow]Registered {model['name']} version {model['version']}; not promoted: "
            f"{', '.join(g['name'] for g in metrics['gates'] if not g['passed']) or 'a gate'} failed, "
            "@champion unchanged[/yellow]"
        )
    if metrics["data"]["kind"] == "flat":
        # Scoring reads @champion: until a run passes the gates there is none to score with.
        name = escape(model["name"])
        how = (f"[bold]leadscore score FILE -o scores.csv --model-name {name}[/bold]; serve it with "
               f"[bold]leadscore serve --model-name {name}[/bold]")  # fmt: skip
        if metrics["promoted"]:
            console.print(f"Score files like this one with {how}")
        elif metrics["model"].get("compared_with_champion"):
            console.print(f"Score files like this one with {how}: both use @champion of {name} (a version that "
                          "passed the gates), not this one")  # fmt: skip
        else:
            console.print(f"{name} has no @champion yet, so nothing scores with it: once a run passes the gates, "
                          f"score files like this one with {how}")  # fmt: skip


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="CRM export folder (leads/activities/outcomes CSV) or one flat CSV; default: the embedded dataset",
            **GIVEN_PATH,
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            min=1,
            help="Optuna trials at most (default from params.yaml); the time budget (--timeout) may end the "
            "search sooner",
        ),
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics-out", help="Write the metrics as JSON to this file", **GIVEN_PATH)
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Flat CSV: the outcome column")] = None,
    positive: Annotated[
        list[str] | None,
        typer.Option(
            "--positive",
            help="Flat CSV: the label value that means converted; give it again for each other spelling "
            "(--positive Won --positive 'Closed Won')",
        ),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option(
            "--negative",
            help="Flat CSV: the label value that means lost (again for each other spelling), with --positive; "
            "rows of other values (open deals) have no outcome yet and are set aside",
        ),
    ] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="Flat CSV: the lead id column")] = None,
    drop: Annotated[
        str | None,
        typer.Option(
            "--drop",
            help='Flat CSV: comma-separated columns to leave out ("A, B" in double quotes for a name with a comma)',
        ),
    ] = None,
    replace_leaky_champion: Annotated[
        bool,
        typer.Option(
            "--replace-leaky-champion",
            help="Flat CSV: the --drop columns leak, so a champion that read them is replaced without comparing "
            "test AUC (its AUC with a leak is no bar)",
        ),
    ] = False,
    sep: Annotated[
        str | None,
        typer.Option("--sep", help="Flat CSV: field separator, one character ('tab' for a tab); default ','"),
    ] = None,
    time_column: Annotated[
        str | None, typer.Option("--time", help="Flat CSV: a timestamp column to split by time")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile", help="Flat CSV: a YAML file with the settings above (a flag given as well wins)", **GIVEN_PATH
        ),
    ] = None,
    params_file: ParamsFile = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="Tuning time budget in seconds (default from params.yaml)"),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="Registered model name (default from params.yaml; a flat CSV's: that name, '-flat-' and the label)",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option("--engine", help="local (one process) or dask (features and final fit on a Dask cluster)"),
    ] = "local",
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    ] = None,
    tuning_rows: Annotated[
        int | None,
        typer.Option(
            "--tuning-rows", min=100, help="Dask engine: training examples sampled for Optuna (default 200,000)"
        ),
    ] = None,
    partitions: Annotated[int | None, typer.Option("--partitions", min=1, help="Dask partitions")] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="CRM export: train on the rows before this moment (a date means its midnight), e.g. the day it "
            "was exported, so that meetings booked ahead do not move the export's end",
        ),
    ] = None,
) -> None:
    """Build features, split by time, tune, train, calibrate, evaluate and register.

    With --engine dask, features are built and the final model is fitted on a Dask cluster
    (LightGBM's Dask estimator); Optuna tunes on a sample of the training examples. Exits 3
    while another training run, a recalibration, a rollback or a notebook's training holds the
    lock they share, 2 on bad input, 143 when stopped by SIGTERM (130 by SIGINT).
    """
    from features.tracking import lock_path
    from training.pipeline import (
        ensure_embedded_data,
        prepare_crm,
        prepare_flat,
        report_quarantine,
        train_and_register,
    )
    from training.recalibrate import RecalibrationError, exclusive

    _quiet_libraries()
    overrides: dict[str, Any] = {}
    if trials:
        overrides["tuning.trials"] = trials
    if timeout:
        overrides["tuning.timeout_seconds"] = timeout
    if engine not in ("local", "dask"):
        _fail(f"--engine {engine!r}: use local or dask")
    dask_only = {"--scheduler": scheduler, "--tuning-rows": tuning_rows, "--partitions": partitions}
    _refuse_dask_only_flags(engine, dask_only)
    if engine == "dask" and data is not None and not data.is_dir():
        _fail("--engine dask trains on a CRM export folder (leads, activities, outcomes); flat CSVs train locally")
    if metrics_out is not None:
        _check_output_file(metrics_out, what="the metrics")
    positive, negative = positive or None, negative or None  # Typer gives [] for a list flag not given
    flat_only = {"--label": label, "--positive": positive, "--negative": negative, "--id": id_column, "--drop": drop}
    flat_only.update({"--sep": sep, "--time": time_column, "--profile": profile})
    flat_only["--replace-leaky-champion"] = True if replace_leaky_champion else None
    given = [flag for flag, value in flat_only.items() if value is not None]
    if given and (data is None or data.is_dir()):
        read_as = "the embedded dataset is" if data is None else f"{data} is read as"
        _fail(f"{', '.join(given)}: for a flat CSV file (--data FILE.csv); {read_as} a CRM export")
    moment = None
    if as_of is not None:
        if data is not None and data.is_file():
            _fail("--as-of: for a CRM export folder (or the embedded data); a flat CSV is trained on all its rows")
        try:
            moment = past_moment(as_of)
        except DataError as exc:
            _fail(str(exc))
    if data is not None and not data.exists():
        # Said before waiting on the lock: a scheduler would retry a mistyped path as "busy".
        _fail(f"{data}: no such file or folder")
    reporter = RichReporter()
    client = None
    dataset = None
    fit_options: dict[str, Any] = {}
    held = contextlib.ExitStack()
    _fail_cleanly_on_sigterm()
    try:
        _check_model_folders()
        params = load_params(params_file, **overrides)
        # Checked before any work and held to the end: a recalibration or a rollback moving
        # @champion meanwhile would race this run's comparison with the champion and its promotion.
        held.enter_context(exclusive(lock_path(params.recalibration.lock_file), job="train"))
        if engine == "dask":
            client, dataset, fit_options = _prepare_on_dask(
                data, params, reporter, scheduler, tuning_rows or DEFAULT_TUNING_ROWS, partitions, as_of=moment
            )
        elif data is None:
            source = ensure_embedded_data(params, reporter)
            reporter.stage(f"Loading the embedded dataset ({source})")
            dataset = prepare_crm(source, params, as_of=moment)
        elif data.is_dir():
            reporter.stage(f"Loading CRM export {data}")
            dataset = prepare_crm(data, params, as_of=moment)
        elif data.exists():
            flat_profile = _profile(
                data, label, positive, negative, id_column, drop, sep, time_column, profile, reporter
            )
            # A flat model reads another table: under the CRM model's name it would take the
            # champion the service and `make demo` use, and keep every CRM model from promotion.
            model_name = model_name or flat_model_name(params.mlflow.model_name, flat_profile.label)
            reporter.stage(f"Loading flat CSV {data}")
            dataset = prepare_flat(data, flat_profile, params)
        else:
            _fail(f"{data}: no such file or folder")
        examples = f"{len(dataset.features):,} examples"
        if "engine" in fit_options:  # on Dask the client holds the tuning sample and the newer periods only
            examples = (f"{fit_options['engine']['examples']:,} examples ({len(dataset.features):,} of them here: "
                        "the tuning sample, validation and test)")  # fmt: skip
        reporter.note(
            f"{examples}, {len(dataset.features.columns)} candidate features; split {dataset.split.description}"
        )
        report_quarantine(dataset.quarantine, reporter)
        metrics = train_and_register(
            dataset, params, reporter, model_name=model_name, replace_leaky_champion=replace_leaky_champion,
            **fit_options,
        )  # fmt: skip
        stopping.finish()  # recorded: the exit code says so whatever signal comes now
    except RecalibrationError as exc:
        _fail(f"{exc}: try again after it finishes", code=exc.exit_code)
    except Terminated as exc:
        _fail(f"training {exc}; the champion is unchanged", code=exc.exit_code)
    except (DataError, ParamsError) as exc:
        _fail(str(exc) + _kept_quarantine(dataset, exc))
    except typer.Exit:
        raise
    except Exception as exc:  # an unexpected failure still gets a one-line message
        from features.tracking import server_lost
        from training.pipeline import PromotedButUnrecorded

        if standing := _behind(exc, PromotedButUnrecorded):  # ending the run may have failed on top
            _fail(str(standing) + _kept_quarantine(dataset))
        if stopped := _sigterm_behind(exc):
            _fail(f"training {stopped}; the champion is unchanged", code=stopped.exit_code)
        if os.environ.get("LEADSCORE_DEBUG"):
            raise
        said = server_lost(exc) or _cluster_failure(exc)
        if not said and isinstance(exc, OSError) and not _networked(exc):  # a folder that cannot be written
            said = _os_error_text(exc)
        if not said and (disk := _file_error_behind(exc)):  # a full disk, behind MLflow's failure to end the run
            said = _os_error_text(disk)
        _fail(
            (said or f"training failed: {type(exc).__name__}: {exc} (set LEADSCORE_DEBUG=1 to see the traceback)")
            + _kept_quarantine(dataset)
        )
    finally:
        held.close()
        if client is not None:
            client.close()
    _say_signal_held()
    if metrics["data"]["quarantine_file"]:
        reporter.note(f"quarantine: {metrics['data']['quarantine_file']}")
    _summary(metrics)
    if metrics_out:
        try:
            metrics_out.parent.mkdir(parents=True, exist_ok=True)
            metrics_out.write_text(json.dumps(metrics, indent=2, default=str))
        except OSError as exc:
            _fail(f"cannot write the metrics to {metrics_out}: {exc.strerror or exc}")
        console.print(f"metrics written to {metrics_out}")


def _check_output_file(path: Path, *, what: str) -> None:
    """Refuse an output path that cannot be written before the work, not after it."""
    if path.is_dir():
        _fail(f"cannot write {what} to {path}: it is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        _fail(f"cannot write {what} to {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        _fail(f"cannot write {what} to {path}: permission denied")
    if folder != path.parent:  # make the missing folders (and remove them again), as the writer will
        try:
            check_writable(path.parent, what=what, probe_bytes=1, keep_folders=False)
        except OSError as exc:
            _fail(_os_error_text(exc))
    else:  # try the write itself: some folders (/proc, a full disk) pass access()
        existed = path.exists()
        try:
            with path.open("a"):
                pass
        except OSError as exc:
            _fail(f"cannot write {what} to {path}: {exc.strerror or exc}")
        if not existed:
            path.unlink(missing_ok=True)


def flat_model_name(base: str, label: str) -> str:
    """The default registered name of a model trained on a flat CSV: `<base>-flat-<label>`.

    Named by the label, not the file, so next month's export of the same table is compared
    with (and may replace) this month's champion rather than starting a model of its own.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", label.casefold()).strip("-")[:60]
    return f"{base}-flat" + (f"-{slug}" if slug else "")


def _kept_quarantine(dataset: Any, error: Exception | None = None) -> str:
    """Write the quarantined rows of a run that stopped after loading; the text to append.

    A refusal such as "only 12 converted examples" often follows from rows quarantined on
    the way, so the user needs the file naming them even though no MLflow run was logged.
    """
    from training.pipeline import write_quarantine

    quarantine = dataset.quarantine if dataset is not None else getattr(error, "quarantine", None)
    if quarantine is None:
        return ""
    try:
        path = write_quarantine(quarantine.frame(), time.strftime("%Y%m%d-%H%M%S", time.gmtime()))  # UTC, as moments
    except OSError as exc:
        return f" (the quarantined rows could not be written: {_os_error_text(exc)})"
    return f"\nquarantined rows, each with its reason: {path}" if path else ""


def _bound_mlflow_retries() -> None:
    """MLflow retries a server for minutes per call by default: one that stops mid-run would
    leave a command silent that long. A few quick retries ride out a restart; a user's own
    settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _use_params_file(path: Path | None) -> None:
    """A command's `--params`: the file every step reads, as $LEADSCORE_PARAMS, which the
    service's workers inherit."""
    if path is not None:
        os.environ[PARAMS_ENV] = str(path.resolve())


def _params() -> Params:
    """params.yaml (or $LEADSCORE_PARAMS); one line and exit 2 when it cannot be read."""
    try:
        return load_params()
    except ParamsError as exc:
        _fail(str(exc))


def _check_registry(*, reads_models: bool = False, fail: Callable[[str], NoReturn] = _fail) -> None:
    """Before reading the registry: the URI's form, then whether a server answers, in seconds.
    MLflow alone would retry a stopped server for minutes, or read a folder typo as a store.

    With `reads_models` (a command that needs a registered model), a local database that does
    not exist yet is said at once: MLflow would create an empty one only to find no model in it.
    `fail` reports the problem and stops (a recalibration also records it for its scheduler).
    """
    from features.tracking import local_database, remove_unused_models_dir, tracking_problem, uri_form_problem

    _bound_mlflow_retries()
    database = local_database()
    if database is None:
        problem = tracking_problem()
    else:
        problem = uri_form_problem()
        if not problem and reads_models and not database.is_file():
            problem = (
                f"no model registered yet: the MLflow store {database} does not exist; run `leadscore train` first"
            )
            if "MLFLOW_TRACKING_URI" not in os.environ:
                problem += " (or set MLFLOW_TRACKING_URI to the store that holds your models)"
            remove_unused_models_dir()
    if problem:
        fail(problem)


def _check_model_folders(*, reads_models: bool = False, fail: Callable[[str], NoReturn] = _fail) -> None:
    """A read-only or full models/ (or store folder), or a tracking server that does not
    answer, is reported before a long run, not after (arguments as `_check_registry`'s)."""
    from features.tracking import MODELS_DIR, MODELS_DIR_ENV, check_store_file, local_store_folder

    _check_registry(reads_models=reads_models, fail=fail)
    store = local_store_folder()
    if store is not None:  # a local sqlite store is checked by writing to its folder, and its file
        check_writable(store, what="the MLflow store (runs and registered models)")
        check_store_file()
    check_writable(MODELS_DIR, what=f"the embedded data and quarantine files (the models folder, ${MODELS_DIR_ENV})")


def _prepare_on_dask(
    data: Path | None,
    params: Any,
    reporter: RichReporter,
    scheduler: str | None,
    tuning_rows: int,
    partitions: int | None,
    *,
    as_of: Any = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Start (or reach) the cluster and build the examples' features on it."""
    from rich.progress import Progress as RichProgress

    from serving.dask_batch import start_client
    from training.dask_train import dask_final_fit, prepare_crm_on_dask
    from training.pipeline import ensure_embedded_data

    source = data or ensure_embedded_data(params, reporter)
    if not source.is_dir():
        _fail(f"{source}: no such folder")
    client = start_client(scheduler)
    workers = len(client.scheduler_info()["workers"])
    console.print(f"Dask: {workers} worker(s); dashboard {client.dashboard_link}")
    reporter.stage(f"Loading CRM export {source}; building features on Dask")
    with RichProgress(console=console) as progress:
        task = progress.add_task("features (partitions)", total=None)
        prepared = prepare_crm_on_dask(
            client, source, params, tuning_rows=tuning_rows, partitions=partitions, as_of=as_of,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    reporter.note(prepared.engine["tuning_note"] + "; the final fit uses all of them on Dask")
    options = {"final_fit": dask_final_fit(client, prepared, params.tuning.seed), "engine": prepared.engine}
    return client, prepared.tuning, options


@app.command()
def openapi(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the spec", **GIVEN_PATH)] = Path(
        "docs/openapi.json"
    ),
    params_file: ParamsFile = None,
) -> None:
    """Write the scoring API's OpenAPI spec (the same document GET /docs serves).

    The default path is relative to the current folder (the project's committed copy from its root)."""
    _use_params_file(params_file)
    _check_output_file(output, what="the OpenAPI spec")
    _params()  # the spec's limits are the service's settings (`service.max_batch`): a bad file is said here
    from serving.service import SPEC

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(SPEC, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        _fail(f"cannot write the OpenAPI spec: {_os_error_text(exc)}")
    console.print(f"OpenAPI spec written to {output}")


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on")] = 3000,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (0.0.0.0 to accept remote calls)")
    ] = "127.0.0.1",
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="Registered model to serve, e.g. a flat CSV's (default: $LEADSCORE_MODEL_NAME, else "
            "mlflow.model_name in params.yaml)",
        ),
    ] = None,
    params_file: ParamsFile = None,
) -> None:
    """Start the scoring service (BentoML) on the champion of the configured MLflow registry."""
    _use_params_file(params_file)
    import sys

    if model_name is not None:
        if not model_name.strip():
            _fail("--model-name: blank; give a registered model's name")
        os.environ["LEADSCORE_MODEL_NAME"] = model_name  # the service's workers and pages read it

    from features.tracking import local_database, shown_uri, tracking_problem, tracking_uri, uri_form_problem
    from serving.guards import api_keys_from_env, api_keys_problem, is_loopback, short_api_keys, short_keys_said

    # BentoML's usage statistics would phone home from every worker: not from a CRM's scorer.
    # Two malloc arenas: with glibc's default (8 per core) a worker's memory crept up by 17-34 MB
    # an hour in idle arenas, where two kept it within 2-10 MB at no cost in latency (BENCHMARKS.md).
    # No download bar in the service's log for each model a worker loads (26 bars in 30 minutes
    # of promotions were 82 KB of an 85 KB log).
    defaults = {"BENTOML_DO_NOT_TRACK": "true", "MALLOC_ARENA_MAX": "2"}
    defaults["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env = {**defaults, **os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}
    # A BentoML home of its own: a service starting empties the metrics folder of its home, which
    # wiped the /metrics counts of another service on this machine (a second model's, say).
    env.setdefault("BENTOML_HOME", str(bentoml_home(host, port)))
    name = _served_model_name()
    mistake = uri_form_problem()
    if mistake:  # a typo would serve 503s from an empty store of its own, forever
        _fail(mistake)
    if problem := api_keys_problem():
        _fail(problem)
    if problem := _port_problem(host, port):  # before saying it serves there
        _fail(problem)
    console.print(f"Serving models:/{name}@champion from {shown_uri(tracking_uri())} on http://{host}:{port}")
    # The service starts anyway and loads the champion once there is one (`service.reload_seconds`).
    database = local_database()
    waiting = "/readyz and /score answer 503 until"
    if database is not None and not database.is_file():
        console.print(f"[yellow]no model registered yet ({escape(str(database))} does not exist): {waiting} "
                      f"`leadscore train` registers a champion[/yellow]")  # fmt: skip
    elif database is None and (problem := tracking_problem()):
        console.print(f"[yellow]{escape(problem)} (the service starts: {waiting} the store answers)[/yellow]")
    elif missing := _unknown_model_said(name):  # a misspelt LEADSCORE_MODEL_NAME would wait for ever
        console.print(f"[yellow]{escape(missing)}: {waiting} one is registered under that name[/yellow]")
    if api_keys_from_env():
        console.print("API keys required (LEADSCORE_API_KEYS is set)")
        if short := short_api_keys():
            console.print(f"[yellow]{escape(short_keys_said(short))}[/yellow]")
    elif not is_loopback(host.strip("[]").lower()):  # the service's own test of a loopback name
        console.print(f"[yellow]no API keys (LEADSCORE_API_KEYS) on {escape(host)}: whoever reaches this port can "
                      "score leads and read the pages[/yellow]")  # fmt: skip
    else:
        console.print("[dim]No API keys: requests must be addressed to localhost or 127.0.0.1 "
                      "(service.allowed_hosts names others)[/dim]")  # fmt: skip
    bentoml = str(Path(sys.executable).parent / "bentoml")
    command = [bentoml, "serve", "serving.service:LeadScoring", "--host", host, "--port", str(port),
               "--working-dir", str(PROJECT_ROOT)]  # fmt: skip
    sys.stdout.flush()
    # Become the server rather than wrap it: a supervisor's SIGTERM then reaches BentoML, which
    # stops its workers; a wrapper would die and leave them serving.
    os.execve(bentoml, command, env)


def _unknown_model_said(name: str) -> str | None:
    """`unknown_model` for the service's start; None when the store cannot tell (said elsewhere)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from features.tracking import tracking_uri
    from training.register import unknown_model

    _quiet_libraries()
    try:
        # The store the service will read: `serve` sets no process-wide URI, and without one a
        # client opens MLflow's default (an empty mlflow.db in the current folder).
        return unknown_model(name, MlflowClient(tracking_uri()))
    except (MlflowException, OSError):
        return None


def bentoml_home(host: str, port: int) -> Path:
    """The BentoML home of the service on host:port (two cannot listen there at once)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"leadscore-bentoml-{re.sub(r'[^0-9A-Za-z.]', '_', host)}-{port}"


def _port_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port, said before BentoML fails with a traceback."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is in use (another service?): stop it or choose another --port"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


# A scoring of fewer than a tenth of the leads of the model's latest kept one is not kept unless
# asked for: it would replace the pages' whole digest.
SHRUNK_SCORING = 10


@app.command()
def score(
    source: Annotated[
        Path,
        typer.Argument(help="Leads file (CSV or parquet) or a CRM export folder", parser=_given_path, metavar="SOURCE"),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the scores (.csv or .parquet)", **GIVEN_PATH)
    ],
    activities: Annotated[
        Path | None, typer.Option("--activities", help="Activities file of these leads", **GIVEN_PATH)
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Score as of this moment (default: now, UTC)")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", help="A version number or alias (e.g. 3, previous) instead of the champion"),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Print the N best leads with grade, stage and reasons")] = 0,
    snapshot: Annotated[
        bool | None,
        typer.Option(
            "--snapshot/--no-snapshot",
            help="Keep this scoring for the pages (under LEADSCORE_SCORES_DIR, default models/scores); by default "
            "kept unless scored with a --model-version other than the champion's or with --engine dask, given no "
            "activity of the leads (before --as-of), with an --as-of in the future, when the leads file lacks "
            "columns the model learned from or shows the other decimal mark (numbers may be misread), when no lead "
            "was scored, with fewer than a tenth of the leads of the latest kept scoring or as of an earlier day "
            "than it, or the folder cannot be written",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="local (one process) or dask (partitioned parquet out)")
    ] = "local",
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    ] = None,
    partitions: Annotated[int | None, typer.Option("--partitions", min=1, help="Dask partitions")] = None,
    params_file: ParamsFile = None,
    # `demo`'s: it shows the model it just trained, whatever day a scoring kept before was as of.
    keep_earlier_day: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Score leads in batch with the champion (or --model-version): the same numbers, grades,
    stages and reasons as the service. Only the champion's scorings are kept for the pages."""
    _use_params_file(params_file)
    _say_stops("score")
    if model_version is not None and model_version.strip().lstrip("@") == "champion":
        model_version = None  # the champion by name is the champion: its scoring is kept as usual
    if engine == "dask":
        if snapshot:
            _fail("--snapshot: the pages keep scorings of --engine local only; score with it to keep one")
        _score_on_dask(source, output, activities, as_of, model_name, model_version, scheduler, partitions, top)
        return
    if engine != "local":
        _fail(f"--engine {engine!r}: use local or dask")
    _refuse_dask_only_flags(engine, {"--scheduler": scheduler, "--partitions": partitions})
    if output.suffix.lower() not in (".csv", ".parquet", ".pq"):
        _fail(f"-o {output}: the scores are written as .csv or .parquet; name the file so")
    # Said before the libraries and the model load (seconds), as reading would say it after.
    for given, flag in ((source, ""), (activities, " (--activities)")):
        if given is not None and not given.exists():
            _fail(f"{given}: file not found{flag}")
    from rich.progress import Progress as RichProgress

    from serving.batch import (
        absent_columns_note,
        file_date_order,
        no_activity_note,
        number_format_note,
        read_leads,
        score_batch,
        stale_export_note,
        write_table,
    )
    from serving.scoring import AliasMissing, ModelNotReady, load_chosen
    from serving.snapshots import latest_as_of, latest_count, scores_dir, write_snapshot

    _quiet_libraries()
    params = _params()
    asked_for_snapshot, snapshot = snapshot, snapshot is not False
    # A version number may be the champion's: known once the registry is read, below.
    by_number = model_version is not None and model_version.strip().lstrip("@").isdigit()
    skipped = model_version is not None and snapshot and not by_number  # said once the version is found
    if skipped:
        _refuse_or_skip_snapshot(model_version, asked_for_snapshot, say=False)
        snapshot = False
    try:
        # Folders made for the checks are removed again: a run stopped below leaves nothing.
        check_writable(output.resolve().parent, what="the scores", probe_bytes=1 << 16, keep_folders=False)
    except OSError as exc:
        _fail(_os_error_text(exc))
    if snapshot:
        try:
            check_writable(
                scores_dir(), what="the scoring snapshot for the pages (LEADSCORE_SCORES_DIR)", keep_folders=False
            )
        except OSError as exc:
            if asked_for_snapshot:
                _fail(_os_error_text(exc))
            # The scores are what the CRM's job waits for: the pages' copy must not stop them.
            console.print(f"[yellow]{escape(_os_error_text(exc))}: the scores will be written, but this run is "
                          "not kept for the pages (--no-snapshot says that is meant)[/yellow]")  # fmt: skip
            snapshot = False
    # After the output checks: a read-only or full models/ folder is the problem to name, not
    # the store that could not be created in it.
    _check_registry(reads_models=True)
    try:
        moment = pd_timestamp(as_of)
        with console.status("Loading the model"):
            model = load_chosen(_model_name(model_name, params), model_version)
        if skipped:
            _refuse_or_skip_snapshot(model_version, asked_for_snapshot)
        if by_number and snapshot and not _is_champion(model):
            _refuse_or_skip_snapshot(model_version, asked_for_snapshot)
            snapshot = False
        flat_schema = model.scorer.spec.settings["flat"] if model.kind == "flat" else None
        if flat_schema is not None and activities is not None:
            _fail(f"{model.name} is a flat model: it reads one row per lead, no --activities")
        read_notes: list[str] = []
        leads, acts, closed = read_leads(
            source, activities, flat_schema=flat_schema, notes=read_notes, statuses=params.data.outcome_statuses
        )
        absent = absent_columns_note(model, leads.columns)
        misread = number_format_note(model, leads)  # a European copy of a US export, or the other way
        for note in [*read_notes, *([absent] if absent else []), *([misread] if misread else [])]:
            console.print(f"[yellow]{escape(note)}[/yellow]")
        future = _warn_if_future(moment)
        day_first = file_date_order(model, leads, acts)  # kept with the snapshot: its pages read dates so
        # A flat model reads no activities, so their age says nothing about its scores.
        stale = stale_export_note(acts, moment, day_first) if as_of is None and flat_schema is None else None
        # As of now, activities after it are not warned about: the stale-export note speaks of old ones.
        unengaged = no_activity_note(model.scorer, leads, acts, moment if as_of else None, day_first)
        for note in (unengaged, stale):
            if note:
                console.print(f"[yellow]{escape(note)}[/yellow]")
        if (unengaged or future or absent or misread) and snapshot and asked_for_snapshot is None:
            # The pages show the latest kept scoring: one where every lead reads as never engaged
            # (most likely a file given without its activities), lacks columns the model learned
            # from, reads numbers written otherwise than its training export's, or is idle until a
            # mistyped year would replace the real one.
            console.print("[dim]not kept for the pages, where it would replace the latest scoring "
                          "(--snapshot keeps it)[/dim]")  # fmt: skip
            snapshot = False
        look_back = snapshot and asked_for_snapshot is None and not keep_earlier_day
        kept_as_of = latest_as_of(model.name) if look_back else None
        # By day: a rerun as of this morning after a scoring as of now is today's picture.
        if kept_as_of is not None and moment.normalize() < kept_as_of.normalize():
            # A look back (--as-of a past day) would show reps last spring's leads as today's, and
            # the digest would count the next scoring's changes against it.
            console.print(f"[dim]not kept for the pages, where it would replace the latest scoring, as of "
                          f"{kept_as_of:%Y-%m-%d %H:%M} UTC, with one of an earlier moment (--snapshot keeps it)"
                          "[/dim]")  # fmt: skip
            snapshot = False
        if closed:
            ids = leads["lead_id"].dropna().astype(str).str.strip()
            console.print(  # a blank id is no lead: its rows are quarantined below
                f"{closed:,} lead row(s) of converted or lost leads left out; scoring the {ids[ids != ''].nunique():,} "
                "open ones"
            )
        with RichProgress(console=console) as progress:
            task = progress.add_task("scoring", total=len(leads))
            result = score_batch(
                model, leads, acts, moment, on_progress=lambda n: progress.advance(task, n), day_first=day_first
            )
        for note in result.notes:
            console.print(f"[yellow]{escape(note)}[/yellow]")
        write_table(result.scored, output)
        # An empty scoring (a mistyped --as-of year, a file of closed leads) must not replace
        # the pages' latest one, and a scheduled job must see that nothing was scored.
        snapshot = snapshot and not result.scored.empty
        before = latest_count(model.name) if snapshot and asked_for_snapshot is None else None
        if before and len(result.scored) * SHRUNK_SCORING < before:
            # A lead or two scored to try something would leave the team's digest showing them alone.
            console.print(f"[dim]not kept for the pages, where it would replace the latest scoring of "
                          f"{_leads(before)} with {_leads(len(result.scored))} "
                          "(--snapshot keeps it)[/dim]")  # fmt: skip
            snapshot = False
    except AliasMissing as exc:
        hint = "; --model-version N scores with a registered version anyway" if model_version is None else ""
        _fail(f"{exc}{hint}")
    except (DataError, ModelNotReady, ParamsError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    if snapshot:
        meta = {"as_of": moment.isoformat(), "model_name": model.name, "model_version": model.version,
                "source": str(source), "output": str(output), "day_first": day_first}  # fmt: skip
        try:
            kept = write_snapshot(result.scored, leads, acts, meta)
        except OSError as exc:  # the disk filled after the check, for one
            said = f"the scores are in {output}, but the snapshot for the pages could not be written: {exc}"
            if asked_for_snapshot:
                _fail(said)
            console.print(f"[yellow]{escape(said)}[/yellow]")
            snapshot = False
    console.print(
        f"Scored {_leads(len(result.scored))} with {model.name} version {model.version} as of {moment} → {output}"
    )
    if snapshot:
        # The pages show the served model's scorings: a service started as this command is set up.
        shown = (f"digest at /ui/digest of a service serving {model.name}" if model.name == _served_model_name()
                 else f"shown by a service started with `leadscore serve --model-name {model.name}`, and by "
                 f"`leadscore report --model-name {model.name}`")  # fmt: skip
        console.print(f"Kept for the pages ({shown}): {kept}")
    quarantine_path = output.with_name(output.stem + ".quarantine.csv")
    if result.quarantine.empty and quarantine_path.is_file():
        # An earlier run's list next to these scores would name rows this input may not have.
        quarantine_path.unlink(missing_ok=True)
        console.print(f"[dim]removed {quarantine_path} of an earlier run: no row was set aside this time[/dim]")
    if not result.quarantine.empty:
        try:
            write_table(result.quarantine, quarantine_path)
        except OSError as exc:
            # An earlier run's list beside these scores would name rows of another input.
            stale = quarantine_path.is_file()
            with contextlib.suppress(OSError):
                quarantine_path.unlink(missing_ok=True)
            _fail(f"the scores are in {output}, but the rows not scored could not be listed in {quarantine_path}: "
                  f"{exc.strerror or exc}" + ("; an earlier run's list there is removed" if stale else ""))  # fmt: skip
        # Lead rows and activity rows are counted apart: only the former are leads left unscored.
        counts = result.quarantine["table"].value_counts()
        kinds = {"leads": "lead", "activities": "activity"}
        by_table = ", ".join(f"{n:,} {kinds.get(table, table)} row(s)" for table, n in counts.items())
        # A lead row repeated exactly is set aside, but its lead is scored from its first row.
        lead_rows = result.quarantine["table"] == "leads"
        repeats = int((lead_rows & result.quarantine["reason"].isin([DUPLICATE_LEAD, DUPLICATE_ROW])).sum())
        verb = "repeats" if repeats == 1 else "repeat"
        # Said of the lead rows: after "1 activity row(s)", "1 of them" read as that activity.
        repeated = (
            f"; {repeats:,} of the lead rows {verb} another exactly, and that lead is scored once" if repeats else ""
        )
        console.print(f"[yellow]{by_table} not scored{repeated}; reasons in {quarantine_path}[/yellow]")
    if result.scored.empty:
        _fail(f"no lead was scored: {_nothing_scored(len(leads), result.quarantine, closed)}")
    counts = result.scored["stage"].value_counts()
    console.print("stages: " + ", ".join(f"{stage} {n:,}" for stage, n in counts.items()))
    if top:
        _print_top(result.scored, top)


def _nothing_scored(open_leads: int, quarantine: Any, closed: int) -> str:
    """Why a scoring came out empty, in the words of its counts (the commonest reasons named)."""
    quarantined = len(quarantine)
    if open_leads:
        # Counted by kind (the reason before its value: each row's date differs) and table.
        kinds = quarantine["table"].astype(str) + ": " + quarantine["reason"].astype(str).str.split(": ").str[0]
        reasons = kinds.value_counts().head(3).items() if quarantined else []
        said = "; ".join(f"{reason} ({n:,})" for reason, n in reasons)
        return f"every one of the {_leads(open_leads)} given was set aside" + (f": {said}" if said else "")
    if closed:
        return f"all {_leads(closed)} of the export are converted or lost"
    return f"the input holds no lead ({quarantined:,} row(s) set aside)" if quarantined else "the input holds no lead"


def _warn_if_future(moment) -> bool:
    """Scoring as of a later moment is allowed (what a score becomes if nothing happens), but
    is more often a mistyped year: say what it means. True when it is later."""
    from features.clean import idle_until_note

    note = idle_until_note(moment, "--as-of")
    if note:
        console.print(f"[yellow]{escape(note)}[/yellow]")
    return note is not None


@app.command()
def demo(
    top: Annotated[int, typer.Option("--top", min=0, help="How many of the best open leads to print")] = 10,
    params_file: ParamsFile = None,
) -> None:
    """Train on the embedded data, register the champion, score its open leads, show the best.

    What `make demo` runs: `train`, then `score` of the embedded export, in one process.
    """
    _use_params_file(params_file)
    # One process: a second one would spend about 10 s starting Python, MLflow and the registry again.
    import pandas as pd

    from training.pipeline import EMBEDDED_DIR, MODELS_DIR

    train(metrics_out=MODELS_DIR / "demo-metrics.json")
    params = _params()
    export_end = pd.Timestamp(params.data.embedded_start) + pd.Timedelta(days=STEP_DAYS * params.data.embedded_months)
    console.print()
    # Kept for the pages even after a scoring as of a later day: the demo shows the model it just
    # trained (the other checks of what is kept stand).
    score(EMBEDDED_DIR, MODELS_DIR / "demo-scores.csv", as_of=export_end.isoformat(), top=top, keep_earlier_day=True)


def _refuse_or_skip_snapshot(model_version: str, asked: bool | None, *, say: bool = True) -> None:
    """The pages explain the latest kept scoring with the champion: another version's would mix.
    `say`: print that the scoring is not kept (not before the version is known to exist)."""
    if asked:
        _fail(f"--snapshot: the pages keep the champion's scorings only, not --model-version {model_version}'s")
    if say:
        console.print(f"[dim]scoring with --model-version {model_version}: not kept for the pages[/dim]")


def _is_champion(model) -> bool:
    """Whether the loaded version is the one @champion points at (False when that cannot be told)."""
    from serving.scoring import ModelNotReady, champion_version

    try:
        return champion_version(model.name) == str(model.version)
    except ModelNotReady:
        return False


def _score_on_dask(
    source: Path,
    output: Path,
    activities: Path | None,
    as_of: str | None,
    model_name: str | None,
    model_version: str | None,
    scheduler: str | None,
    partitions: int | None,
    top: int,
) -> None:
    """`leadscore score --engine dask`: OUTPUT is a folder of partitioned parquet. Not kept for
    the pages."""
    from rich.progress import Progress as RichProgress

    from features.schema import TABLE_FILES
    from features.tracking import tracking_uri
    from serving.batch import absent_columns_note, closed_lead_ids, number_format_note, outcomes_file, stale_note
    from serving.dask_batch import (
        date_order_on_dask,
        file_separator,
        leads_header,
        newest_activity,
        numeric_values_on_dask,
        score_on_dask,
        start_client,
    )
    from serving.scoring import ModelNotReady, load_chosen

    _quiet_libraries()
    params = _params()
    _check_registry(reads_models=True)
    closed: frozenset[str] = frozenset()
    notes: list[str] = []
    if source.is_dir():
        try:  # its open leads, as the local engine scores
            outcomes = outcomes_file(source, notes)
            if outcomes is not None:
                closed = closed_lead_ids(outcomes, None, notes, statuses=params.data.outcome_statuses)
        except DataError as exc:
            _fail(str(exc))
        activities = activities or source / TABLE_FILES["activities"]
        source = source / TABLE_FILES["leads"]
    if activities is None:
        _fail("--engine dask scores CRM leads with their activities: add --activities FILE (CSV or parquet); "
              "a flat model's file scores with --engine local (the default)")  # fmt: skip
    if output.suffix.lower() in (".csv", ".parquet", ".pq"):
        _fail(f"--engine dask writes a folder of parquet files; give a folder, not {output}")
    try:
        moment = pd_timestamp(as_of)
        with console.status("Loading the model"):
            model = load_chosen(_model_name(model_name, params), model_version)
        if model.kind == "flat":
            _fail(f"{model.name} is a flat model: score its file with --engine local (the default)")
        client = start_client(scheduler)
        workers = len(client.scheduler_info()["workers"])
        console.print(f"Dask: {workers} worker(s); dashboard {client.dashboard_link}")
        _warn_if_future(moment)
        absent = absent_columns_note(model, leads_header(source))
        # As --engine local warns, the file's separator told.
        misread = number_format_note(model, numeric_values_on_dask(source), file_separator(source))
        for note in (absent, misread):
            if note:
                console.print(f"[yellow]{escape(note)}[/yellow]")
        day_first = date_order_on_dask(model, source, activities)
        stale = stale_note(newest_activity(activities, day_first=day_first), moment) if as_of is None else None
        if stale:
            console.print(f"[yellow]{escape(stale)}[/yellow]")
        with RichProgress(console=console) as progress:
            task = progress.add_task(f"scoring on {workers} worker(s) (partitions)", total=None)
            run = score_on_dask(
                client, model, tracking_uri(), source, activities, output, moment, partitions=partitions, top=top,
                as_of_given=as_of is not None, day_first=day_first, closed=closed,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )  # fmt: skip
        client.close()
    except (DataError, ModelNotReady, ParamsError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot read or write: {exc.strerror or exc}")
    except typer.Exit:
        raise
    except Exception as exc:  # a failure on the cluster still gets a one-line message
        if os.environ.get("LEADSCORE_DEBUG"):
            raise
        _fail(_cluster_failure(exc) or f"scoring on Dask failed: {type(exc).__name__}: {exc} (set LEADSCORE_DEBUG=1 "
              "to see the traceback)")  # fmt: skip
    for note in [*notes, *run.notes]:
        console.print(f"[yellow]{escape(note)}[/yellow]")
    if run.closed:
        console.print(f"{run.closed:,} lead row(s) of converted or lost leads left out, as --engine local does")
    console.print(
        f"Scored {_leads(run.scored)} with {model.name} version {model.version} as of {moment} on Dask → "
        f"{output}/scores/ ({run.quarantined:,} row(s) not scored: {output}/quarantine/)"
    )
    if not run.scored:
        _fail(f"no lead was scored: reasons in {output}/quarantine/" if run.quarantined else "no lead was scored")
    console.print("stages: " + ", ".join(f"{stage} {n:,}" for stage, n in run.stages.items()))
    console.print("[dim]not kept for the pages: they show scorings of --engine local[/dim]")
    if run.best is not None:
        _print_top(run.best, top)


def _cluster_failure(exc: BaseException) -> str | None:
    """Dask's workers dying, in one line (Dask is imported only by runs that used it)."""
    import sys

    if "distributed" not in sys.modules:
        return None
    from serving.dask_batch import cluster_failure

    return cluster_failure(exc)


def _say_stops(command: str) -> None:
    """SIGTERM and SIGINT end `command` with one line and exit 143 or 130 (SIGTERM ended it
    silently): its files are written whole or not at all (`whole_file`), the blocks removing a
    half-written one run on the way out."""

    def stop(signum: int, frame: Any) -> None:
        err.print(f"{command} stopped by {signal.Signals(signum).name}: what it writes is written whole or not at all")
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (a test's runner): left as it is
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def _fail_cleanly_on_sigterm() -> None:
    """SIGTERM and SIGINT raise `Terminated`, so a stopped command ends as any failure does:
    its MLflow run FAILED, the lock freed, a recalibration's summary saying so (by default Python
    dies at once on SIGTERM, silent, its run left RUNNING and the report folder holding an
    earlier decision; on SIGINT Optuna logged a traceback and the summary still said running)."""

    def stop(signum: int, frame: Any) -> None:
        if stopping.holding():  # a promotion is under way: the command finishes first (`sigterm_held`)
            stopping.note_held(signum)
            return
        if _in_database_call(frame):
            # Raised inside a database call, the exception left its read open, which locked the
            # sqlite store: ending the MLflow run then failed ("database is locked"), the run
            # stayed RUNNING and the exit was 2. The signal comes back once the call is over.
            again = threading.Timer(SIGTERM_RETRY_SECONDS, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        stopping.stop(signum)

    stopping.reset()
    with contextlib.suppress(ValueError):  # not the main thread (a test's runner): left as it is
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


SIGTERM_RETRY_SECONDS = 0.05
# A sqlite or SQL tracking store's calls (short); not an HTTP call to a tracking server, which
# may wait minutes on a server that is down and is safe to interrupt.
DATABASE_CODE = f"{os.sep}sqlalchemy{os.sep}"


def _say_signal_held() -> None:
    """A SIGTERM or SIGINT that came while a promotion was recorded was held back (`sigterm_held`): said."""
    if stopping.held is not None:
        name = signal.Signals(stopping.held).name
        what = "the promotion was being recorded" if stopping.promoting else "the outcome was being recorded"
        err.print(f"{_log_time()}{name} came while {what}: finished that first")


def _in_database_call(frame: Any) -> bool:
    while frame is not None:
        if DATABASE_CODE in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _sigterm_behind(exc: BaseException) -> Terminated | None:
    """The SIGTERM an exception was raised while handling (ending the MLflow run failed as the
    command stopped): the command was stopped, whatever failed on the way out."""
    return _behind(exc, Terminated)


def _behind(exc: BaseException, kind: type[_E]) -> _E | None:
    """`exc` or the first exception of `kind` it was raised while handling or from."""
    return _first_behind(exc, lambda current: isinstance(current, kind))  # type: ignore[return-value]


def _first_behind(exc: BaseException, matches: Callable[[BaseException], bool]) -> BaseException | None:
    seen: set[int] = set()
    waiting: list[BaseException | None] = [exc]
    while waiting:
        current = waiting.pop()
        if current is None or id(current) in seen:
            continue
        if matches(current):
            return current
        seen.add(id(current))
        waiting += [current.__cause__, current.__context__]
    return None


_E = TypeVar("_E", bound=BaseException)


def _file_error_behind(exc: BaseException) -> OSError | None:
    """The error of a file or folder (a full disk, a permission) `exc` came of, not a network
    one (requests' and the built-in connection errors are OSErrors too)."""

    def of_a_file(current: BaseException) -> bool:
        return (isinstance(current, OSError) and not _networked(current)
                and bool(current.filename or current.errno in FILE_ERRNOS))  # fmt: skip

    return _first_behind(exc, of_a_file)  # type: ignore[return-value]


def _networked(exc: BaseException) -> bool:
    """A network error (requests' and urllib3's, and the built-in connection errors, are OSErrors too)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(("requests", "urllib3"))


FILE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT})


def _running_there(report_dir: Path) -> int | None:
    """The process id of another recalibration on this machine whose "running" record is in
    `report_dir` and that still runs, or None (a record of another machine cannot be checked, so
    it is not kept: a stale one would hold the folder for good)."""
    import socket

    try:
        summary = json.loads((report_dir / "summary.json").read_text())
        running = summary.get("decision") == "running" and summary.get("host") == socket.gethostname()
        pid = int(summary["pid"]) if running else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if pid is None or pid == os.getpid():
        return None
    try:  # that process, still a recalibration (not a later process given its number)
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # gone: killed outright, its record stale
    return pid if b"recalibrate" in command else None


def _record_failure(report_dir: Path | None, message: str, code: int | None = None, promoted: bool = False) -> None:
    """A scheduler reading `--report-dir`'s summary.json, or a person opening its report, finds
    why the run did not happen, not an earlier run's decision left there. `code` None: the run
    has started (what a run killed outright leaves); `promoted`: it moved @champion, then failed
    (a scheduler keyed on the decision read "failed" and missed the new champion)."""
    if report_dir is None:
        return
    from training.report_page import report_page

    stopped = {128 + signal.SIGTERM: "stopped", 128 + signal.SIGINT: "stopped"}
    decision = {None: "running", 3: "locked", 4: "no new data", **stopped}.get(code, "failed")
    decision = "promoted, not recorded" if promoted else decision
    summary = {"decision": decision, "why": message, "exit_code": code,
               "at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    if code is None:  # another run given this folder leaves the record of a live run (`_running_there`)
        import socket

        summary.update(pid=os.getpid(), host=socket.gethostname())
    title = "Recalibration running" if code is None else "Recalibration did not run"
    title = "Recalibration promoted; its record is incomplete" if promoted else title
    when = summary["at"] if code is None else f"exit {code}, {summary['at']}"
    markdown = f"# {title}\n\n**Decision: {decision}** ({when})\n\n{message}\n"
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (report_dir / "report.md").write_text(markdown, encoding="utf-8")
        (report_dir / "report.html").write_text(report_page(markdown), encoding="utf-8")
    except OSError:
        pass  # the folder cannot take it (the message says so already): the exit code remains


@app.command()
def recalibrate(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="End of the window (default: the end of the export)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Measure, train and compare; change nothing")] = False,
    if_drifted: Annotated[
        bool, typer.Option("--if-drifted", help="Only recalibrate when drift passes the thresholds in params.yaml")
    ] = False,
    data: Annotated[
        Path | None, typer.Option("--data", help="CRM export folder (default: the embedded data)", **GIVEN_PATH)
    ] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Where to write the report", **GIVEN_PATH)
    ] = None,
    params_file: ParamsFile = None,
) -> None:
    """Retrain on the trailing window, recompute thresholds and grade bands, compare with the
    champion on the newest quarter, measure drift, promote only through the gates, report.

    Exit 0 when it ran (the decision is in the report), 2 when it could not, 3 when another
    recalibration, a rollback or a training run holds the lock, 4 when there is no new data
    since the champion's test, 143 when stopped by SIGTERM, 130 by SIGINT (the champion unchanged)."""
    _use_params_file(params_file)

    def failed(message: str, code: int = 2, promoted: bool = False) -> NoReturn:
        _record_failure(report_dir, message, code, promoted)
        _fail(message, code=code)

    _fail_cleanly_on_sigterm()  # before the imports (seconds): a stop during them is recorded too
    if not console.is_terminal:
        console.print(f"{_log_time(console)}recalibration started (pid {os.getpid()})")
    try:
        if report_dir is not None and (other := _running_there(report_dir)) is not None:
            # Its record stays, whatever ends this run: "locked" written over it read as "try
            # later" after that run was killed.
            console.print(f"[yellow]{escape(str(report_dir))} holds the report of a recalibration still "
                          f"running (pid {other}): this run's outcome is not written there[/yellow]")  # fmt: skip
            report_dir = None
        from training.recalibrate import EXIT_LOCKED, RecalibrationError
        from training.recalibrate import recalibrate as run_recalibration
    except Terminated as exc:
        failed(f"recalibration {exc}; the champion is unchanged", code=exc.exit_code)
    _quiet_libraries()
    try:
        # The arguments first (seconds), then the store and folders.
        params = load_params()
        moment = past_moment(as_of) if as_of else None
        if data is not None:
            export_folder(data)  # a missing folder or a flat CSV is named before the store is read
        _check_model_folders(reads_models=True, fail=failed)
        if report_dir is not None:
            check_writable(report_dir, what="the report")
            # Replaced by the decision when the run ends; left as it is if the run is killed outright.
            _record_failure(report_dir, f"started (pid {os.getpid()}); still running, or killed without a word")
        summary = run_recalibration(
            params, model_name=_model_name(model_name, params), data=data, as_of=moment,
            dry_run=dry_run, if_drifted=if_drifted, report_dir=report_dir, reporter=RichReporter(),
        )  # fmt: skip
        stopping.finish()  # recorded: the exit code says so whatever signal comes now
    except RecalibrationError as exc:
        failed(str(exc) + _kept_quarantine(None, exc.__cause__ or exc), code=exc.exit_code, promoted=exc.promoted)
    except Terminated as exc:
        failed(f"recalibration {exc}; the champion is unchanged", code=exc.exit_code)
    except (DataError, ParamsError) as exc:
        failed(str(exc) + _kept_quarantine(None, exc.__cause__ or exc))
    except typer.Exit:
        raise
    except Exception as exc:  # e.g. the tracking server down half-way: the champion is untouched
        from features.tracking import server_lost

        if stopped := _sigterm_behind(exc):
            failed(f"recalibration {stopped}; the champion is unchanged", code=stopped.exit_code)
        if lost := server_lost(exc, again="Run the recalibration again"):
            failed(f"recalibration stopped: {lost}")
        if isinstance(exc, OSError):
            failed(f"recalibration stopped, the champion is unchanged: {_os_error_text(exc)}")
        if os.environ.get("LEADSCORE_DEBUG"):
            raise
        failed(f"recalibration stopped, the champion is unchanged: {type(exc).__name__}: {exc}")
    _say_signal_held()
    drift = summary["drift"]
    shift = drift["conversion"]
    console.print(
        f"drift of new leads, training part → newest quarter: conversion {shift['reference_rate']:.1%} → "
        f"{shift['recent_rate']:.1%} (z {shift['z']:+.1f}), "
        f"score PSI {drift['score_psi']:.3f}, drifted features: {', '.join(drift['drifted_features']) or 'none'}"
    )
    if "thresholds" in summary:
        old, new = summary["thresholds"]["old"]["criteria"], summary["thresholds"]["new"]["criteria"]
        console.print(
            f"thresholds: MQL score {old['mql']['min_score']} → {new['mql']['min_score']}, "
            f"SQL score {old['sql']['min_score']} → {new['sql']['min_score']}; "
            "grades " + ", ".join(f"{g} from {b:g}" for g, b in summary["thresholds"]["new"]["grade_bands"].items())
        )
    console.print(f"{_log_time(console)}[bold]{summary['decision']}[/bold]: {summary['why']}")
    console.print(f"report: {summary['report']}/report.html (and report.md)")
    if summary.get("exit_code") == EXIT_LOCKED:  # another run promoted while this one trained
        _fail("the champion moved during the run: try again", code=EXIT_LOCKED)
    if summary.get("exit_code"):  # kept the champion because the export looks cut short
        _fail("the export looks cut short (see the failed gate above): a person should look", code=summary["exit_code"])


@app.command()
def rollback(
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    params_file: ParamsFile = None,
) -> None:
    """Make @previous the champion again (the replaced champion becomes @previous).

    A running service picks the change up within `service.reload_seconds`, or at once on POST /reload.
    A recalibration does not promote over a champion a rollback restored; `leadscore promote` does.
    Exits 3 while a recalibration, a training run or another rollback runs (they share a
    lock), 2 when it cannot roll back."""
    _use_params_file(params_file)
    import mlflow
    from mlflow.exceptions import MlflowException

    from features.tracking import lock_path, shown_uri, tracking_uri
    from training.recalibrate import LockUnavailable, RecalibrationError, exclusive
    from training.register import PREVIOUS
    from training.register import rollback as roll_back

    _quiet_libraries()
    params = _params()
    name = _model_name(model_name, params)
    _check_registry(reads_models=True)
    mlflow.set_tracking_uri(tracking_uri())
    from serving.scoring import ModelNotReady, champion_version, load_champion

    try:
        previous = champion_version(name, PREVIOUS)
    except ModelNotReady:
        previous = None  # no such model or alias, or no registry: the rollback itself says which
    if previous is not None:
        try:
            # A version the service cannot load would leave it serving the old one, `/model`
            # saying it is no longer the champion (a newer release's bundle, say): not rolled back to.
            load_champion(name, PREVIOUS, version=previous)
        except ModelNotReady as exc:
            _fail(f"not rolled back: @{PREVIOUS} cannot be served from this checkout: {exc}")
    try:
        # A recalibration promoting meanwhile would undo the rollback or be undone by it.
        with exclusive(lock_path(params.recalibration.lock_file), job="rollback"):
            now, was = roll_back(name)
    except RecalibrationError as exc:
        _fail(f"{exc}: try again after it finishes", code=exc.exit_code)
    except ValueError as exc:
        _fail(str(exc))
    except LockUnavailable as exc:
        _fail(f"not rolled back: {exc}")
    except (MlflowException, OSError) as exc:
        _fail(f"registry {shown_uri(tracking_uri())} not usable: {exc}")
    console.print(
        f"{name}: version {now} is @champion again (version {was} is now @previous; a second rollback would bring "
        f"it back). A running service takes it within {params.service.reload_seconds:g} s, or at once on POST "
        "/reload. A scheduled `leadscore recalibrate` keeps it until a version is promoted by hand (`leadscore "
        "promote`)."
    )


@app.command()
def versions(
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many of the newest versions")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout, for a script")] = False,
    params_file: ParamsFile = None,
) -> None:
    """List the registered versions, newest first: aliases, when registered, test ROC AUC and ECE,
    whether the registration gates passed, and the run (or whose model a rules version holds)."""
    _use_params_file(params_file)
    from mlflow.exceptions import MlflowException

    from features.tracking import shown_uri, tracking_uri
    from training.versions import list_versions, tested_apart

    _quiet_libraries()
    params = _params()
    name = _model_name(model_name, params)
    _check_registry(reads_models=True)
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        found = list_versions(name, limit)
    except ValueError as exc:
        _fail(str(exc))
    except (MlflowException, OSError) as exc:
        _fail(f"registry {shown_uri(tracking_uri())} not usable: {exc}")
    if as_json:
        rows = [{**dataclasses.asdict(info), "registered": info.registered.isoformat()} for info in found]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{name} in {shown_uri(tracking_uri())}")
    for column, justify in (("version", "right"), ("aliases", "left"), ("registered (UTC)", "left"),
                            ("kind", "left"), ("test ROC AUC", "right"), ("ECE", "right"), ("tested on", "left"),
                            ("gates", "left"), ("run / model", "left")):  # fmt: skip
        table.add_column(column, justify=justify)
    for info in found:
        gates = {True: "passed", False: "[yellow]failed[/yellow]", None: "?"}[info.gates_passed]
        if info.run_ended in ("FAILED", "KILLED"):  # stopped after registering: `promote` asks for a say-so
            gates += f" [yellow](run {info.run_ended.lower()})[/yellow]"
        elif info.run_ended == "RUNNING":  # still training, or killed outright: `promote` asks too
            gates += " [yellow](run not ended)[/yellow]"
        table.add_row(
            info.version, ", ".join(f"@{a}" for a in info.aliases), f"{info.registered:%Y-%m-%d %H:%M}",
            info.kind or "?", _figure(info.test_roc_auc), _figure(info.test_ece), info.test_period or "?", gates,
            escape(info.note),
        )  # fmt: skip
    console.print(table)
    if tested_apart(found):
        console.print(
            "Versions tested on other periods or rows were tested on other leads: their test figures do not "
            "compare directly. For a CRM model, `leadscore recalibrate --dry-run` compares a challenger with the "
            "champion on one period."
        )
    console.print("[dim]`leadscore promote VERSION` makes one the champion; `leadscore rollback` swaps back.[/dim]")


def _figure(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="A version number (7) or an alias (challenger)", metavar="VERSION")],
    despite_gates: Annotated[
        bool,
        typer.Option(
            "--despite-gates",
            help="Promote even though a registration gate failed, or it and the champion were never compared "
            "(recorded on the version)",
        ),
    ] = False,
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    params_file: ParamsFile = None,
) -> None:
    """Make a registered version the champion (a challenger after review, say); the current one
    becomes @previous, so `leadscore rollback` undoes it.

    Only when its training run passed the registration gates and it and the champion were
    compared by them, unless --despite-gates. Exits 2 when it cannot (or would not), 3 while a
    training run, recalibration or rollback holds the lock or when the champion moved meanwhile."""
    _use_params_file(params_file)
    from mlflow.exceptions import MlflowException

    from features.tracking import lock_path, shown_uri, tracking_uri
    from serving.scoring import ModelNotReady, load_chosen
    from training.recalibrate import EXIT_LOCKED, LockUnavailable, RecalibrationError, exclusive
    from training.register import ChampionMoved, lift_rollback_hold
    from training.versions import promote_version, promotion_check

    _quiet_libraries()
    if not version.strip().lstrip("@"):
        _fail("VERSION is empty: give a version number (7) or an alias (challenger)")
    params = _params()
    name = _model_name(model_name, params)
    _check_registry(reads_models=True)
    try:
        with console.status(f"Loading {name} {version}"):
            # One the service could not load would leave it serving the old champion.
            chosen = load_chosen(name, version)
    except ModelNotReady as exc:
        _fail(f"not promoted: {exc}")
    try:
        check = promotion_check(name, chosen.version)
        if check.champion == chosen.version:
            if lift_rollback_hold(name, str(chosen.version)):
                console.print(f"{name} v{chosen.version} is already @champion; the hold its rollback put on scheduled "
                              "recalibrations is lifted (they may replace it again)")  # fmt: skip
            else:
                console.print(f"{name} v{chosen.version} is already @champion: nothing to do")
            return
        if check.problems and not despite_gates:
            _fail(f"not promoted: {'; '.join(check.problems)}. Give --despite-gates to promote it anyway "
                  "(recorded on the version)")  # fmt: skip
        with exclusive(lock_path(params.recalibration.lock_file), job="promote"):
            was = promote_version(name, check)
    except RecalibrationError as exc:
        _fail(f"{exc}: not promoted; try again after it finishes", code=exc.exit_code)
    except ChampionMoved as exc:
        _fail(f"not promoted: {exc}", code=EXIT_LOCKED)
    except LockUnavailable as exc:
        _fail(f"not promoted: {exc}")
    except (MlflowException, OSError) as exc:
        _fail(f"registry {shown_uri(tracking_uri())} not usable: {exc}")
    overridden = f" despite: {'; '.join(check.problems)}" if check.problems else ""
    previous = f"; v{was} is @previous (`leadscore rollback` undoes this)" if was else ""
    console.print(
        f"{name}: version {chosen.version} is @champion{previous}. A running service takes it within "
        f"{params.service.reload_seconds:g} s, or at once on POST /reload.{escape(overridden)}"
    )


@app.command()
def criteria(
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Register the champion's model with params.yaml's rules as a new version and make it the champion "
            "(the current one becomes @previous)",
        ),
    ] = False,
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    params_file: ParamsFile = None,
) -> None:
    """Compare the champion's qualification rules and grade bands with params.yaml's, and show what
    they would change on the latest kept scoring; --apply puts them into service without retraining.

    The new version holds the champion's very model, so scores stay as they are; only stages,
    grades and next actions move. `leadscore rollback` undoes it. Exits 0 when shown or applied
    (or nothing differs), 2 when it cannot, 3 while a training run, recalibration or rollback
    holds the lock or when the champion moved meanwhile, 143 when stopped by SIGTERM (130 by SIGINT)."""
    _use_params_file(params_file)
    from mlflow.exceptions import MlflowException

    from features.tracking import lock_path, shown_uri, tracking_uri
    from serving.scoring import ModelNotReady, load_champion
    from serving.snapshots import latest_two, list_snapshots
    from training.recalibrate import EXIT_LOCKED, LockUnavailable, RecalibrationError, exclusive
    from training.register import ChampionMoved
    from training.rules import (
        effect_on,
        fitted_changes,
        proposed_rules,
        register_with_rules,
        retrain_only_changes,
        rule_differences,
        thresholds_job,
        with_rules,
    )

    _quiet_libraries()
    params = _params()
    name = _model_name(model_name, params)
    if apply:
        try:
            _check_model_folders(reads_models=True)
        except OSError as exc:  # a read-only models folder or store: one line, not a traceback
            _fail(f"nothing applied: {_os_error_text(exc)}")
    else:
        _check_registry(reads_models=True)
    try:
        with console.status("Loading the champion"):
            model = load_champion(name)
    except ModelNotReady as exc:
        _fail(str(exc))
    rules, bands = proposed_rules(model, params)
    changes = rule_differences(model, rules, bands)
    source = os.environ.get("LEADSCORE_PARAMS") or "params.yaml"
    if model.kind == "flat":
        console.print(f"[dim]{name} is a flat model: it is an MQL from score {rules['mql']['min_score']:g}, as its "
                      "training fitted (flat.mql_top_share), whatever criteria.mql says; SQL from the larger of that "
                      "and criteria.sql.min_score.[/dim]")  # fmt: skip
    for change in retrain_only_changes(model, params):
        console.print(f"[yellow]{escape(str(change))}: the ideal customer profile is a feature (icp_match), which "
                      "only training changes (`leadscore train` or `leadscore recalibrate`)[/yellow]")  # fmt: skip
    if not changes:
        console.print(f"{name} v{model.version} (@champion) already qualifies and grades by the rules of {source}: "
                      "nothing to apply")  # fmt: skip
        return
    table = Table(title=f"Rules of {name} v{model.version} (@champion) and of {source}")
    table.add_column("rule")
    table.add_column(f"v{model.version}")
    table.add_column(source)
    for change in changes:
        table.add_row(change.name, escape(_shown_rule(change.old)), escape(_shown_rule(change.new)))
    console.print(table)
    fitted = fitted_changes(changes)
    if fitted and thresholds_job(model) == "recalibrate":
        console.print(f"[yellow]v{model.version}'s {', '.join(fitted)} were fitted to the data by a recalibration; "
                      f"{'--apply replaces' if apply else 'applying would replace'} them with {source}'s (copy "
                      f"v{model.version}'s into the file to keep them)[/yellow]")  # fmt: skip
    proposed = with_rules(model, rules, bands)
    latest, _ = latest_two(model_name=name)
    effect = None
    if latest is None:
        console.print(f"[dim]No kept scoring of {name} to show the effect on (`leadscore score` keeps one).[/dim]")
    else:
        try:
            with console.status(
                f"Scoring the {len(latest.scores):,} leads of the latest kept scoring under both rules"
            ):
                effect = effect_on(latest, model, proposed)
        except DataError as exc:  # a scoring this model cannot read again: the rules still apply
            console.print(f"[yellow]the latest kept scoring ({latest.path}) cannot be scored again with "
                          f"v{model.version}, so no effect is shown: {escape(str(exc))}[/yellow]")  # fmt: skip
        else:
            _print_effect(effect, latest, model.version)
    if not apply:
        # The command to run, with the options of this one: without `--params` it would read params.yaml.
        given = [f"--model-name {shlex.quote(model_name)}"] * bool(model_name)
        given += [f"--params {shlex.quote(str(params_file))}"] * bool(params_file)
        command = escape(" ".join(["leadscore criteria --apply", *given]))
        console.print(
            f"Nothing changed. `{command}` registers this model with these rules as a new version "
            "and makes it the champion (`leadscore rollback` undoes it)."
        )
        return
    _fail_cleanly_on_sigterm()
    try:
        with exclusive(lock_path(params.recalibration.lock_file), job="criteria"):
            version, was = register_with_rules(model, rules, bands, changes, params, RichReporter())
        stopping.finish()
    except RecalibrationError as exc:
        _fail(f"{exc}: nothing applied; try again after it finishes", code=exc.exit_code)
    except ChampionMoved as exc:
        _fail(str(exc), code=EXIT_LOCKED)
    except Terminated as exc:
        _fail(f"criteria {exc}; the champion is unchanged", code=exc.exit_code)
    except LockUnavailable as exc:
        _fail(f"nothing applied: {exc}")
    except (MlflowException, OSError) as exc:
        if stopped := _sigterm_behind(exc):
            _fail(f"criteria {stopped}; the champion is unchanged", code=stopped.exit_code)
        _fail(f"registry {shown_uri(tracking_uri())} not usable, the champion is unchanged: {exc}")
    _say_signal_held()
    console.print(
        f"{name}: version {version} (v{was}'s model with the rules of {source}) is @champion; v{was} is @previous "
        f"(`leadscore rollback` undoes this). A running service takes it within {params.service.reload_seconds:g} s, "
        "or at once on POST /reload."
    )
    newest = list_snapshots(model_name=name)[-1:] if effect is not None else []
    if effect is not None and newest and newest[0] != latest.path:
        # A scoring kept while this ran is the pages' latest: a copy of the one before under the
        # new rules would bury it (the digest showed the older leads, its moves called the rules').
        console.print(f"[dim]not kept for the pages: {newest[0]} was kept while this ran, and stays the latest; "
                      "`leadscore score` again gives its leads under the new rules[/dim]")  # fmt: skip
    elif effect is not None:
        from serving.snapshots import write_snapshot

        meta = {**latest.meta, "model_version": version, "rescored_for_rules_of": str(latest.path.name)}
        meta.pop("written_at", None)
        try:
            kept = write_snapshot(effect.new.assign(model_version=version), latest.leads, latest.activities, meta)
        except OSError as exc:
            said = escape(_os_error_text(exc))
            console.print(f"[yellow]the pages keep showing the latest scoring's stages until `leadscore score` runs "
                          f"again: its copy under the new rules could not be written ({said})[/yellow]")  # fmt: skip
        else:
            console.print(f"The pages show the same leads under the new rules: {kept}")


def _shown_rule(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def _print_effect(effect: Any, latest: Any, version: str) -> None:
    """Stage and grade counts of the kept scoring's leads now and under the new rules."""
    scored_by = latest.meta.get("model_version")
    other = f"; that scoring was made by v{scored_by}, both columns here by v{version}" if scored_by != version else ""
    console.print(
        f"On the {len(effect.now):,} leads of the latest kept scoring (as of {latest.as_of}{other}); scores stay as "
        "they are:"
    )
    for column in ("stage", "grade"):
        counts = effect.counts(column)
        table = Table()
        table.add_column(column)
        table.add_column("now", justify="right")
        table.add_column("new rules", justify="right")
        for value, row in counts.iterrows():
            table.add_row(escape(str(value)), f"{row['now']:,}", f"{row['new']:,}")
        console.print(table)
        moves = effect.moves(column)
        if len(moves):
            shown = ", ".join(f"{move} {n:,}" for move, n in moves.head(6).items())
            console.print(f"{int(moves.sum()):,} leads change {column}: {escape(shown)}")
        else:
            console.print(f"no lead changes {column}")


@app.command()
def report(
    leads_file: Annotated[
        Path, typer.Option("--leads", help="Lead ids: a text file (one per line) or a CSV with lead_id", **GIVEN_PATH)
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the HTML pages", **GIVEN_PATH)],
    model_name: Annotated[str | None, typer.Option("--model-name", help=MODEL_NAME_HELP)] = None,
    params_file: ParamsFile = None,
) -> None:
    """Write the pages (digest, one page per lead, model) as static HTML for a list of leads,
    from the latest kept scoring (see `leadscore score`), to send without the service."""
    _use_params_file(params_file)
    _say_stops("report")
    from serving.pages import write_report
    from serving.scoring import ModelNotReady, load_champion
    from serving.snapshots import latest_two, scores_dir

    _quiet_libraries()
    params = _params()
    _check_registry(reads_models=True)
    try:
        lead_ids = _read_lead_ids(leads_file)
        name = _model_name(model_name, params)
        # The model first: a name with no model gets that said, not advice to score with it.
        with console.status("Loading the champion model"):
            model = load_champion(name)
        latest, previous = latest_two(model_name=name)
        if latest is None:
            raise DataError(f"no kept scoring of {name} in {scores_dir()}; run `leadscore score EXPORT -o FILE "
                            f"--model-name {name}` first")  # fmt: skip
        with console.status(f"Writing {len(lead_ids):,} lead pages"):
            missing = write_report(model, latest, previous, lead_ids, out)
    except (DataError, ModelNotReady, ParamsError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    from features.clean import control_escaped

    # Ids as text: an ids file from a CRM may hold escape codes, which a terminal would run.
    shown = ", ".join(map(control_escaped, missing[:10])) + (" ..." if len(missing) > 10 else "")
    if missing and len(missing) == len(lead_ids):  # a wrong file or a wrong model: nothing was written
        _fail(f"none of the lead(s) asked for is in the scoring as of {latest.as_of}: {shown}; {out} is unchanged")
    written = len(lead_ids) - len(missing)
    console.print(
        f"Wrote {written:,} lead page{'' if written == 1 else 's'}, the digest and the model page to {out}/index.html"
    )
    if missing:
        said = f"{len(missing):,} lead(s) not in the scoring as of {latest.as_of}: {shown}"
        console.print(f"[yellow]{escape(said)}[/yellow]")


def _read_lead_ids(path: Path) -> list[str]:
    """Lead ids from a text file (one per line) or a CSV file with a lead_id column (any
    spelling the exports' headers may have: `Lead ID`), alone or among others."""
    import csv

    from features.schema import contract_names

    if path.is_dir():
        raise DataError(f"{path}: a folder; give a file of lead ids (one per line, or a CSV with lead_id)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    first = next(csv.reader(lines[:1]), [])
    header = [contract_names([cell.strip()], "leads")[0].get(cell.strip(), cell.strip()) for cell in first]
    if "lead_id" in header and len(header) == 1:
        ids = [_unquoted(line.strip()) for line in lines[1:]]  # one column: one id per line, as a list
        ids = [lead_id for lead_id in ids if lead_id]
    elif "lead_id" in header:
        column = header.index("lead_id")
        rows = []
        for number, line in enumerate(lines[1:], start=2):
            try:  # line by line: a quote opened and never closed would take the lines after it
                rows.append([cell.strip() for cell in next(csv.reader([line], strict=True))])
            except csv.Error:
                raise DataError(f"{path}: row {number} opens a quote that is not closed on its line") from None
        ids = [row[column] for row in rows if column < len(row) and row[column]]
    elif len(header) > 1:
        raise DataError(f"{path}: a CSV needs a lead_id column; columns are {', '.join(first[:20])}")
    else:
        # One id per line, read line by line: an id that opens a quote (`"x`) must not swallow
        # the lines after it as CSV quoting would. A line wholly in quotes is unquoted.
        ids = [_unquoted(line.strip()) for line in lines]
        ids = [lead_id for lead_id in ids if lead_id]
    if not ids:
        raise DataError(f"{path}: no lead ids")
    return list(dict.fromkeys(ids))


def _unquoted(cell: str) -> str:
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"').strip()
    return cell


def _print_top(scored, count: int) -> None:
    """The best leads, as a sales manager would want them on Monday morning."""
    from serving.snapshots import best_first

    best = best_first(scored).head(count)
    table = Table(title=f"Top {len(best)} leads")
    for name in ("lead", "score", "grade", "fit", "eng.", "stage", "why", "next action"):
        table.add_column(name, overflow="fold")
    for row in best.itertuples():
        reasons = json.loads(row.reasons) if isinstance(row.reasons, str) else row.reasons
        why = "; ".join(r["text"] for r in reasons[:2])
        table.add_row(_shown_text(row.lead_id), f"{row.score:.1f}", row.grade, f"{row.fit:.0f}",
                      f"{row.engagement:.0f}", row.stage, _shown_text(why), _shown_text(row.next_action))  # fmt: skip
    console.print(table)


def _shown_text(value: object) -> str:
    """A CRM's text as printed on a terminal: brackets as written, not rich markup (`M2[/]` was
    a traceback, `[link=...]` a link), and control characters as escapes, not run."""
    from features.clean import control_escaped

    return escape(control_escaped(str(value)))


def pd_timestamp(text: str | None):
    """A moment from the command line (UTC), or now."""
    import pandas as pd

    # pandas reads "now" and "today" (both the current moment) in the machine's local time: moments here are UTC.
    from features.clean import FIRST_YEAR, LAST_YEAR, iso_offsets, utc_now

    if not text or text.strip().casefold() in ("now", "today"):
        return utc_now().floor("s")  # no microseconds in the output

    try:
        moment = pd.Timestamp(iso_offsets(pd.Series([text])).iloc[0])
    except ValueError as exc:
        raise DataError(f"--as-of {text!r} is not a date or timestamp") from exc
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise DataError(f"--as-of {text}: outside the years {FIRST_YEAR}-{LAST_YEAR} that moments are read in")
    moment = moment.as_unit("ns").floor("us")  # to the microsecond, as files and the service read moments
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo else moment


def past_moment(text: str):
    """`--as-of` of a command that reads an export: a moment no later than today."""
    from features.clean import latest_moment

    moment = pd_timestamp(text)
    if moment > latest_moment():
        raise DataError(f"--as-of {text}: after today (UTC); an export holds only the past")
    return moment


def _unwrapped(doc: str) -> str:
    """A docstring as help text: its paragraphs each on one line, so that the help wraps them
    at the terminal's width (typer keeps single line breaks, which break lines mid-sentence)."""
    return "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    _command.help = _command.help or _unwrapped(_command.callback.__doc__ or "")

if __name__ == "__main__":
    app()
