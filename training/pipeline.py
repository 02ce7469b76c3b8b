"""The training run: data -> features -> split -> tune -> train -> calibrate -> evaluate ->
register, tracked in one MLflow parent run with a nested run per Optuna trial."""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from features.build import (
    build_crm_features,
    crm_feature_groups,
    engagement_direction,
    idle_engagement,
    never_as_long_ago,
)
from features.bundle import score_from_probability, write_bundle_files
from features.fit import learn_tech_spellings, learn_tech_vocabulary, unmatched_icp_entries
from features.flat import FlatProfile, flat_feature_groups, load_flat, model_column_name, read_as_model
from features.ingest import DataError, Quarantine, as_of_view, load_crm
from features.leakage import audit_leakage
from features.params import PROJECT_ROOT, FeatureParams, Params, TuningParams
from features.reasons import amount_of_activity
from features.schema import TRUTH_FILE
from features.spec import FeatureSpec, learn_spec, to_model_frame
from features.synthetic import generate_crm, write_crm
from features.tracking import MODELS_DIR, artifact_root, tracking_uri
from serving.batch import safe_for_spreadsheets
from training.abandoned import end_abandoned_runs, heartbeat, process_tags
from training.baselines import fit_baselines
from training.calibrate import choose_calibrator
from training.evaluate import classification_metrics, conversion_by_grade, lift_by_decile, test_evaluation
from training.examples import build_examples
from training.plots import evaluation_plots, shap_summary_plot
from training.progress import PrintReporter, Reporter  # noqa: F401 (PrintReporter: for notebooks)
from training.register import (
    CHALLENGER,
    CHAMPION,
    ChampionCheck,
    ChampionMoved,
    Gate,
    champion_auc,
    check_gates,
    describe_version,
    log_bundle,
    promote,
    set_alias,
)
from training.split import CV_FOLDS, SplitReport, split_by_time, split_stratified, tested_on
from training.stopping import sigterm_held
from training.thresholds import top_share_threshold
from training.train import fit_final, learned_settings, out_of_fold_margins
from training.tune import TPE_STARTUP_TRIALS, TuningResult, refit_constrained, tune, tune_cv

logger = logging.getLogger(__name__)
EMBEDDED_DIR = MODELS_DIR / "embedded"


# Under this shortfall in test ROC AUC, the tuned model and a baseline are level: one split's
# noise (the spread over seeds in BENCHMARKS.md is 0.002-0.005).
LEVEL_AUC = 0.002


def replaced_thresholds(champion: ChampionCheck, criteria: dict[str, Any], grade_bands: dict[str, float]) -> str | None:
    """What a training run says when the champion's MQL/SQL scores or grade bands are not this
    run's: the new model takes the params file's, and thresholds a recalibration fitted to the
    data would be replaced without a word (an edit of the file is meant to replace them)."""
    if not champion.criteria:
        return None
    old = (champion.criteria["mql"]["min_score"], champion.criteria["sql"]["min_score"])
    new = (criteria["mql"]["min_score"], criteria["sql"]["min_score"])
    bands_differ = champion.grade_bands is not None and champion.grade_bands != grade_bands
    if old == new and not bands_differ:
        return None

    def bands(given: dict[str, float]) -> str:
        return "/".join(f"{bound:g}" for bound in given.values())

    shown = [f"MQL from score {old[0]:g} and SQL from {old[1]:g}"] if old != new else []
    taken = [f"{new[0]:g} and {new[1]:g}"] if old != new else []
    if bands_differ:
        shown.append(f"grades from {bands(champion.grade_bands)}")
        taken.append(f"grades {bands(grade_bands)}")
    return (
        f"champion v{champion.version} qualifies {' with '.join(shown)}; this model takes the params file's "
        f"{', '.join(taken)}. If a recalibration set the champion's, run `leadscore recalibrate` after this run "
        "to fit them to the data again"
    )


def trailing_baseline_warnings(
    test_auc: float,
    baselines: dict[str, dict[str, float]],
    audit: pd.DataFrame,
    used_columns: list[str],
    kind: str = "flat",
    few_trials: bool = False,
) -> list[str]:
    """A warning when a baseline beats the tuned model on the test rows, with where to look
    (first the tuning budget, when `few_trials` ran: `few_trials_warnings`).

    The registration gate tolerates a small shortfall, so without this the user would only see
    it by comparing rows of the results table.
    """
    name, best = max(baselines.items(), key=lambda item: item[1]["roc_auc"])
    if test_auc >= best["roc_auc"]:
        return []
    if best["roc_auc"] - test_auc < LEVEL_AUC:
        # Advice on leaks and search spaces for a shortfall of 0.0001 sent users after noise.
        return [
            f"the tuned model (ROC AUC {test_auc:.4f}) is level with the {name.replace('_', ' ')} baseline "
            f"({best['roc_auc']:.4f}) on the test rows: a shortfall of {best['roc_auc'] - test_auc:.4f} is within "
            "the noise of one split"
        ]
    strongest = audit.loc[audit["column"].isin(used_columns)].head(3)
    suspects = ", ".join(f"{row.column} ({row.auc:.3f})" for row in strongest.itertuples())
    leave_out = (
        "leave it out (--drop)." if kind == "flat" else "export it as it stood before the outcome, or not at all."
    )
    if few_trials:
        # Slow trials are themselves a sign: a column that nearly gives the outcome away keeps
        # each trial boosting for a thousand rounds (Leads.csv as it comes: 4 trials in 100 s).
        return [
            f"the tuned model (ROC AUC {test_auc:.4f}) trails the {name.replace('_', ' ')} baseline "
            f"({best['roc_auc']:.4f}) on the test rows, with too few tuning trials to tell more (above). Raise the "
            "tuning budget, and look at the strongest single columns the model uses, since a column that nearly "
            f"gives the outcome away also makes each trial slow: {suspects}; if any is recorded after the outcome "
            f"is known, {leave_out}"
        ]
    return [
        f"the tuned model (ROC AUC {test_auc:.4f}) trails the {name.replace('_', ' ')} baseline "
        f"({best['roc_auc']:.4f}) on the test rows. A small shortfall can be the noise of one split; a "
        "steady one means the search space (tuning.search_space in params.yaml) does not suit this data, "
        "e.g. shallow trees where the signal sits in deep interactions, as with columns that nearly give "
        f"the outcome away. The strongest single columns the model uses: {suspects}; if any is "
        f"recorded after the outcome is known, {leave_out}"
    ]


def few_trials_warnings(trials: int, tuning: TuningParams, job: str = "train") -> list[str]:
    """A warning when the time budget stopped tuning before TPE began to search: the first
    trials are random draws (a busy machine slows each one several times over). It names the
    setting that holds `job`'s budget: a recalibration's is its own."""
    if trials >= min(tuning.trials, TPE_STARTUP_TRIALS):
        return []
    setting = (
        "recalibration.timeout_seconds in the params file"
        if job == "recalibrate"
        else "tuning.timeout_seconds in the params file (`train` also takes --timeout)"
    )
    return [
        f"only {trials} of at most {tuning.trials} tuning trials fit in the {tuning.timeout_seconds:g} s budget: "
        f"the first {TPE_STARTUP_TRIALS} are random draws, so the search hardly ran. Raise {setting} or run it "
        "when the machine is less busy"
    ]


