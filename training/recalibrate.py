"""The quarterly recalibration: retrain on a trailing window, recompute the thresholds and
grade bands, compare challenger and champion on the newest quarter, measure drift, promote
only through the gates, and write a report a person can read (and undo with
`leadscore rollback`)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from features.ingest import DataError
from features.params import Params, default_params_path
from features.tracking import MODELS_DIR, lock_path
from serving.charts import columns, horizontal_bars
from serving.scoring import LoadedModel, ModelNotReady, load_champion
from training.drift import BREAK_MIN_LEADS, conversion_shift, feature_drift, numeric_drift, sudden_breaks
from training.evaluate import classification_metrics, conversion_by_grade
from training.pipeline import (
    EMBEDDED_DIR,
    Dataset,
    Reporter,
    check_split,
    ensure_embedded_data,
    prepare_crm,
    quarantine_counts,
    report_quarantine,
    train_and_register,
    use_experiment,
)
from training.register import (
    CHALLENGER,
    CHAMPION,
    ChampionMoved,
    current_version,
    export_shortfall,
    promote,
    rollback_hold,
)
from training.report_page import report_page
from training.rules import differences
from training.stopping import sigterm_held
from training.thresholds import f1_threshold, grade_bands, precision_threshold, top_share_threshold

# Exit codes a scheduler can act on; every decision (promoted, kept the champion, dry run,
# skipped) exits 0 and is named in summary.json.
EXIT_FAILED = 2  # bad input, no champion, unreachable store: a person should look
EXIT_LOCKED = 3  # a recalibration, a rollback or a training run holds the lock: try again later
EXIT_NO_NEW_DATA = 4  # the export has not grown past the champion's test period
# Gates that fail on the export, not on the model (no usable activity, lead columns emptied):
# the export was most likely cut short, so a person should look (exit 2, not 0).
INPUT_GATES = ("activities_like_champion", "lead_columns_like_champion")


class LockUnavailable(OSError):
    """The lock file cannot be opened or created (a read-only folder): the message names it."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class RecalibrationError(RuntimeError):
    """The recalibration could not run; the message says why, `exit_code` how a scheduler
    should take it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, promoted: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.promoted = promoted  # @champion moved before it failed: the record says so


# What the lock file's job word means to an operator waiting for it.
LOCK_HOLDERS = {
    "recalibration": "a recalibration",
    "rollback": "a rollback",
    "train": "`leadscore train`",
    "notebook": "a notebook training or promoting a model",
    "criteria": "`leadscore criteria --apply`",
    "promote": "`leadscore promote`",
}


@contextmanager
def exclusive(lock_file: Path, job: str = "recalibration") -> Iterator[None]:
    """Hold the recalibration lock for the whole block; a second holder (a recalibration, a
    rollback or a training run, which move the same aliases) stops at once and is told which
    job holds it."""
    folder = lock_file.parent
    if not folder.exists() and not folder.resolve().is_relative_to(MODELS_DIR.resolve()):
        # Made only under the models folder: a typo in a shared path would split the lock in two.
        raise LockUnavailable(
            errno.ENOENT,
            f"cannot take the lock {lock_file}: no folder {folder} (recalibration.lock_file; a folder outside the "
            "models folder is not made, so every process sharing the lock names one that exists)",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = lock_file.open("a+")
    except OSError as exc:  # a read-only models folder: said as such, not as a registry problem
        raise LockUnavailable(
            exc.errno or 0,
            f"cannot take the lock {lock_file}: {exc.strerror or exc} (its folder, the models folder unless "
            "recalibration.lock_file says otherwise, must be writable)",
        ) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            # "<job> pid N", or "pid N" from a version before rollback took the lock.
            written = re.match(r"(?:(\w+) )?pid (\d+)", handle.read().strip())
            holder, pid = (written.group(1) or "recalibration", written.group(2)) if written else ("recalibration", "?")
            holder = LOCK_HOLDERS.get(holder, f"a {holder}")
            raise RecalibrationError(f"{holder} is running (pid {pid}; lock {lock_file})", EXIT_LOCKED) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{job} pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recalibrate(
    params: Params,
    *,
    model_name: str,
    data: Path | None = None,
    as_of: pd.Timestamp | None = None,
    dry_run: bool = False,
    if_drifted: bool = False,
    report_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run the recalibration and return its summary (also written as the report).

    Raises:
        RecalibrationError: it could not run (lock held, no champion or registry, no new
            data, too few outcomes).
    """
    reporter = reporter or Reporter()
    settings = params.recalibration
    if list(settings.grade_shares) != list(params.grades):  # the default shares name A-D
        raise RecalibrationError(
            f"recalibration.grade_shares names {', '.join(settings.grade_shares)}, the grades are "
            f"{', '.join(params.grades)}: give a share for each grade, best first (a recalibration would rename them)"
        )
    with exclusive(lock_path(settings.lock_file)):
        # Runs a killed process left RUNNING are ended now: a recalibration that stops early (no
        # new data, every quarter a scheduler runs it) would otherwise never reach training's sweep.
        use_experiment(params, reporter)
        try:
            champion = load_champion(model_name)
        except ModelNotReady as exc:
            hint = (
                "; run again once its artifacts can be read (if they never can, promote a version by hand in "
                "notebook 02, or remove the @champion alias and train)"
                if "could not be loaded" in str(exc)
                else ""
            )
            raise RecalibrationError(f"nothing to recalibrate against: {exc}{hint}") from exc
        if champion.kind != "crm":
            # It trains a CRM model from an export folder: against a flat champion it would compare
            # models of other inputs and register a CRM version under the flat model's name.
            raise RecalibrationError(
                f"{model_name}'s champion (v{champion.version}) is a flat model, trained on "
                f"{champion.scorer.metadata.get('data_source') or 'a flat CSV'}: recalibration retrains CRM models "
                "from an export folder; retrain a flat model with `leadscore train --data FILE.csv` and its label"
            )
        # The folder, without the " as of DAY" of a champion trained on an --as-of cut.
        trained_on = re.sub(r" as of \d{4}-\d\d-\d\d$", "", champion.scorer.metadata.get("data_source") or "")
        if data is None and trained_on and Path(trained_on).resolve() != EMBEDDED_DIR.resolve():
            # A scheduled job missing its --data would retrain on synthetic leads and could replace
            # the champion of the real export.
            raise RecalibrationError(
                f"no --data: {model_name}'s champion was trained on {trained_on}, not on the embedded synthetic "
                "export; give --data with the folder your CRM export lands in"
            )
        # From the export's end back: the newest snapshot up to a horizon and a snapshot's spacing
        # before it, the test and validation periods, then a training snapshot needs its own
        # horizon before validation starts. Said before the export is read: an empty training
        # split would be blamed on the export.
        features = params.features
        needed = 2 * features.horizon_days + features.snapshot_days + params.split.test_days + params.split.valid_days
        if settings.window_days < needed:
            raise RecalibrationError(
                f"recalibration.window_days: {settings.window_days} days leave no training period: the window needs "
                f"twice the horizon (features.horizon_days {features.horizon_days}), a snapshot's spacing "
                f"(features.snapshot_days {features.snapshot_days}), the test period (split.test_days "
                f"{params.split.test_days}) and the validation period (split.valid_days {params.split.valid_days}): "
                f"make it at least {needed} in params.yaml"
            )
        directory = data or ensure_embedded_data(params, reporter)
        if data is None:
            reporter.warn(f"no --data: recalibrating on the embedded synthetic export ({directory}), not yours")
        reporter.stage(
            f"Building the {settings.window_days}-day window of {directory} ending "
            f"{as_of or 'at the end of the export'}"
        )
        try:
            dataset = prepare_crm(directory, params, as_of=as_of, window_days=settings.window_days)
        except DataError as exc:
            raise RecalibrationError(str(exc)) from exc
        report_quarantine(dataset.quarantine, reporter)
        newest = dataset.split.windows.get("test")
        champion_test = champion.scorer.metadata.get("test_window")
        if as_of is not None and champion_test and as_of <= pd.Timestamp(champion_test[1]):
            # Exit 4 ("no new data yet") would let a mistyped year skip every quarter unnoticed.
            raise RecalibrationError(
                f"--as-of {as_of:%Y-%m-%d} is not after the data the champion (v{champion.version}) was already "
                f"tested on (up to {champion_test[1]}): a recalibration learns from newer leads; check the date"
            )
        if newest and champion_test and str(newest[1]) <= str(champion_test[1]):
            features = params.features
            # The first snapshot past the champion's test (an earlier --as-of ends further back).
            following = pd.Timestamp(champion_test[1]) + pd.Timedelta(days=features.snapshot_days)
            labelled = following + pd.Timedelta(days=features.horizon_days)
            when = (
                f"with an --as-of from {labelled:%Y-%m-%d} on (or none: the export is read up to --as-of)"
                if as_of is not None
                else f"once the export reaches {labelled:%Y-%m-%d}"
            )
            raise RecalibrationError(
                f"no new data: the newest quarter ends {newest[1]}, and the champion (v{champion.version}) "
                f"was already tested on data up to {champion_test[1]}; snapshots fall every "
                f"{features.snapshot_days} days from the export's first day, each labelled {features.horizon_days} "
                f"days later, so the next ({following:%Y-%m-%d}) counts {when}",
                EXIT_NO_NEW_DATA,
            )
        # The champion reads features built with its own settings (windows, half-life,
        # technologies), which may not be this checkout's: its drift, report and thresholds too.
        own_settings = champion.scorer.spec.settings.get("features")  # None: a champion from before it was kept
        rebuilt = None
        if own_settings and dataset.features_for is not None:
            technologies = list(champion.scorer.spec.settings.get("tech_vocabulary", []))
            rebuilt = dataset.features_for(own_settings, technologies, np.ones(len(dataset.features), dtype=bool))
        champion_features = dataset.features if rebuilt is None else rebuilt
        try:
            check_split(dataset, params)
        except DataError as exc:
            raise RecalibrationError(str(exc)) from exc
        # The input gates would keep the champion too, after a training run of minutes and a
        # version registered for nothing.
        shortfall = export_shortfall(champion.scorer, has_activities=dataset.has_activities,
                                     activities_cut=dataset.activities_cut,
                                     lead_columns=dataset.settings.get("lead_columns"))  # fmt: skip
        if shortfall:
            learned = "from engagement" if shortfall[0] == "engagement" else "from them"
            raise RecalibrationError(f"{shortfall[1]}, while the champion (v{champion.version}) learned {learned}: "
                                     "it stays; check the export, then run it again")  # fmt: skip
        break_check = export_breaks(dataset, params.features.snapshot_days, champion_test)
        breaks = break_check.pop("breaks")
        if breaks:
            raise RecalibrationError(
                "the newest quarter's new leads look like a break in the export, not a change in buyers: "
                + "; ".join(breaks[:5])
                + (f" and {len(breaks) - 5} more" if len(breaks) > 5 else "")
                + f". Compared with the new leads of {break_check['reference']} (champion v{champion.version}); its "
                "thresholds and the challenger's test would be read from these, so the champion stays. Check the "
                "export; if the change is real and here to stay, retrain by hand (`leadscore train --data EXPORT`, "
                "or `leadscore promote` a version trained on it): the next recalibration compares with that model's "
                "test quarter"
            )
        drift = measure_drift(dataset, champion, params, champion_features)
        summary: dict[str, Any] = {
            # The export's end, not the newest labelled snapshot (a horizon and up to a snapshot
            # interval earlier): a reader of "as of" asks how fresh the data is.
            "as_of": _day_or_moment(as_of or dataset.export_end),
            "newest_labelled_snapshot": newest[1] if newest else None,
            "model_name": model_name,
            "champion_version": champion.version,
            "dry_run": dry_run,
            "drift": drift,
            # Rows the export's checks set aside are in neither the drift nor the training: a
            # reader of the report must see them (half a campaign's leads without created_at).
            "quarantined": quarantine_counts(dataset.quarantine),
            "break_check": break_check,
        }
        if not break_check["checked"]:
            reporter.warn(break_check_skipped(break_check))
        if unlabelled_breaks_note(break_check):
            reporter.warn(unlabelled_breaks_note(break_check))
        # Said now: the training below takes minutes, and `--if-drifted` decides on this.
        drifted = [f"{r['feature']} ({r['moved']})" if r["moved"] else r["feature"]
                   for r in drift["features"] if r["drifted"]]  # fmt: skip
        more = len(drift["drifted_features"]) - 8
        reporter.note(
            f"drift of new leads: score PSI {drift['score_psi']:.3f}, features past the threshold: "
            + ("; ".join(drifted[:8]) + (f" and {more} more" if more > 0 else "") or "none")
        )
        if if_drifted and not drift["drifted"]:
            summary |= {"decision": "skipped", "why": f"no drift past the thresholds in {default_params_path()}",
                        "exit_code": 0}  # fmt: skip
            return _finish(summary, report_dir, None)

        reporter.stage("Training the challenger on the window (the champion stays live)")
        captured: dict[str, Any] = {}

        def thresholds(probability: np.ndarray, label: np.ndarray) -> dict:
            captured["probability"], captured["label"] = probability, label
            captured.update(new_thresholds(100 * probability, label, champion, params))
            return {"criteria": captured["criteria"], "grade_bands": captured["grade_bands"]}

        tuned = params.model_copy(
            update={"tuning": params.tuning.model_copy(
                update={"trials": settings.trials, "timeout_seconds": settings.timeout_seconds})}
        )  # fmt: skip
        try:
            metrics = train_and_register(
                dataset, tuned, reporter, model_name=model_name, promote_champion=False,
                register=not dry_run, on_test_scores=thresholds, job="recalibrate",
            )  # fmt: skip
        except DataError as exc:
            raise RecalibrationError(str(exc)) from exc
        if metrics["data"]["quarantine_file"]:
            reporter.note(f"quarantine: {metrics['data']['quarantine_file']}")
        summary["comparison"] = compare(dataset, champion, captured, params, champion_features)
        meta = champion.scorer.metadata
        summary["thresholds"] = {
            "old": {"criteria": meta["criteria"], "grade_bands": meta["grade_bands"]},
            "new": {"criteria": captured["criteria"], "grade_bands": captured["grade_bands"]},
            "sql_rule": captured["sql_rule"],
            "rule_changes": captured["rule_changes"],
        }
        for change in captured["rule_changes"]:
            reporter.note(f"rule from the params file, not the champion's: {change}")
        summary["gates"] = metrics["gates"]
        summary["challenger_version"] = metrics["model"]["version"]
        summary["run_id"] = metrics["model"]["run_id"]
        passed = metrics["gates_passed"]
        failed = "; ".join(f"{g['name']} ({g['detail']})" for g in metrics["gates"] if not g["passed"])
        summary["exit_code"] = 0
        if any(not g["passed"] and g["name"] in INPUT_GATES for g in metrics["gates"]):
            summary["exit_code"] = EXIT_FAILED
        if dry_run:
            would = "the gates would pass" if passed else f"the gates would fail: {failed}"
            if passed and (held := rollback_hold(model_name, champion.version, None)):
                would += f", but it would keep the champion: {held}"
            summary |= {"decision": "dry run", "why": f"nothing changed ({would})"}
        elif passed and (held := rollback_hold(model_name, champion.version, metrics["model"]["version"])):
            summary |= {"decision": "kept the champion", "why": held}
        elif passed:
            with sigterm_held():  # a SIGTERM waits until the move is in the run and the report
                return _promote(summary, metrics, champion, model_name, report_dir)
        else:
            summary |= {"decision": "kept the champion", "why": f"gates failed: {failed}"}
        return _finish(summary, report_dir, summary["run_id"])


def _promote(
    summary: dict[str, Any], metrics: dict[str, Any], champion: Any, model_name: str, report_dir: Path | None
) -> dict[str, Any]:
    """Move `@champion` to the recalibrated version, over the champion this report is about, and
    record it in the run and the report."""
    new = metrics["model"]["version"]
    try:
        at_gates = metrics["model"]["compared_with_champion"]
        if at_gates != champion.version:
            raise ChampionMoved(
                f"@champion moved while this recalibration ran (v{champion.version} when it started, whose "
                f"drift, thresholds and comparison this report holds; v{at_gates} at the gates): v{new} is "
                "registered, not promoted; run it again"
            )
        # Over the champion this report is about, and only if it is still @champion.
        before = promote(model_name, new, compared_with=champion.version)
    except ChampionMoved as exc:
        summary["gates"] = [*summary["gates"], {"name": "champion_unchanged_during_run", "passed": False,
                                                "detail": str(exc)}]  # fmt: skip
        summary |= {"decision": "kept the champion", "why": str(exc), "exit_code": EXIT_LOCKED}
        return _finish(summary, report_dir, summary["run_id"])
    summary |= {"decision": "promoted", "why": f"all gates passed; v{new} is @champion, v{before} is @previous"}
    try:
        mark_promoted(model_name, summary["run_id"], metrics, before)
        return _finish(summary, report_dir, summary["run_id"])
    except Exception as exc:  # the promotion stands: say so, not "unchanged"
        raise RecalibrationError(
            f"v{new} was promoted (v{before} is @previous), but the run or report could not be written: "
            f"{type(exc).__name__}: {exc}",
            promoted=True,
        ) from exc