# A constrained refit this far below the best trial on validation is worth a warning: on the
# embedded data the constraints cost 0.0008 validation ROC AUC (0.8106 to 0.8098).
CONSTRAINT_COST_WARNING = 0.01


def constraint_cost_warnings(tuning: TuningResult, metric: str) -> list[str]:
    """A warning when constraining engagement by its meaning cost the data at hand clearly more
    validation score than it costs the embedded data, naming the setting that turns it off."""
    if tuning.constrained_valid_score is None:
        return []
    worse = tuning.constrained_valid_score - tuning.best_valid_score
    cost = -worse if metric == "auc" else worse  # log loss: lower is better
    if cost < CONSTRAINT_COST_WARNING:
        return []
    return [
        f"constraining engagement by its meaning (tuning.engagement_monotone) cost {cost:.4f} validation {metric} "
        f"({tuning.best_valid_score:.4f} for the best trial, {tuning.constrained_valid_score:.4f} constrained; "
        "about 0.001 on the embedded data). Set it to false in the params file if accuracy matters more here than "
        "a score that one more activity never lowers"
    ]


def quarantine_counts(quarantine: Quarantine) -> list[str]:
    """Quarantined rows counted by table and kind of reason, in words."""
    rows = quarantine.frame()
    if rows.empty:
        return []
    kinds = rows["reason"].str.split(":").str[0]
    return [f"{count:,} {table_name} row(s): {reason}"
            for (table_name, reason), count in rows.groupby([rows["table"], kinds]).size().items()]  # fmt: skip


def report_quarantine(quarantine: Quarantine, reporter: Reporter) -> None:
    """Quarantined rows counted by table and reason, then the notes on cleaned values."""
    for counted in quarantine_counts(quarantine):
        reporter.warn(f"quarantined {counted}")
    for note in quarantine.notes:
        reporter.note(note)


@dataclass
class Dataset:
    """Examples ready for the model: raw features, labels, keys and how they were split."""

    kind: str
    features: pd.DataFrame
    label: pd.Series
    keys: pd.DataFrame
    split: SplitReport
    groups: dict[str, str]
    settings: dict[str, Any]
    quarantine: Quarantine
    data_hash: str
    source: str
    truth: pd.Series | None = None
    timings: dict[str, float] = field(default_factory=dict)
    id_leaks: dict[str, str] = field(default_factory=dict)  # identifiers that give the label away
    export_end: pd.Timestamp | None = None  # a CRM export's newest moment (or its --as-of view's)
    has_activities: bool = True  # False: a CRM export without one usable activity
    activities_cut: str | None = None  # why its activities look cut short (`activities_end_early`)
    # The features of the chosen examples as another model reads them, or None when they are this
    # run's: CRM, built with its feature settings and technologies (a champion's own); flat, its
    # schema's number reading (`own_reading`), of the test rows only.
    features_for: Callable[[dict[str, Any], list[str], np.ndarray], pd.DataFrame | None] | None = None
    # CRM: features of the leads first seen after the newest labelled snapshot, and that snapshot.
    unlabelled_new_leads: Callable[[], tuple[pd.DataFrame, pd.Timestamp | None]] | None = None


def _leads_end_early(keys: pd.DataFrame, export_end: pd.Timestamp | None) -> str | None:
    """Why the newest periods hold no lead when the leads end long before the other files do
    (a leads file cut short, or exported over fewer months than the activities), else None."""
    if not {"lead_id", "as_of"} <= set(keys.columns) or keys.empty:
        return None
    newest_lead = keys.groupby("lead_id")["as_of"].min().max()
    newest = keys["as_of"].max()
    if export_end is None or newest - newest_lead < pd.Timedelta(days=90):
        return None
    return (
        f"no lead is first seen after {newest_lead.date()}, yet the export runs to {export_end.date()} (the "
        "day after its newest outcome): leads.csv ends months before the other files; was it cut "
        "short or exported over fewer months? Export leads, activities and outcomes over the same dates"
    )


def activities_end_early(occurred: pd.Series, export_end: pd.Timestamp) -> str | None:
    """Why a CRM export's activities look cut short (a file cut at a line break, a job still
    writing it, fewer months exported), else None: they end before its newest lead or close by
    more than two weeks and twice the longest pause between days of activity before (a first
    holiday shutdown of a week or so, with web leads still coming in, is not a cut)."""
    days = pd.Series(occurred[occurred < export_end].dropna().dt.floor("D").unique()).sort_values()
    if len(days) < 2:
        return None  # no usable activity is said elsewhere (`has_activities`)
    last_day = export_end - pd.Timedelta(days=1)  # the newest lead or close
    gap = last_day - days.iloc[-1]
    longest = days.diff().max()
    if gap <= max(pd.Timedelta(days=14), 2 * longest):
        return None
    return (
        f"activities.csv ends on {days.iloc[-1].date()}, {gap.days} days before the newest lead or close "
        f"({last_day.date()}), where its longest pause before was {longest.days} day(s): was it cut short (a job "
        "still writing it, or exported over fewer months)? The newest leads read as never engaged"
    )


def closes_missing_late(keys: pd.DataFrame, label: pd.Series, horizon_days: int) -> str | None:
    """Why the newest snapshots of a CRM export convert far less than the ones just before them
    (their closes missing: outcomes.csv exported before the other files), else None.

    The newest snapshots are named while each holds at least 20 expected conversions at the
    median rate of the six snapshots before the newest, fewer than half of them, and a count that
    rate makes a 1-in-10,000 chance: drift and seasonality move a snapshot's rate by a fraction,
    not that far from one month to the next. (Against the whole history's median, an export of
    many leads that never close warned: each later snapshot holds more of them, so its rate sinks
    slowly.)"""
    if "as_of" not in keys.columns or keys.empty:
        return None
    counts = pd.DataFrame({"as_of": keys["as_of"].to_numpy(), "label": label.to_numpy()}).groupby("as_of")["label"]
    table = counts.agg(["size", "sum"]).sort_index()
    if len(table) < 4:
        return None
    before = table.iloc[-7:-1]
    typical = float(np.median(before["sum"] / before["size"]))
    low = []
    for moment, (size, converted) in table[::-1].iterrows():
        expected = size * typical
        if expected < 20 or converted >= expected / 2 or binom.cdf(converted, size, typical) >= 1e-4:
            break
        low.append(f"{moment.date()}: {converted:,} of {size:,} ({converted / size:.1%})")
    if not low or len(low) == len(table):
        return None
    return (
        f"the newest snapshot(s) convert far less within {horizon_days} days than the ones before: "
        + "; ".join(reversed(low))
        + f", against {typical:.1%} in the snapshots before. If outcomes.csv was exported before leads.csv "
        "and activities.csv, the closes of its last weeks are missing and these leads read as not converted, "
        "which lowers the test metrics: export the files together, or train --as-of the day outcomes.csv "
        "was exported"
    )


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def use_experiment(params: Params, reporter: Reporter) -> None:
    """Point MLflow at the configured store and experiment (created with the project's artifact
    root), and end the runs left RUNNING there by a killed process of this machine, or by one of
    another machine whose heartbeat stopped (`end_abandoned_runs`)."""
    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(params.mlflow.experiment) is None:
        mlflow.create_experiment(params.mlflow.experiment, artifact_location=artifact_root())
    experiment = mlflow.set_experiment(params.mlflow.experiment)
    for abandoned, why in end_abandoned_runs(experiment.experiment_id):
        reporter.warn(
            f"MLflow run {abandoned.info.run_name} ({abandoned.info.run_id}) stayed RUNNING, but {why} (killed, out "
            "of memory, or the tracking server lost during the run): marked KILLED"
        )


def run_tags(commit: str, dirty: bool) -> dict[str, str]:
    """Tags of every run that registers a model: the process running it and the code's commit
    (`git_commit()`)."""
    return {
        **process_tags(),
        "git.commit": commit,
        # The code that ran is the commit plus these changes: not reproducible from it.
        "git.uncommitted_changes": str(dirty).lower(),
        # MLflow's own tag, which its UI shows as the run's source version.
        "mlflow.source.git.commit": commit,
    }


def git_commit() -> tuple[str, bool]:
    """The project's commit and whether tracked files differ from it; ("unknown", False) when
    the project is not its own git checkout (an archive, maybe inside another repository)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != PROJECT_ROOT.resolve():
            return "unknown", False
        # No optional locks: `status` would write .git/index.lock, failing a commit made meanwhile.
        changed = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD"), bool(changed)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def ensure_embedded_data(params: Params, reporter: Reporter) -> Path:
    """The embedded dataset, generated on first use from the seed in params.yaml."""
    wanted = {
        "leads": params.data.embedded_leads,
        "seed": params.data.embedded_seed,
        "start": params.data.embedded_start,
        "months": params.data.embedded_months,
    }
    manifest = EMBEDDED_DIR / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return EMBEDDED_DIR
    reporter.stage(f"Generating the embedded dataset ({wanted['leads']:,} leads, seed {wanted['seed']})")
    crm = generate_crm(wanted["leads"], wanted["seed"], wanted["start"], wanted["months"])
    write_crm(crm, EMBEDDED_DIR)
    manifest.write_text(json.dumps(wanted))
    return EMBEDDED_DIR


def prepare_crm(
    directory: Path, params: Params, *, as_of: pd.Timestamp | None = None, window_days: int | None = None
) -> Dataset:
    """Load a CRM export, build (lead, T) examples and their point-in-time features.

    Args:
        as_of: see the export as it was at this moment (nothing after it: see `as_of_view`).
        window_days: keep only snapshots in the trailing window of this many days.
    """
    started = time.perf_counter()
    crm = load_crm(directory, params.flat.missing_tokens, params.data.outcome_statuses)
    if as_of is not None:
        crm = as_of_view(crm, as_of)
    for note in unmatched_icp_entries(crm.leads, params.features.icp):
        crm.quarantine.note(note)
    loaded = time.perf_counter()
    examples = build_examples(crm.leads, crm.outcomes, crm.export_end, params.features)
    if window_days is not None and not examples.empty:
        start = crm.export_end - pd.Timedelta(days=window_days)
        examples = examples[examples["as_of"] >= start].reset_index(drop=True)
    if examples.empty:
        raise DataError(
            f"{directory}: no training examples: the data spans less than one snapshot "
            f"({params.features.snapshot_days} days) plus the horizon ({params.features.horizon_days} days)",
            crm.quarantine,
        )
    split = split_by_time(examples, params.split, params.features.horizon_days)
    train_leads = crm.leads[crm.leads["lead_id"].isin(examples.loc[split.assignment == "train", "lead_id"])]
    vocabulary = learn_tech_vocabulary(train_leads, params.features.tech_stack_top_k)
    rows = crm.leads.set_index("lead_id").loc[examples["lead_id"]].reset_index()
    features = build_crm_features(rows, crm.activities, examples["as_of"], params.features, vocabulary)
    built = time.perf_counter()
    truth = None
    truth_path = Path(directory) / TRUTH_FILE
    if truth_path.is_file():
        table = pd.read_csv(truth_path, parse_dates=["as_of"])
        keyed = examples[["lead_id", "as_of"]].merge(table, on=["lead_id", "as_of"], how="left")
        truth = keyed["probability"]
    settings = {
        "tech_vocabulary": vocabulary,
        "tech_spellings": learn_tech_spellings(train_leads, vocabulary),
        "features": params.features.model_dump(mode="json"),
        "missing_tokens": list(params.flat.missing_tokens),
        # Scoring reads numeric dates in the training export's order: a batch of the 1st to
        # the 12th of a month has no day above 12 to tell by itself.
        "day_first": crm.day_first,
        # The lead columns it learned from: a later export without one must not replace it.
        "lead_columns": list(crm.lead_columns),
        # Scoring reads numbers as the training export wrote them: a batch with no "2,5" in it
        # cannot tell that its "250.000" is a quarter of a million.
        "number_formats": {name: f.as_json() for name, f in (crm.number_formats or {}).items()},
        "sep": crm.sep,  # a scored file of another separator may write another decimal mark
    }

    def features_for(feature_settings: dict[str, Any], technologies: list[str], chosen: np.ndarray):
        if feature_settings == settings["features"] and list(technologies) == list(vocabulary):
            return None
        picked = examples[chosen]
        picked_rows = crm.leads.set_index("lead_id").loc[picked["lead_id"]].reset_index()
        own = FeatureParams.model_validate(feature_settings)
        return build_crm_features(
            picked_rows, crm.activities, picked["as_of"].reset_index(drop=True), own, technologies
        )

    def unlabelled_new_leads() -> tuple[pd.DataFrame, pd.Timestamp | None]:
        """Features of the leads first seen after the newest labelled snapshot, each at its first
        snapshot on the same grid (their outcomes are not known yet), and that snapshot's moment:
        a field an export stopped filling shows there a month or two before it reaches a
        labelled snapshot."""
        newest = examples["as_of"].max()
        horizon = pd.Timedelta(days=params.features.horizon_days)
        later = build_examples(crm.leads, crm.outcomes, crm.export_end + horizon, params.features)
        later = later[later["as_of"] > newest].reset_index(drop=True)
        created = crm.leads.set_index("lead_id")["created_at"].loc[later["lead_id"]].to_numpy()
        new = (later["as_of"].to_numpy() - created) <= np.timedelta64(params.features.snapshot_days, "D")
        later = later[new & ~later["lead_id"].duplicated().to_numpy()].reset_index(drop=True)
        if later.empty:
            return features.iloc[:0], None
        later_rows = crm.leads.set_index("lead_id").loc[later["lead_id"]].reset_index()
        return build_crm_features(later_rows, crm.activities, later["as_of"], params.features, vocabulary), newest

    return Dataset(
        kind="crm",
        features=features,
        label=examples["label"],
        keys=examples[["lead_id", "as_of"]],
        split=split,
        groups=crm_feature_groups(list(features.columns)),
        settings=settings,
        quarantine=crm.quarantine,
        data_hash=crm.data_hash,
        source=crm.source,  # "... as of DAY" for an --as-of cut
        truth=truth,
        timings={"load_seconds": loaded - started, "features_seconds": built - loaded},
        export_end=crm.export_end,
        has_activities=not crm.activities.empty,
        activities_cut=activities_end_early(crm.activities["occurred_at"], crm.export_end),
        features_for=features_for,
        unlabelled_new_leads=unlabelled_new_leads,
    )


def prepare_flat(path: Path, profile: FlatProfile, params: Params) -> Dataset:
    """Load a flat export (one row per lead) and split it by time or stratified."""
    started = time.perf_counter()
    flat = load_flat(path, profile, params.flat, leak_auc=params.leakage.max_single_column_auc)
    if flat.times is not None:
        examples = pd.DataFrame({"lead_id": flat.ids, "as_of": flat.times})
        split = split_by_time(examples, params.split, horizon_days=0)
    else:
        # Refused here, with the rows set aside so far: a stratified split of a class of one
        # row fails inside scikit-learn before check_split could say how many there are.
        try:
            check_class_counts(flat.label, params)
        except DataError as exc:
            aside = quarantine_counts(flat.quarantine)
            raise DataError(f"{path}: {exc}" + (f"; set aside: {'; '.join(aside)}" if aside else ""),
                            flat.quarantine) from None  # fmt: skip
        split = split_stratified(flat.label, params.split)
    keys = pd.DataFrame({"lead_id": flat.ids})
    test = (split.assignment == "test").to_numpy()
    # Held all run, so only what another model could read otherwise: the test rows, where a
    # champion is compared, of the columns with a dot or a comma in them ("1.532", "1,5").
    written = None if flat.numbers_written is None else flat.numbers_written[test].reset_index(drop=True)
    marked = [] if written is None else [c for c in written if written[c].astype(str).str.contains("[.,]").any()]
    test_written = written[marked] if marked else None
    features, ours = flat.features, flat.schema

    def features_for(schema: dict[str, Any], _technologies: list[str], chosen: np.ndarray) -> pd.DataFrame | None:
        if not np.array_equal(chosen, test):
            raise ValueError("a flat export's numbers as written are kept for its test rows only")
        if test_written is None:
            return None
        return read_as_model(features[test].reset_index(drop=True), test_written, ours, schema)

    return Dataset(
        kind="flat",
        features=flat.features,
        label=flat.label,
        keys=keys,
        split=split,
        groups=flat_feature_groups(list(flat.features.columns)),
        settings={"flat": flat.schema, "missing_tokens": list(params.flat.missing_tokens)},
        quarantine=flat.quarantine,
        data_hash=flat.data_hash,
        source=str(path),
        timings={"load_seconds": time.perf_counter() - started, "features_seconds": 0.0},
        id_leaks=flat.id_leaks,
        features_for=features_for,
    )


def check_class_counts(label: pd.Series, params: Params) -> None:
    positives, negatives = int(label.sum()), int((label == 0).sum())
    if positives < params.data.min_positive or negatives < params.data.min_negative:
        raise DataError(
            f"too few examples to train: {positives:,} that converted and {negatives:,} that did not "
            f"(at least {params.data.min_positive} and {params.data.min_negative} are needed)"
        )


def subscore_reference(
    booster: Any, x: pd.DataFrame, spec: Any, seed: int, rows: int = 20_000, idle: dict[str, float | None] | None = None
) -> dict[str, Any]:
    """Where training leads stand on fit and engagement: percentiles (0-100), so a served
    lead's sub-score is its rank among them. Also the SHAP base value (log-odds).

    With `idle` (each engagement feature as a lead with no activity has it), fit is the
    model's log-odds of the lead's profile with engagement held there, and engagement what its
    activity adds to that: no activity can move fit. Without it (flat models), the summed SHAP
    contributions of each feature group, which share the trees' interactions, so activity
    moves fit too."""
    sample = x.sample(min(rows, len(x)), random_state=seed)
    contributions = booster.predict(sample, pred_contrib=True)
    quantiles = {}
    if idle is not None:
        profile = booster.predict(sample.assign(**{c: np.nan if v is None else v for c, v in idle.items()}),
                                  raw_score=True)  # fmt: skip
        totals = {"fit": profile, "engagement": contributions.sum(axis=1) - profile}
    else:
        totals = {}
        for group in ("fit", "engagement"):
            columns = [i for i, c in enumerate(spec.columns) if spec.groups[c] == group]
            totals[group] = contributions[:, columns].sum(axis=1) if columns else np.zeros(len(sample))
    for group, total in totals.items():
        quantiles[group] = np.quantile(total, np.linspace(0, 1, 101)).tolist()
    return {"quantiles": quantiles, "base_value": float(contributions[0, -1])}


def _constrain_engagement(
    tuning: TuningResult,
    spec: FeatureSpec,
    learned: dict[str, Any],
    params: TuningParams,
    valid: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray] | None,
    reporter: Reporter,
) -> TuningResult:
    """The chosen settings refit with each engagement feature constrained by its meaning, so
    that one more activity never lowers a score (`tuning.engagement_monotone`); other columns
    keep what `learned` constrained (from their correlation), if anything."""
    signs = learned.get("monotone_constraints") or [0] * len(spec.columns)
    constraints = [
        engagement_direction(column) if spec.groups[column] == "engagement" and column not in spec.categories else sign
        for column, sign in zip(spec.columns, signs, strict=True)
    ]
    if not any(constraints):  # nothing to constrain; and LightGBM 4.7 crashes on the method alone
        return tuning
    constrained = refit_constrained(tuning, constraints, params, valid)
    engaged = [c for n, c in zip(spec.columns, constraints, strict=True) if spec.groups[n] == "engagement"]
    rises, falls = sum(c > 0 for c in engaged), sum(c < 0 for c in engaged)
    refit = (
        f"; refit early-stopped at {constrained.best_iteration} rounds (the best trial: {tuning.best_iteration}), "
        f"validation {params.metric} {constrained.constrained_valid_score:.4f} (the best trial: "
        f"{tuning.best_valid_score:.4f})"
        if constrained.constrained_valid_score is not None
        else ""
    )
    reporter.note(
        f"engagement by its meaning (tuning.engagement_monotone): {rises} feature(s) only raise the score, "
        f"{falls} only lower it{refit}"
    )
    return constrained


# A trial's score under the name of what it measures (`tuning.metric`).
TRIAL_METRIC_NAMES = {"auc": "valid_roc_auc", "binary_logloss": "valid_log_loss"}


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> None:
    name = TRIAL_METRIC_NAMES[metric]
    with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True):
        mlflow.log_params(trial.params)
        mlflow.set_tag("state", trial.state.name)
        if "stopped" in trial.user_attrs:
            mlflow.set_tag("stopped", trial.user_attrs["stopped"])
        if trial.value is not None:
            # Optuna gives a pruned trial its last intermediate score: a partial model's score
            # under the finished trials' name would mislead a comparison in the MLflow UI.
            pruned = trial.state == optuna.trial.TrialState.PRUNED
            mlflow.log_metric(f"{name}_when_pruned" if pruned else name, trial.value)
        if "best_iteration" in trial.user_attrs:
            mlflow.log_metric("best_iteration", trial.user_attrs["best_iteration"])


def flat_criteria(params: Params, held_out_probability: np.ndarray) -> dict[str, Any]:
    """A flat model's qualification: by its score alone, MQL where the top
    `flat.mql_top_share` of held-out predictions of the training rows sit.

    The CRM criteria do not carry over: their MQL score (10) is a 30-day probability, where a
    flat label has no horizon (nearly every lead of `Leads.csv` reached it), and a flat model's
    fit and engagement ranks come from columns grouped by their names.
    """
    mql_score = top_share_threshold(score_from_probability(held_out_probability), params.flat.mql_top_share)
    return flat_rules(params.criteria.model_dump(mode="json"), mql_score)


def flat_rules(criteria: dict[str, Any], mql_score: float) -> dict[str, Any]:
    """The params file's `criteria` (as a dict) for a flat model whose MQL score is `mql_score`."""
    criteria["mql"].update(min_score=mql_score, min_fit=None, min_engagement=None, hand_raise_qualifies=False)
    criteria["sql"]["min_score"] = max(criteria["sql"]["min_score"], mql_score)
    return criteria