def mark_promoted(model_name: str, run_id: str, metrics: dict[str, Any], previous: str | None) -> None:
    """Make the challenger's run say what happened to it: it was trained unpromoted (the
    champion stayed live while it trained), so its tag and metrics.json said otherwise."""
    client = MlflowClient(mlflow.get_tracking_uri())
    client.set_tag(run_id, "promoted", "True")
    metrics["promoted"] = True
    metrics["model"] |= {"alias": CHAMPION, "previous_champion": previous}
    client.log_dict(run_id, metrics, "metrics.json")
    # The version is @champion now; @challenger names a candidate still waiting.
    if current_version(client, model_name, CHALLENGER) == str(metrics["model"]["version"]):
        client.delete_registered_model_alias(model_name, CHALLENGER)


def new_leads(dataset: Dataset, snapshot_days: int) -> np.ndarray:
    """Each lead at its first snapshot, when it was new: created at most one snapshot spacing
    before it (a lead created at midnight of a snapshot day, a date without a time, is first
    seen a whole spacing later)."""
    new = (dataset.features["lead_age_days"] <= snapshot_days).to_numpy()
    return new & ~(dataset.keys["lead_id"].where(new).duplicated().to_numpy() & new)


def first_sightings(dataset: Dataset, snapshot_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Which examples drift compares: new leads (`new_leads`) in the window's training part
    (reference) and in its newest quarter (recent).

    The newest quarter holds only leads first seen in it, at most a quarter old, while the
    training part also holds every older lead still open at each snapshot: compared whole, lead
    age, lifetime totals, the score and the conversion rate differ by construction, and every
    run read as drifted. New leads against new leads, what moves is the buyers.
    """
    new = new_leads(dataset, snapshot_days)
    part = dataset.split.assignment.to_numpy()
    return new & np.isin(part, ["train", "valid"]), new & (part == "test")


def export_breaks(dataset: Dataset, snapshot_days: int, champion_test: Any = None) -> dict[str, Any]:
    """Fields that changed between the new leads the champion was tested on (`champion_test`:
    its test window, first and last snapshot; else the validation part) and the newest
    quarter's, as a broken export does (`drift.sudden_breaks`), with what was compared.

    Against the champion's own test quarter, not the whole window: once a person has retrained
    or promoted a model on an export with the change, its test quarter holds it too, and the
    change stops counting; until then every run refuses it. `checked` is False when either side
    holds too few new leads to tell a step from noise: the report says so rather than pass it."""
    new = new_leads(dataset, snapshot_days)
    part = dataset.split.assignment.to_numpy()
    before, reference = new & (part == "valid"), "the validation part"
    if champion_test:
        as_of = dataset.keys["as_of"]
        first, last = pd.Timestamp(champion_test[0]), pd.Timestamp(champion_test[1]) + pd.Timedelta(days=1)
        tested = new & ((as_of >= first) & (as_of < last)).to_numpy() & (part != "test")
        if tested.sum() >= BREAK_MIN_LEADS:  # else a champion tested before the window: the validation part
            before, reference = tested, "the champion's test quarter"
    after = new & (part == "test")
    breaks = sudden_breaks(dataset.features[before], dataset.features[after])
    check = {
        "reference": reference,
        "reference_leads": int(before.sum()),
        "recent_leads": int(after.sum()),
        "checked": bool(min(before.sum(), after.sum()) >= BREAK_MIN_LEADS),
    }
    if dataset.unlabelled_new_leads is not None:
        # Leads of the last month or two have no outcome yet, so no labelled snapshot: a break
        # that began there is said now, not a recalibration or two later. Said, not refused: they
        # are neither learned from nor tested on, and young leads may still have fields to fill.
        unlabelled, since = dataset.unlabelled_new_leads()
        named = {b.split(" ", 1)[0] for b in breaks}
        check["unlabelled_leads"] = len(unlabelled)
        check["unlabelled_since"] = None if since is None else f"{since:%Y-%m-%d}"
        check["unlabelled_breaks"] = [
            b for b in sudden_breaks(dataset.features[before], unlabelled) if b.split(" ", 1)[0] not in named
        ]
    return {"breaks": breaks, **check}


def unlabelled_breaks_note(check: dict[str, Any]) -> str | None:
    """The warning for breaks seen only among the leads whose outcomes are not known yet, or None."""
    if not check.get("unlabelled_breaks"):
        return None
    return (
        f"the {check['unlabelled_leads']:,} leads first seen after {check['unlabelled_since']} (outcomes not yet "
        f"known) look as a broken export would: {'; '.join(check['unlabelled_breaks'][:5])}. They are neither "
        "learned from nor tested on in this run; a field filled in days after a lead is created reads so too. "
        "Check the export before the next recalibration"
    )


def break_check_skipped(check: dict[str, Any]) -> str:
    """Why the broken-export check (`export_breaks`) could not be made, in words."""
    return (
        f"not checked for a broken export (a field blanked, a number 100 times off): {check['reference_leads']:,} "
        f"new leads in {check['reference']} and {check['recent_leads']:,} in the newest quarter, and it needs "
        f"{BREAK_MIN_LEADS} on each side"
    )


def measure_drift(
    dataset: Dataset, champion: LoadedModel, params: Params, champion_features: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Drift between new leads of the training part of the window and those of its newest
    quarter (`first_sightings`; `champion_features`: the window's examples as the champion reads
    them, when its feature settings differ)."""
    settings = params.recalibration
    before, after = first_sightings(dataset, params.features.snapshot_days)
    if not before.any() or not after.any():
        where = "the training part" if not before.any() else "the newest quarter"
        raise RecalibrationError(f"no new lead at its first snapshot in {where} of the window: no drift to measure")
    features = dataset.features
    table = feature_drift(features[before], features[after], settings.feature_psi_threshold)
    scored = features if champion_features is None else champion_features
    score_before = 100 * champion.scorer.predict_proba(scored[before])
    score_after = 100 * champion.scorer.predict_proba(scored[after])
    score_psi, score_noise = numeric_drift(score_before, score_after)
    label = dataset.label.to_numpy()
    shift = conversion_shift(label[before], label[after])  # one example per lead: leads are the units
    drifted_features = table.loc[table["drifted"], "feature"].tolist()
    return {
        "compared": {"reference_leads": int(before.sum()), "recent_leads": int(after.sum())},
        # The drifted ones first: one with a large index inside its larger noise bound (a column
        # of many levels) could push them out of the 15 kept.
        "features": table.sort_values(["drifted", "psi"], ascending=False).head(15).to_dict(orient="records"),
        "drifted_features": drifted_features,
        "score_psi": score_psi,
        "score_noise": score_noise,
        "conversion": shift,
        "drifted": bool(
            drifted_features
            or (score_psi >= settings.score_psi_threshold and score_psi > score_noise)
            or (
                abs(shift["shift"]) >= settings.conversion_shift_threshold
                and abs(shift["z"]) >= settings.conversion_shift_min_z
            )
        ),
    }


def new_thresholds(scores: np.ndarray, label: np.ndarray, champion: LoadedModel, params: Params) -> dict[str, Any]:
    """Criteria and grade bands recomputed on the newest quarter from the targets.

    The rules are the params file's (as a training run's are): an admin's edit (a hand-raise
    type, a next action, the ICP match) reaches the next recalibrated model, which used to
    keep the champion's rules and drop the edit without a word. The MQL and SQL scores and the
    grade bands are recomputed here; `rule_changes` lists what else differs from the champion's.
    """
    settings = params.recalibration
    criteria = params.criteria.model_dump(mode="json")
    criteria["mql"]["min_score"] = top_share_threshold(scores, settings.mql_top_share)
    sql = precision_threshold(scores, label, settings.sql_precision, settings.min_sql_leads)
    rule = f"precision ≥ {settings.sql_precision:.0%} with at least {settings.min_sql_leads} leads"
    if sql is None:
        sql = f1_threshold(scores, label)
        rule = f"F1-optimal (no score reached {settings.sql_precision:.0%} precision)"
    criteria["sql"]["min_score"] = round(sql, 1)
    if criteria["sql"]["min_score"] < criteria["mql"]["min_score"]:
        # A sales-qualified lead is a marketing-qualified one first: SQL below MQL would pass
        # leads to sales that marketing would not hand over (a quarter of weak scores does it).
        rule += f"; {criteria['sql']['min_score']} raised to the MQL threshold, which it may not be below"
        criteria["sql"]["min_score"] = criteria["mql"]["min_score"]
    bands, _ = grade_bands(scores, label, settings.grade_shares)
    changes = rule_changes(champion.scorer.metadata["criteria"], criteria)
    # The ideal customer profile is the features' (the ICP match), also the params file's now.
    learned = getattr(getattr(champion.scorer, "spec", None), "settings", None) or {}
    if "icp" in learned.get("features", {}):
        icp = params.features.icp.model_dump(mode="json")
        changes += rule_changes(learned["features"]["icp"], icp, "features.icp")
    return {"criteria": criteria, "grade_bands": bands, "sql_rule": rule, "rule_changes": changes}


def rule_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "criteria") -> list[str]:
    """`key: old → new` for each rule that differs, the recomputed score thresholds aside."""
    recomputed = ("criteria.mql.min_score", "criteria.sql.min_score")
    return [str(change) for change in differences(old, new, prefix) if change.name not in recomputed]