def score_stages_on_test(
    label: np.ndarray, probability: np.ndarray, criteria: dict[str, Any], params: Params, kind: str
) -> dict[str, Any] | None:
    """A flat model's MQL threshold and how its stages convert on the test rows (None for CRM
    models, whose stages also rest on fit, engagement, hand-raises and BANT)."""
    if kind != "flat":
        return None
    mql = score_from_probability(probability) >= criteria["mql"]["min_score"]
    stages = {}
    for stage, rows in (("MQL", mql), ("nurture", ~mql)):
        stages[stage] = {"leads": int(rows.sum()), "conversion": float(label[rows].mean()) if rows.any() else None}
    return {"mql_min_score": criteria["mql"]["min_score"], "mql_top_share": params.flat.mql_top_share, "test": stages}


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None and np.isfinite(value):
        out[prefix] = float(value)


def write_quarantine(quarantine: pd.DataFrame, stem: str, folder: Path | None = None) -> Path | None:
    """Write the quarantined rows to `<folder>/quarantine-<stem>.csv` (default models/quarantine).

    Returns the file, or None when nothing was quarantined.
    """
    if quarantine.empty:
        return None
    target = folder or (MODELS_DIR / "quarantine")
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"quarantine-{stem}.csv"
    # Rows are quoted back as they came: a `=cmd|...` cell must stay text in Excel.
    safe_for_spreadsheets(quarantine).to_csv(path, index=False)
    return path


def fit_rows(dataset: Dataset) -> np.ndarray:
    """The rows a model learns from. Without timestamps, train and validation rows together are
    tuned and calibrated by k-fold cross-validation; with them, validation is the newer period."""
    part = dataset.split.assignment
    return (part.isin(["train", "valid"]) if not dataset.split.by_time else part == "train").to_numpy()


def training_leakage_audit(dataset: Dataset, params: Params) -> pd.DataFrame:
    """The leakage audit a training run acts on (`features.leakage.audit_leakage`): on the rows
    the model learns from, with the split's seed; a notebook shows the same table."""
    train_mask = fit_rows(dataset)
    return audit_leakage(
        dataset.features[train_mask],
        dataset.label[train_mask],
        params.leakage.max_single_column_auc,
        seed=params.split.seed,
    )


def check_split(dataset: Dataset, params: Params) -> None:
    """Enough examples of each class to train on, and each split non-empty with both classes.

    Raises:
        DataError: what is missing, and the likely cause.
    """
    part = dataset.split.assignment
    check_class_counts(dataset.label[part != ""], params)
    for name in ("train", "valid", "test"):
        subset = dataset.label[part == name]
        if subset.empty:
            raise DataError(
                f"the {name} split is empty (split {dataset.split.description}): "
                + (
                    _leads_end_early(dataset.keys, dataset.export_end)
                    or (
                        f"the dates span too little for a test period of {params.split.test_days} days and a "
                        f"validation period of {params.split.valid_days} days before it; more history, shorter "
                        "periods in params.yaml"
                        + (", or no --time (a stratified holdout)" if dataset.kind == "flat" else "")
                    )
                )
            )
        if subset.nunique() < 2:
            raise DataError(
                f"the {name} split has only one class ({len(subset)} examples; split {dataset.split.description}); "
                + (
                    _leads_end_early(dataset.keys, dataset.export_end)
                    or "more data, or other `split` settings in params.yaml, are needed"
                    + (
                        "; if the export usually has both here, check that outcomes.csv was not cut short"
                        if dataset.kind == "crm"
                        else ""
                    )
                )
            )


JOB_TAG = "leadscore.job"