def compare(
    dataset: Dataset,
    champion: LoadedModel,
    captured: dict,
    params: Params,
    champion_features: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Challenger and champion on the same newest quarter (the champion on `champion_features`
    when given: its own feature settings)."""
    test = (dataset.split.assignment == "test").to_numpy()
    label = captured["label"]
    old = champion.scorer.predict_proba((dataset.features if champion_features is None else champion_features)[test])
    new = captured["probability"]
    keys = ("roc_auc", "log_loss", "ece", "lift_top_decile", "base_rate")
    out: dict[str, Any] = {}
    stages: dict[str, np.ndarray] = {}
    for name, probability, criteria, bands in (
        ("champion", old, champion.scorer.metadata["criteria"], champion.scorer.metadata["grade_bands"]),
        ("challenger", new, captured["criteria"], captured["grade_bands"]),
    ):
        scores = 100 * probability
        metrics = classification_metrics(label, probability)
        volumes = {}
        for stage in ("mql", "sql"):
            above = scores >= criteria[stage]["min_score"]
            volumes[stage] = {"min_score": criteria[stage]["min_score"], "leads": int(above.sum()),
                              "conversion": float(label[above].mean()) if above.any() else None}  # fmt: skip
        out[name] = {
            **{k: metrics[k] for k in keys},
            "by_grade": conversion_by_grade(label, probability, bands),
            "score_volumes": volumes,
        }
        stages[name] = _score_stage(scores, criteria)
    changed = stages["champion"] != stages["challenger"]
    out["stage_changes"] = {
        "leads": int(changed.sum()),
        "of": len(changed),
        "moves": pd.Series([f"{a} → {b}" for a, b in zip(stages["champion"][changed], stages["challenger"][changed],
                            strict=True)]).value_counts().to_dict(),
    }  # fmt: skip
    return out


def _score_stage(scores: np.ndarray, criteria: dict) -> np.ndarray:
    """The stage the score thresholds alone would give (the fit, engagement, hand-raise and
    BANT parts of the rules are the same for both models' leads)."""
    return np.where(scores >= criteria["sql"]["min_score"], "SQL",
                    np.where(scores >= criteria["mql"]["min_score"], "MQL", "nurture"))  # fmt: skip


def _finish(summary: dict[str, Any], report_dir: Path | None, run_id: str | None) -> dict[str, Any]:
    folder = report_dir or MODELS_DIR / "reports" / f"recalibration-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    markdown = report_markdown(summary)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    (folder / "report.html").write_text(report_html(summary, markdown), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    summary["report"] = str(folder)
    if run_id:
        client = MlflowClient(mlflow.get_tracking_uri())
        client.log_artifacts(run_id, str(folder), artifact_path="recalibration")
    return summary


def _day_or_moment(moment: Any) -> str:
    """A day as 2026-11-20, a moment within one as an ISO timestamp."""
    stamp = pd.Timestamp(moment)
    return str(stamp.date()) if stamp == stamp.normalize() else stamp.isoformat()


def report_markdown(summary: dict[str, Any]) -> str:
    """The plain-words summary: decision and why, thresholds old and new, drift, comparison."""
    lines = [f"# Recalibration of {summary['model_name']} as of {summary['as_of']}", ""]
    lines.append(f"**Decision: {summary['decision']}** — {summary['why']}.")
    if summary.get("newest_labelled_snapshot"):
        lines.append(f"Newest snapshot whose outcome is known: {summary['newest_labelled_snapshot']}.")
    if summary.get("dry_run"):
        lines.append("Dry run: the registry was not changed.")
    drift = summary["drift"]
    shift = drift["conversion"]
    drifted = ", ".join(drift["drifted_features"]) or "none"
    compared = drift.get("compared")
    seen = (
        [f"- Compared: new leads, each at its first snapshot: {compared['reference_leads']:,} in the training part, "
         f"{compared['recent_leads']:,} in the newest quarter."]
        if compared else []
    )  # fmt: skip
    lines += [
        "",
        "## Drift (new leads of the training window vs those of the newest quarter)",
        "",
        *seen,
        f"- Conversion rate {shift['reference_rate']:.1%} → {shift['recent_rate']:.1%} "
        f"({shift['shift'] * 100:+.1f} percentage points, {abs(shift['z']):.1f} standard errors of sampling noise).",
        f"- Score distribution of the champion: PSI {drift['score_psi']:.3f}"
        + (f" (sampling noise alone stays under {drift['score_noise']:.3f})." if "score_noise" in drift else "."),
        f"- Drifted features (PSI past the threshold and beyond sampling noise): {drifted}.",
    ]
    if summary.get("break_check") and not summary["break_check"]["checked"]:
        lines.append(f"- {break_check_skipped(summary['break_check'])}.")
    check = summary.get("break_check") or {}
    if unlabelled_breaks_note(check):
        lines.append(f"- **Newest leads:** {unlabelled_breaks_note(check)}.")
    elif check.get("unlabelled_since"):
        count, since = check["unlabelled_leads"], check["unlabelled_since"]
        lines.append(f"- Newest leads (outcomes not yet known): {count:,} first seen after {since}, "
                     + ("no broken field among them." if count >= BREAK_MIN_LEADS else
                        f"too few to check for a broken export (it needs {BREAK_MIN_LEADS})."))  # fmt: skip
    if summary.get("quarantined"):
        lines.append("- Set aside by the export's checks, so neither compared nor learned from: "
                     + "; ".join(summary["quarantined"]) + ".")  # fmt: skip
    lines += ["", "| feature | PSI | noise stays under | what moved |", "|---|---|---|---|"] + [
        f"| {r['feature']} | {r['psi']:.3f} | {r.get('noise', float('nan')):.3f} | {r.get('moved', '')} |"
        for r in drift["features"][:10]
    ]
    if "thresholds" in summary:
        old, new = summary["thresholds"]["old"], summary["thresholds"]["new"]
        lines += ["", "## Thresholds", "", "| | champion | challenger |", "|---|---|---|",
                  f"| MQL min score | {old['criteria']['mql']['min_score']} | {new['criteria']['mql']['min_score']} |",
                  f"| SQL min score | {old['criteria']['sql']['min_score']} | {new['criteria']['sql']['min_score']} "
                  f"({summary['thresholds']['sql_rule']}) |"]  # fmt: skip
        for grade in sorted(set(old["grade_bands"]) | set(new["grade_bands"])):
            lines.append(
                f"| grade {grade} from | {old['grade_bands'].get(grade, '—')} | {new['grade_bands'].get(grade, '—')} |"
            )
        changed = summary["thresholds"].get("rule_changes") or []
        lines += ["", "Other rules, from the params file in force:"] + (
            [f"- {change}" for change in changed] or ["- the same as the champion's"]
        )
        comparison = summary["comparison"]
        lines += [
            "",
            "## Champion and challenger on the newest quarter",
            "",
            "| | champion | challenger |",
            "|---|---|---|",
        ]
        for key in ("roc_auc", "log_loss", "ece", "lift_top_decile"):
            lines.append(f"| {key} | {comparison['champion'][key]:.4f} | {comparison['challenger'][key]:.4f} |")
        for stage in ("mql", "sql"):
            cells = []
            for name in ("champion", "challenger"):
                v = comparison[name]["score_volumes"][stage]
                rate = "—" if v["conversion"] is None else f"{v['conversion']:.1%}"
                cells.append(f"{v['leads']:,} examples ≥ {v['min_score']}, {rate} converted")
            lines.append(f"| {stage.upper()} by score | {cells[0]} | {cells[1]} |")
        changes = comparison["stage_changes"]
        moves = ", ".join(f"{move}: {n:,}" for move, n in changes["moves"].items()) or "none"
        lines.append(
            f"\nWith the new model and thresholds, {changes['leads']:,} of the {changes['of']:,} examples of the "
            f"newest quarter would change stage by score ({moves}). An example is a lead open at a snapshot: "
            "a lead open at several snapshots counts once for each."
        )
        for name in ("champion", "challenger"):
            grades = ", ".join(_grade_text(g, v) for g, v in comparison[name]["by_grade"].items())
            lines.append(f"\nConversion by grade, {name}: {grades}.")
        lines += ["", "## Gates", ""] + [
            f"- {'pass' if g['passed'] else 'FAIL'}: {g['name']} — {g['detail']}" for g in summary["gates"]
        ]
    if summary["decision"] == "promoted":
        lines += ["", f"Undo this promotion with `leadscore rollback --model-name {summary['model_name']}`."]
    return "\n".join(lines) + "\n"


def _grade_text(grade: str, row: dict) -> str:
    rate = "—" if row["conversion"] is None else f"{row['conversion']:.1%}"
    return f"{grade} {row['share']:.0%} of examples / {rate}"


def report_html(summary: dict[str, Any], markdown: str) -> str:
    """The report as one HTML page with its charts (inline SVG)."""
    drift = summary["drift"]["features"][:12]
    charts = [horizontal_bars([d["feature"] for d in drift], [d["psi"] for d in drift], "population stability index")]
    if "comparison" in summary:
        for name in ("champion", "challenger"):
            grades = summary["comparison"][name]["by_grade"]
            charts.append(f"<h3>Conversion by grade, {name}</h3>" + columns(
                list(grades), [g["conversion"] or 0 for g in grades.values()], "conversion rate"))  # fmt: skip
    return report_page(markdown, "".join(charts))