def train_and_register(
    dataset: Dataset,
    params: Params,
    reporter: Reporter | None = None,
    *,
    model_name: str | None = None,
    quarantine_dir: Path | None = None,
    promote_champion: bool = True,
    register: bool = True,
    on_tuned: Callable[[TuningResult], None] | None = None,
    on_test_scores: Callable[[np.ndarray, np.ndarray], dict | None] | None = None,
    final_fit: Callable[[dict[str, Any], int, bool, Any], Any] | None = None,
    engine: dict[str, Any] | None = None,
    replace_leaky_champion: bool = False,
    job: str = "train",
) -> dict[str, Any]:
    """Tune, train, calibrate, evaluate and register a model on a prepared dataset.

    Args:
        job: what runs it (`train`, `recalibrate`): the MLflow run is named `{job}-{kind}` and
            tagged `leadscore.job`, so a quarterly recalibration's run reads as one.
        promote_champion: move `@champion` to the new version when the gates pass; when
            False the version gets `@challenger` instead and the champion stays (a person
            promotes it later, e.g. from the retraining notebook).
        register: log and register the model bundle (False: evaluate only, the registry
            is not touched; the MLflow run is still logged).
        on_tuned: called with the Optuna tuning result (its study for plots).
        on_test_scores: called with the test-period probabilities and labels; may return
            `criteria` and `grade_bands` to store in the bundle instead of params.yaml's.
        final_fit: fits the final model elsewhere (the Dask engine) from (tuned parameters,
            trees, whether validation examples are included, feature spec); by default the
            examples of `dataset` are fitted in this process.
        engine: where the run's parts ran (recorded in the metrics, the bundle and MLflow).
        replace_leaky_champion: the columns `--drop` leaves out leak, so a champion that read
            them is not compared on test AUC (its AUC with a leak is no bar).

    Returns:
        The metrics document (also logged to MLflow): test metrics, baselines, Bayes AUC
        (synthetic data), leakage audit, model name and version, gates, promotion.
    """
    reporter = reporter or Reporter()
    model_name = model_name or params.mlflow.model_name
    timings = dict(dataset.timings)
    memory = {"features_mb": peak_memory_mb()}
    check_split(dataset, params)
    part = dataset.split.assignment
    data_warnings = []
    if dataset.kind == "crm":
        late = closes_missing_late(dataset.keys, dataset.label, params.features.horizon_days)
        for text in filter(None, (dataset.activities_cut, late)):
            reporter.warn(text)
            data_warnings.append(text)
    test_label = dataset.label[part == "test"]
    fewest = min(int(test_label.sum()), int((test_label == 0).sum()))
    if fewest < params.gates.min_test_examples_per_class:
        reporter.warn(
            f"the test rows hold {int(test_label.sum()):,} converted and {int((test_label == 0).sum()):,} lost: fewer "
            f"than gates.min_test_examples_per_class ({params.gates.min_test_examples_per_class}) of each, so this "
            "model will be registered but not promoted (more data, or a lower gate in params.yaml)"
        )
    reporter.stage("Auditing columns for label leakage")
    cross_validate = not dataset.split.by_time
    train_mask = fit_rows(dataset)
    audit = training_leakage_audit(dataset, params)
    flagged = audit.loc[audit["flagged"], "column"].tolist()
    for _, row in audit[audit["flagged"]].iterrows():
        action = "left out of the model" if params.leakage.action == "exclude" else "kept (leakage.action: warn)"
        reporter.warn(f"Leakage: {row['column']!r} alone gives ROC AUC {row['auc']:.3f}; {action}")
    excluded = tuple(flagged) if params.leakage.action == "exclude" else ()
    for column, why in dataset.id_leaks.items():
        # Never a feature, but the export is suspect: its rows may be ordered or named by outcome.
        reporter.warn(f"Leakage: identifier {column!r} gives the label away: {why}; it is never a feature")
        flagged.append(column)

    constrain_engagement = dataset.kind == "crm" and params.tuning.engagement_monotone
    spec = learn_spec(
        dataset.features[train_mask],
        kind=dataset.kind,
        groups=dataset.groups,
        settings=dataset.settings,
        exclude=excluded,
        missing_as=never_as_long_ago(dataset.features.columns) if constrain_engagement else None,
    )
    masks = {"fit": train_mask, "valid": (part == "valid").to_numpy(), "test": (part == "test").to_numpy()}
    frames = {name: to_model_frame(dataset.features[mask], spec) for name, mask in masks.items()}
    labels = {name: dataset.label[mask].to_numpy() for name, mask in masks.items()}

    use_experiment(params, reporter)
    commit, dirty = git_commit()
    moved: list[str] = []  # what a promotion did, once @champion moved
    # The hash is of the export's files; an --as-of cut of them is told by the source and the end read.
    tags = {"data.source": dataset.source, "data.hash": dataset.data_hash, "data.kind": dataset.kind, JOB_TAG: job}
    if dataset.export_end is not None:
        tags["data.export_end"] = dataset.export_end.isoformat()
    # Outermost, so a promotion's hold (`sigterm_held`) lasts until the run has ended, and a failure
    # after it, ending the run included, says the promotion stands.
    with (
        _promotion_stands(moved),
        contextlib.ExitStack() as promoting,
        # Tagged as it is made: a process killed before a later set_tags left a run no later run
        # could tell was abandoned (no process tag), RUNNING for ever.
        mlflow.start_run(run_name=f"{job}-{dataset.kind}", tags={**run_tags(commit, dirty), **tags}) as run,
        heartbeat(run.info.run_id),
    ):
        mlflow.log_params({f"tuning.{k}": v for k, v in params.tuning.model_dump().items() if k != "search_space"})
        # The settings that decide what is trained and promoted, searchable; all of them as a file.
        for section in ("gates", "split", "features", "calibration", "leakage"):
            values = getattr(params, section).model_dump(mode="json")
            mlflow.log_params({f"{section}.{k}": str(v)[:490] for k, v in values.items()})
        mlflow.log_params({f"search_space.{k}": str(v)[:490] for k, v in params.tuning.search_space.items()})
        mlflow.log_dict(params.model_dump(mode="json"), "params.json")
        mlflow.log_params(
            {
                "split": dataset.split.description[:490],
                "test_period": tested_on(dataset.split, dataset.data_hash),
                "leakage.excluded": ",".join(excluded)[:490] or "none",
                **{f"engine.{k}": str(v)[:490] for k, v in (engine or {"engine": "local"}).items()},
            }
        )

        learned = learned_settings(frames["fit"], labels["fit"], params.tuning)
        if learned:
            signs = zip(frames["fit"].columns, learned["monotone_constraints"], strict=True)
            monotone = [f"{column} ({'+' if sign > 0 else '-'})" for column, sign in signs if sign]
            reporter.note(
                f"monotone in {len(monotone)} feature(s) (tuning.monotone_min_abs_correlation): "
                + ", ".join(monotone[:8])
                + (f" and {len(monotone) - 8} more" if len(monotone) > 8 else "")
            )
            mlflow.log_param("tuning.monotone_features", ",".join(monotone)[:490])
        reporter.stage(
            f"Tuning LightGBM ({params.tuning.trials} trial{'s' if params.tuning.trials != 1 else ''} at most, "
            f"{params.tuning.timeout_seconds:.0f} s budget)"
        )
        reporter.trials_started(params.tuning.trials)
        started = time.perf_counter()

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            _log_trial(study, trial, params.tuning.metric)
            best = study.best_value if any(t.value is not None for t in study.trials) else None
            reporter.trial_done(trial.number, trial.state.name, best)

        if cross_validate:
            tuning = tune_cv(
                frames["fit"], labels["fit"], params.tuning, folds=CV_FOLDS, on_trial=on_trial, fixed=learned
            )
        else:
            tuning = tune(
                frames["fit"], labels["fit"], frames["valid"], labels["valid"], params.tuning,
                on_trial=on_trial, fixed=learned,
            )  # fmt: skip
        reporter.trials_finished()
        tuning_warnings = few_trials_warnings(tuning.trials, params.tuning, job)
        for text in tuning_warnings:
            reporter.warn(text)
        if constrain_engagement:
            tuning = _constrain_engagement(tuning, spec, learned, params.tuning, None if cross_validate else (
                frames["fit"], labels["fit"], frames["valid"], labels["valid"]), reporter)  # fmt: skip
        constraint_warnings = constraint_cost_warnings(tuning, params.tuning.metric)
        for text in constraint_warnings:
            reporter.warn(text)
        if on_tuned is not None:
            on_tuned(tuning)
        # The chosen settings on the parent run, to compare runs in the MLflow UI.
        mlflow.log_params({f"best.{k}": str(v)[:490] for k, v in tuning.best_params.items()})
        mlflow.log_param("best.num_boost_round", tuning.best_iteration)
        # How the search went, beside the settings that capped it (`tuning.trials` is the most
        # allowed): a run of 3 trials read as one of 60 in the MLflow UI.
        mlflow.log_metrics({"tuning.trials_run": tuning.trials, "tuning.trials_pruned": tuning.pruned,
                            "tuning.best_valid_score": tuning.best_valid_score})  # fmt: skip
        if tuning.constrained_valid_score is not None:
            mlflow.log_metric("tuning.constrained_valid_score", tuning.constrained_valid_score)
        timings["tuning_seconds"] = time.perf_counter() - started
        memory["tuning_mb"] = peak_memory_mb()

        reporter.stage(
            "Training the final model and calibrating on "
            + ("out-of-fold predictions" if cross_validate else "the validation period")
        )
        started = time.perf_counter()

        def refit(x: pd.DataFrame, y: np.ndarray, with_valid: bool) -> Any:
            if final_fit is not None:  # the examples live elsewhere (Dask): x and y are not used
                return final_fit(tuning.best_params, tuning.best_iteration, with_valid, spec)
            return fit_final(x, y, tuning.best_params, n_estimators=tuning.best_iteration, seed=params.tuning.seed)

        if tuning.best_model is not None and final_fit is None:
            booster = tuning.best_model  # the trees a refit on the training rows would grow
        else:
            booster = refit(frames["fit"], labels["fit"], False)
        if cross_validate:
            calibration_margin = out_of_fold_margins(
                frames["fit"], labels["fit"], tuning.best_params,
                n_estimators=tuning.best_iteration, folds=CV_FOLDS, seed=params.tuning.seed,
            )  # fmt: skip
            calibration_label = labels["fit"]
        else:
            calibration_margin = booster.predict(frames["valid"], raw_score=True)
            calibration_label = labels["valid"]
        calibrator, calibration_scores, valid_probability = choose_calibrator(
            calibration_margin, calibration_label, params.calibration, seed=params.split.seed
        )
        mlflow.log_param("calibration.chosen", calibrator.method)
        # The final model and the baselines learn from train and validation together: the
        # validation period is the newest data before the test period, where drift matters most.
        final_x, final_y = frames["fit"], labels["fit"]
        if not cross_validate and params.tuning.refit_with_validation:
            final_x = pd.concat([frames["fit"], frames["valid"]])
            final_y = np.concatenate([labels["fit"], labels["valid"]])
            booster = refit(final_x, final_y, True)
        timings["train_seconds"] = time.perf_counter() - started

        reporter.stage(
            "Evaluating on the test "
            + ("holdout" if cross_validate else "period")
            + ", with baselines on the same split"
        )
        started = time.perf_counter()
        test_probability = calibrator.apply(booster.predict(frames["test"], raw_score=True))
        overrides = (on_test_scores(test_probability, labels["test"]) if on_test_scores else None) or {}
        criteria = overrides.get("criteria") or (
            flat_criteria(params, valid_probability)
            if dataset.kind == "flat"
            else params.criteria.model_dump(mode="json")
        )
        grade_bands = overrides.get("grade_bands", params.grades)
        test_metrics = classification_metrics(labels["test"], test_probability, params.calibration.ece_bins)
        baseline_probs = fit_baselines(
            final_x,
            final_y,
            frames["test"],
            list(spec.categories),
            params.split.seed,
            missing_as=spec.missing_as,
        )
        baselines = {name: {"roc_auc": float(roc_auc_score(labels["test"], p))} for name, p in baseline_probs.items()}
        best_baseline = max(b["roc_auc"] for b in baselines.values())
        trailing = trailing_baseline_warnings(
            test_metrics["roc_auc"], baselines, audit, list(spec.columns), dataset.kind,
            few_trials=bool(tuning_warnings),
        )  # fmt: skip
        for text in trailing:
            reporter.warn(text)
        run_warnings = [*data_warnings, *tuning_warnings, *constraint_warnings, *trailing]
        bayes = None
        if dataset.truth is not None:
            truth = dataset.truth[(part == "test").to_numpy()].to_numpy()
            known = ~np.isnan(truth)
            if known.any():
                bayes = {
                    "roc_auc": float(roc_auc_score(labels["test"][known], truth[known])),
                    "coverage": float(known.mean()),
                }
            if known.mean() < 0.99:
                # truth.csv keys examples by (lead, snapshot): another snapshot grid or an
                # edited export leaves test examples without a true probability.
                run_warnings.append(
                    f"{TRUTH_FILE} gives a true probability for {known.mean():.0%} of the test examples: "
                    + ("the Bayes ROC AUC is over those only" if known.any() else "no Bayes ROC AUC")
                    + " (was the export generated with other snapshot settings, or edited?)"
                )
                reporter.warn(run_warnings[-1])
        timings["evaluate_seconds"] = time.perf_counter() - started
        memory["evaluate_mb"] = peak_memory_mb()

        test_raw = dataset.features[(part == "test").to_numpy()]
        dropped = {model_column_name(c) for c in dataset.settings.get("flat", {}).get("dropped", [])}

        def champion_features(settings: dict[str, Any], technologies: list[str]) -> pd.DataFrame | None:
            """The test rows as the champion reads them (its own feature settings), or None."""
            if dataset.features_for is None:
                return None
            return dataset.features_for(settings, technologies, (part == "test").to_numpy())

        champion = champion_auc(
            model_name, dataset.kind, test_raw, labels["test"], export_has_activities=dataset.has_activities,
            activities_cut=dataset.activities_cut,
            lead_columns=dataset.settings.get("lead_columns"),
            leaking={*excluded, *(dropped if replace_leaky_champion else ())}, dropped=dropped,
            features_for=champion_features, test_window=dataset.split.windows.get("test"), columns=list(spec.columns),
            header=dataset.settings.get("flat", {}).get("header"),
        )  # fmt: skip
        gates = check_gates(params.gates, test_metrics, best_baseline, champion)
        passed = all(g.passed for g in gates)
        replaced = replaced_thresholds(champion, criteria, grade_bands) if dataset.kind == "crm" else None
        if not overrides and replaced:
            reporter.warn(replaced)
            run_warnings.append(replaced)

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            reporter.stage("Logging charts, the model bundle and the registry entry to MLflow")
            plots = evaluation_plots(labels["test"], test_probability, baseline_probs, tmp_path / "plots")
            sample = frames["test"].sample(min(params.mlflow.shap_sample, len(frames["test"])), random_state=0)
            plots.append(shap_summary_plot(booster, sample, tmp_path / "plots", spec.missing_as))
            mlflow.log_artifacts(str(tmp_path / "plots"), artifact_path="plots")
            lift = lift_by_decile(labels["test"], test_probability)
            lift.to_csv(tmp_path / "lift_by_decile.csv", index=False)
            mlflow.log_artifact(str(tmp_path / "lift_by_decile.csv"))
            safe_for_spreadsheets(audit).to_csv(tmp_path / "leakage_audit.csv", index=False)
            mlflow.log_artifact(str(tmp_path / "leakage_audit.csv"))
            quarantine = dataset.quarantine.frame()
            quarantine_path = write_quarantine(quarantine, run.info.run_id, quarantine_dir)
            if quarantine_path is not None:
                mlflow.log_artifact(str(quarantine_path))

            windows = dataset.split.windows
            engagement_columns = [c for c in spec.columns if spec.groups[c] == "engagement"]
            idle = None  # None (missing) for a value the spec gives no number: JSON has no NaN
            if dataset.kind == "crm":
                # As the model reads them: a day count of "never" is a number (`FeatureSpec.missing_as`).
                idle = idle_engagement(params.features, engagement_columns)
                idle = {c: spec.missing_as.get(c) if v is None else v for c, v in idle.items()}
            subscores = subscore_reference(booster, final_x, spec, params.split.seed, idle=idle)
            metadata = {
                "model_name": model_name,
                "kind": dataset.kind,
                "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
                "training_window": (
                    [windows["train"][0], windows["valid"][1]]
                    if final_x is not frames["fit"] and "train" in windows and "valid" in windows
                    else windows.get("train")
                ),
                "validation_window": windows.get("valid"),
                "test_window": windows.get("test"),
                "split": dataset.split.description,
                "data_source": dataset.source,
                "data_hash": dataset.data_hash,
                "git_commit": commit,
                "git_uncommitted_changes": dirty,
                "run_id": run.info.run_id,
                "test_metrics": test_metrics,
                "calibration": calibrator.method,
                "grade_bands": grade_bands,
                "base_value": subscores["base_value"],
                "subscore_quantiles": subscores["quantiles"],
                "subscore_idle_engagement": idle,  # None: sub-scores from SHAP sums (flat, older models)
                "activity_averages": activity_averages(final_x, engagement_columns),
                "criteria": criteria,
                "leakage_excluded": list(excluded),
                "engine": engine or {"engine": "local"},
                "job": job,  # "recalibrate": its thresholds were fitted to the data, not the params file's
                "evaluation": test_evaluation(
                    booster, calibrator, labels["test"], test_probability, sample, grade_bands
                ),
            }
            artifacts = write_bundle_files(tmp_path / "bundle", booster, spec, calibrator, metadata)
            example = dataset.features[(part == "test").to_numpy()][spec.columns].head(5).reset_index(drop=True)
            example = example.astype({c: "float64" for c in spec.numeric})
            output = pd.DataFrame(
                {
                    "probability": test_probability[:5],
                    "score": np.round(100 * test_probability[:5], 1),
                }
            )
            version = log_bundle(artifacts, example, output, model_name) if register else None

        previous = None
        if version is not None:
            if not promote_champion:
                set_alias(model_name, CHALLENGER, version)
            elif passed:
                # A SIGTERM from here waits until the run records the promotion (seconds).
                promoting.enter_context(sigterm_held())
                try:
                    previous = promote(model_name, version, compared_with=champion.version)
                    moved.append(f"v{version} is @champion now" + (f" (v{previous} is @previous)" if previous else ""))
                except ChampionMoved as exc:
                    passed = False
                    gates.append(Gate("champion_unchanged_during_run", False, str(exc)))
                    reporter.warn(str(exc))
        if version is not None:
            describe_version(
                model_name,
                version,
                {
                    "kind": dataset.kind,
                    "test_roc_auc": f"{test_metrics['roc_auc']:.4f}",
                    "data_hash": dataset.data_hash[:16],
                },
            )
        metrics: dict[str, Any] = {
            "test": test_metrics,
            "valid": classification_metrics(calibration_label, valid_probability, params.calibration.ece_bins),
            "baselines": baselines,
            "bayes": bayes,
            "leakage": {
                "flagged": flagged,
                "action": params.leakage.action,
                "threshold": params.leakage.max_single_column_auc,
                "top": audit.head(10).to_dict(orient="records"),
            },
            "model": {
                "name": model_name,
                "version": version,
                "run_id": run.info.run_id,
                "previous_champion": previous,
                "compared_with_champion": champion.version,  # promote later only over this one
                "alias": None
                if version is None
                else (CHAMPION if passed else None)
                if promote_champion
                else CHALLENGER,
            },
            "promoted": passed and promote_champion and version is not None,
            "gates_passed": passed,
            "warnings": run_warnings,
            "gates": [g.__dict__ for g in gates],
            "calibration": {"method": calibrator.method, "cv_log_loss": calibration_scores},
            "tuning": {
                "trials": tuning.trials,
                "pruned": tuning.pruned,
                "metric": params.tuning.metric,
                "best_valid_score": tuning.best_valid_score,
                "best_iteration": tuning.best_iteration,
                "best_params": tuning.best_params,
            },
            "grades": conversion_by_grade(labels["test"], test_probability, grade_bands),
            "criteria": criteria,
            "grade_bands": grade_bands,
            "qualification": score_stages_on_test(labels["test"], test_probability, criteria, params, dataset.kind),
            "data": {
                "source": dataset.source,
                "kind": dataset.kind,
                "hash": dataset.data_hash,
                "split": dataset.split.description,
                "windows": windows,
                # Cross-validated, the validation rows are folds of the fit rows: not counted twice.
                "examples": {name: len(labels[name]) for name in labels if not (cross_validate and name == "valid")},
                "positives": {
                    name: int(labels[name].sum()) for name in labels if not (cross_validate and name == "valid")
                },
                "features": len(spec.columns),
                "quarantined_rows": len(quarantine),
                "quarantine_file": str(quarantine_path) if quarantine_path else None,
                "notes": dataset.quarantine.notes,
            },
            "timings": timings,
            "peak_memory_mb": {**memory, "end_mb": peak_memory_mb()},
            "engine": engine or {"engine": "local"},
        }
        flat_metrics: dict[str, float] = {}
        _flatten(
            "",
            {k: metrics[k] for k in ("test", "valid", "baselines", "bayes", "timings") if metrics[k]},
            flat_metrics,
        )
        mlflow.log_metrics(flat_metrics)
        mlflow.log_dict(metrics, "metrics.json")
        mlflow.set_tags({"promoted": str(metrics["promoted"]), "gates_passed": str(passed)})
        if run_warnings:  # in the run's overview, not only inside metrics.json
            mlflow.set_tag("leadscore.warnings", " | ".join(run_warnings)[:5000])
    return metrics


class PromotedButUnrecorded(RuntimeError):
    """`@champion` moved to the new version, and what came after (its description, metrics,
    tags, the end of its run) failed: the message says the promotion stands ("did not move" was
    said before)."""


@contextlib.contextmanager
def _promotion_stands(moved: list[str]) -> Iterator[None]:
    """A failure once `moved` says what a promotion did raised as `PromotedButUnrecorded`."""
    try:
        yield
    except PromotedButUnrecorded:
        raise
    except Exception as exc:
        if moved:
            raise PromotedButUnrecorded(
                f"{moved[0]}, but its run could not be recorded: {type(exc).__name__}: {exc}"
            ) from exc
        raise


def activity_averages(rows: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """The training average of each amount of activity (`amount_of_activity`), what a reason
    weighs a lead's against (`sentence`)."""
    means = rows[[c for c in columns if amount_of_activity(c)]].astype("float64").mean()
    return {str(c): float(m) for c, m in means.items() if np.isfinite(m)}
