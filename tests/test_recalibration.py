"""`leadscore recalibrate` on generated data whose buyer behaviour drifts by design."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.params import load_params
from features.synthetic import generate_crm, write_crm
from training.pipeline import prepare_crm, train_and_register
from training.recalibrate import EXIT_FAILED, EXIT_LOCKED, EXIT_NO_NEW_DATA, RecalibrationError, exclusive, recalibrate

pytestmark = pytest.mark.slow
MODEL = "recal-model"
FAST = {
    "tuning.trials": 3,
    "tuning.max_boost_rounds": 200,
    "mlflow.shap_sample": 100,
    "recalibration.trials": 3,
    "recalibration.timeout_seconds": 900,  # the trials bound it (a loaded machine must not cut them)
    "gates.min_auc_gain_vs_baseline": -1.0,
    "gates.max_test_ece": 0.2,
    "gates.max_auc_drop_vs_champion": 0.05,
}
FIRST_AS_OF = pd.Timestamp("2025-03-01")
LATER = pd.Timestamp("2025-11-01")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drifting-crm")
    write_crm(generate_crm(5000, seed=11, start="2024-01-01", months=23), folder)
    return folder


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    lock = tmp_path_factory.mktemp("lock") / "recalibrate.lock"
    return {**FAST, "recalibration.lock_file": str(lock)}


@pytest.fixture(scope="module")
def champion(export, settings) -> str:
    """A champion trained on the export as it was at FIRST_AS_OF."""
    params = load_params(**settings)
    metrics = train_and_register(prepare_crm(export, params, as_of=FIRST_AS_OF), params, model_name=MODEL)
    assert metrics["promoted"], metrics["gates"]
    return metrics["model"]["version"]


def _aliases() -> dict[str, str]:
    client = MlflowClient()
    return {a: str(client.get_model_version_by_alias(MODEL, a).version)
            for a in ("champion", "previous") if _has(client, a)}  # fmt: skip


def _has(client, alias: str) -> bool:
    try:
        client.get_model_version_by_alias(MODEL, alias)
    except Exception:
        return False
    return True


def mlflow_json(client: MlflowClient, run_id: str, name: str) -> dict:
    import json

    return json.loads(Path(client.download_artifacts(run_id, name)).read_text())


def _versions() -> list[str]:
    return sorted(v.version for v in MlflowClient().search_model_versions(f"name='{MODEL}'"))


def test_a_dry_run_changes_nothing(export, settings, champion, tmp_path):
    before = (_aliases(), _versions())
    summary = recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=LATER, dry_run=True,
                          report_dir=tmp_path)  # fmt: skip
    assert (_aliases(), _versions()) == before
    assert summary["decision"] == "dry run" and summary["challenger_version"] is None
    failing = [gate["name"] for gate in summary["gates"] if not gate["passed"]]
    assert all(name in summary["why"] for name in failing) and ("would pass" in summary["why"]) == (not failing)
    assert MlflowClient().get_run(summary["run_id"]).data.tags["promoted"] == "False"
    report = (tmp_path / "report.md").read_text()
    assert "Dry run" in report and "MQL min score" in report
    page = (tmp_path / "report.html").read_text()  # a manager's page: tables as tables, not pipes in a <pre>
    assert "<table>" in page and "<td>MQL min score</td>" in page and "|---|" not in page and "<pre>" not in page
    assert "rollback" not in report  # nothing was promoted, so nothing to undo
    # "As of" is the data's end; the newest labelled snapshot is a horizon earlier, said apart.
    assert summary["as_of"] == "2025-11-01" and summary["newest_labelled_snapshot"] < summary["as_of"]
    assert f"Newest snapshot whose outcome is known: {summary['newest_labelled_snapshot']}" in report


def test_the_shortest_window_allowed_has_a_training_period(export, settings, champion, tmp_path, monkeypatch):
    """The least `recalibration.window_days` the check allows trains (a first check was a horizon
    short: 211-239 days passed it and left the training split empty). The champion was tested
    before this window, so the broken-export check compares with the validation part; with too
    few new leads on a side to tell a step from noise, the report says the check was not made
    (it passed silently)."""
    import training.recalibrate as module

    monkeypatch.setattr(module, "BREAK_MIN_LEADS", 10_000)  # more new leads than either side holds
    params = load_params(**settings, **{"recalibration.window_days": 270})
    summary = recalibrate(params, model_name=MODEL, data=export, as_of=LATER, dry_run=True, report_dir=tmp_path)
    assert summary["decision"] == "dry run", summary.get("why")
    check = summary["break_check"]
    assert check["reference"] == "the validation part" and not check["checked"], check
    said = f"not checked for a broken export (a field blanked, a number 100 times off): {check['reference_leads']:,}"
    assert said in (tmp_path / "report.md").read_text()


def test_if_drifted_skips_a_steady_export_with_the_default_thresholds(export, settings, champion, tmp_path):
    """The newest quarter holds only new leads, the training part every open lead: compared
    whole, lead age and lifetime totals moved by construction and every run read as drifted
    (lead_age_days PSI about 2.4 here). New leads against new leads, this export's mild buyer
    drift stays under the thresholds."""
    before = (_aliases(), _versions())
    summary = recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=LATER, if_drifted=True,
                          report_dir=tmp_path)  # fmt: skip
    drift = summary["drift"]
    assert summary["decision"] == "skipped" and (_aliases(), _versions()) == before, drift
    assert summary["exit_code"] == 0  # a scheduler reads it as a dry run's (it was null)
    assert drift["drifted_features"] == [] and drift["score_psi"] < 0.1, drift
    assert drift["compared"]["reference_leads"] > 3 * drift["compared"]["recent_leads"] > 0
    check = summary["break_check"]  # the champion was tested inside the window: its test quarter
    assert check["checked"] and check["reference"] == "the champion's test quarter", check
    report = (tmp_path / "report.md").read_text()
    assert f"{drift['compared']['recent_leads']:,} in the newest quarter" in report


def test_a_crash_half_way_leaves_the_champion(export, settings, champion, monkeypatch):
    import training.recalibrate as module

    before = (_aliases(), _versions())

    def crash(*args, **kwargs):
        raise MemoryError("killed half-way")

    monkeypatch.setattr(module, "train_and_register", crash)
    with pytest.raises(MemoryError):
        recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=LATER)
    assert (_aliases(), _versions()) == before


def test_failing_gates_leave_the_champion(export, settings, champion, tmp_path):
    params = load_params(**{**settings, "gates.max_test_ece": 0.0})
    summary = recalibrate(params, model_name=MODEL, data=export, as_of=LATER, report_dir=tmp_path)
    assert summary["decision"] == "kept the champion" and "max_test_ece" in summary["why"]
    assert _aliases()["champion"] == champion
    run = MlflowClient().get_run(summary["run_id"]).data.tags
    assert (run["promoted"], run["gates_passed"]) == ("False", "False")


def _newest_leads_changed(
    export: Path, folder: Path, column: str, value: str, share: float, since: str = "2025-07-15"
) -> Path:
    """The export with `column` set to `value` for `share` of the leads created since `since`
    (spread evenly through them)."""
    folder.mkdir(exist_ok=True)
    for file in export.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    leads = pd.read_csv(export / "leads.csv", dtype=str, keep_default_na=False)
    recent = leads.index[pd.to_datetime(leads["created_at"], errors="coerce", format="mixed") >= since]
    leads.loc[recent[(np.arange(len(recent)) * share) % 1 < share], column] = value
    leads.to_csv(folder / "leads.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def campaign_export(export, tmp_path_factory) -> Path:
    """The export with a trade-show season: half the leads created since mid-July 2025 come from events."""
    return _newest_leads_changed(export, tmp_path_factory.mktemp("campaign-crm"), "lead_source", "Event", 0.5)


def test_a_field_blanked_in_the_newest_quarter_is_refused_as_a_broken_export(export, settings, champion, tmp_path):
    """A CRM form that lost its industry field is not a change in buyers: thresholds set on those
    leads would be wrong, so the champion stays and a person is asked to look (exit 2)."""
    broken = _newest_leads_changed(export, tmp_path / "broken", "industry", "", 0.75)
    before = (_aliases(), _versions())
    said = r"break in the export.*industry blank for \d\d% of new leads"
    with pytest.raises(RecalibrationError, match=said) as refused:
        recalibrate(load_params(**settings), model_name=MODEL, data=broken, as_of=LATER, if_drifted=True)
    assert refused.value.exit_code == EXIT_FAILED and (_aliases(), _versions()) == before
    # Once a person has trained a champion on an export with the change, its test quarter holds
    # it, and the change no longer counts as a break (it was refused for months after).
    kept = _newest_leads_changed(export, tmp_path / "kept", "industry", "", 0.75, since="2025-05-01")
    params = load_params(**settings)
    retrained = train_and_register(prepare_crm(kept, params, as_of=pd.Timestamp("2025-10-01")), params,
                                   model_name="recal-kept-change")  # fmt: skip
    assert retrained["promoted"], retrained["gates"]
    summary = recalibrate(params, model_name="recal-kept-change", data=kept, as_of=LATER, dry_run=True)
    assert summary["decision"] == "dry run", summary.get("why")
    with pytest.raises(RecalibrationError, match="industry blank for"):  # the older champion still refuses it
        recalibrate(params, model_name=MODEL, data=kept, as_of=LATER, dry_run=True)


def test_a_field_blanked_after_the_newest_labelled_snapshot_is_said(export, settings, champion, tmp_path):
    """Leads of the export's last month have no outcome yet, so no labelled snapshot: a form
    that lost its industry field then went unsaid until a recalibration or two later. Their
    fields are compared too, and a break among them is warned of, not refused: they are neither
    learned from nor tested on, and a young lead's field may be filled in later."""
    broken = _newest_leads_changed(export, tmp_path / "broken-late", "industry", "", 0.75, since="2025-09-25")
    summary = recalibrate(load_params(**settings), model_name=MODEL, data=broken, as_of=LATER, dry_run=True,
                          report_dir=tmp_path / "report")  # fmt: skip
    check = summary["break_check"]
    assert summary["decision"] == "dry run" and check["unlabelled_leads"] >= 50, check
    assert [b.split(" ", 1)[0] for b in check["unlabelled_breaks"]] == ["industry"], check
    report = (tmp_path / "report" / "report.md").read_text()
    assert re.search(rf"leads first seen after {check['unlabelled_since']} \(outcomes not yet known\) look as a "
                     r"broken export would: industry blank for \d\d% of new leads", report), report  # fmt: skip
    steady = recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=LATER, dry_run=True)
    assert steady["break_check"]["unlabelled_breaks"] == [], steady["break_check"]


def test_recalibration_detects_drift_moves_thresholds_and_promotes(
    export, campaign_export, settings, champion, tmp_path
):
    summary = recalibrate(load_params(**settings), model_name=MODEL, data=campaign_export, as_of=LATER,
                          if_drifted=True, report_dir=tmp_path)  # fmt: skip
    # What moved, and only that: the structure of the split no longer reads as drift.
    assert summary["drift"]["drifted"] and summary["drift"]["drifted_features"] == ["lead_source"], summary["drift"]
    old, new = summary["thresholds"]["old"]["criteria"], summary["thresholds"]["new"]["criteria"]
    assert (old["mql"]["min_score"], old["sql"]["min_score"]) != (new["mql"]["min_score"], new["sql"]["min_score"])
    comparison = summary["comparison"]
    assert comparison["challenger"]["roc_auc"] >= comparison["champion"]["roc_auc"] - 0.05
    assert summary["decision"] == "promoted", summary["why"]
    aliases = _aliases()
    assert aliases["champion"] == summary["challenger_version"] and aliases["previous"] == champion
    # The challenger's run, trained while the champion stayed live, now says it was promoted.
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.tags["promoted"] == "True"
    # Named and tagged as the recalibration it is (it read "train-crm" in MLflow and `versions`).
    assert run.info.run_name == "recalibrate-crm" and run.data.tags["leadscore.job"] == "recalibrate"
    metrics = mlflow_json(client, summary["run_id"], "metrics.json")
    assert metrics["promoted"] is True and metrics["model"]["alias"] == "champion"
    assert metrics["model"]["previous_champion"] == champion and not _has(client, "challenger")
    report = (tmp_path / "report.md").read_text()
    assert "Decision: promoted" in report and "Drifted features" in report and "rollback" in report
    assert "would change stage" in report and summary["comparison"]["stage_changes"]["of"] > 0
    # The new champion has seen this quarter: running again on the same data is refused.
    with pytest.raises(RecalibrationError, match="no new data") as refused:
        recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=LATER)
    assert refused.value.exit_code == EXIT_NO_NEW_DATA
    # It names the day the export must reach: the next snapshot, labelled a horizon later.
    ends = pd.Timestamp(summary["newest_labelled_snapshot"])
    following, labelled = ends + pd.Timedelta(days=30), ends + pd.Timedelta(days=60)
    said = f"the next ({following:%Y-%m-%d}) counts with an --as-of from {labelled:%Y-%m-%d} on"
    assert said in str(refused.value)
    # An --as-of within the horizon after the champion's test data names the same next snapshot.
    within = ends + pd.Timedelta(days=1)
    with pytest.raises(RecalibrationError, match="no new data") as earlier:
        recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=within)
    assert said in str(earlier.value) and earlier.value.exit_code == EXIT_NO_NEW_DATA
    # One on or before it is a mistyped date, not "no new data yet" (exit 4, which a scheduler takes
    # as a notice: a wrong year would skip every quarter unnoticed).
    with pytest.raises(RecalibrationError, match="is not after the data the champion") as typo:
        recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=ends - pd.Timedelta(days=365))
    assert typo.value.exit_code == 2
    # A window that cannot hold the horizon, a test and a validation period is named as the setting it is.
    with pytest.raises(RecalibrationError, match=r"recalibration\.window_days: 269 days leave no training") as short:
        recalibrate(load_params(**settings, **{"recalibration.window_days": 269}), model_name=MODEL, data=export)
    assert "make it at least 270" in str(short.value) and short.value.exit_code == 2


def test_two_recalibrations_cannot_run_at_once(export, settings, champion):
    params = load_params(**settings)
    lock = Path(settings["recalibration.lock_file"])
    with exclusive(lock), pytest.raises(RecalibrationError, match="a recalibration is running"):
        recalibrate(params, model_name=MODEL, data=export, as_of=LATER)
    # The message names the job holding the lock, so an operator knows what to wait for.
    with exclusive(lock, job="rollback"), pytest.raises(RecalibrationError, match="a rollback is running"):
        recalibrate(params, model_name=MODEL, data=export, as_of=LATER)
    with exclusive(lock, job="train"), pytest.raises(RecalibrationError, match="`leadscore train` is running"):
        recalibrate(params, model_name=MODEL, data=export, as_of=LATER)


def test_no_champion_is_a_clear_error(export, settings):
    with pytest.raises(RecalibrationError, match="nothing to recalibrate"):
        recalibrate(load_params(**settings), model_name="never-trained", data=export)


def test_cli_exits_non_zero_with_a_clear_message_when_it_cannot_run(export, settings, params_file, champion):
    # (the champion: a store that holds models, with none of them named "never-trained")
    cli = str(Path(sys.executable).parent / "leadscore")
    env = {**os.environ, "LEADSCORE_PARAMS": str(params_file("recalibrate.yaml", **settings))}
    done = subprocess.run([cli, "recalibrate", "--model-name", "never-trained", "--data", str(export)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode != 0
    assert "nothing to recalibrate against" in done.stderr and "Traceback" not in done.stderr
    # Checked before any work: a report folder that cannot be written, a date after today.
    (export.parent / "a_file").write_text("")
    report_dir = str(export.parent / "a_file" / "report")
    unwritable = subprocess.run([cli, "recalibrate", "--data", str(export), "--report-dir", report_dir],
                                capture_output=True, text=True, env=env)  # fmt: skip
    assert unwritable.returncode == 2 and "cannot write the report" in unwritable.stderr, unwritable.stderr
    assert "Building" not in unwritable.stdout
    future = subprocess.run([cli, "recalibrate", "--data", str(export), "--as-of", "2100-01-01"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert future.returncode == 2 and "after today" in future.stderr
    absent = subprocess.run([cli, "recalibrate", "--data", str(export.parent / "not-there")],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert absent.returncode == 2 and "not-there: no such folder" in absent.stderr and "Building" not in absent.stdout
    # rollback: a params file that does not load is one line, not a traceback.
    bad_params = subprocess.run([cli, "rollback"], capture_output=True, text=True,
                                env={**env, "LEADSCORE_PARAMS": str(export.parent / "missing.yaml")})  # fmt: skip
    assert bad_params.returncode == 2 and "Traceback" not in bad_params.stderr and "missing.yaml" in bad_params.stderr
    # Another recalibration holding the lock has its own exit code: a scheduler retries later.
    # A rollback and a training run wait for it too, since all of them move the champion.
    # A scheduler's fixed --report-dir gets a summary.json saying why, not an earlier run's.
    scheduled = export.parent / "scheduled-report"
    scheduled.mkdir(exist_ok=True)
    (scheduled / "summary.json").write_text('{"decision": "promoted"}')
    (scheduled / "report.html").write_text("<pre>**Decision: promoted**</pre>")
    with exclusive(Path(settings["recalibration.lock_file"])):
        locked = subprocess.run([cli, "recalibrate", "--data", str(export), "--report-dir", str(scheduled)],
                                capture_output=True, text=True, env=env)  # fmt: skip
        held = subprocess.run([cli, "rollback", "--model-name", MODEL], capture_output=True, text=True, env=env)
        # The folder of a run still going (a process named so stands for it): its record stays.
        running = export.parent / "running-report"
        running.mkdir(exist_ok=True)
        going = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "recalibrate"])
        record = json.dumps({"decision": "running", "pid": going.pid, "host": socket.gethostname()})
        (running / "summary.json").write_text(record)
        try:
            beside = subprocess.run([cli, "recalibrate", "--data", str(export), "--report-dir", str(running)],
                                    capture_output=True, text=True, env=env)  # fmt: skip
        finally:
            going.kill()
            going.wait()
        # A record whose process is gone, or is no recalibration (its number given to another), is stale.
        stale = export.parent / "stale-report"
        stale.mkdir(exist_ok=True)
        (stale / "summary.json").write_text(record.replace(str(going.pid), str(os.getpid())))
        subprocess.run([cli, "recalibrate", "--data", str(export), "--report-dir", str(stale)], env=env,
                       capture_output=True)  # fmt: skip
        # A training run compares with the champion and promotes: it stops before loading anything.
        training = subprocess.run([cli, "train", "--data", str(export), "--model-name", MODEL],
                                  capture_output=True, text=True, env=env)  # fmt: skip
    assert locked.returncode == EXIT_LOCKED and "a recalibration is running" in locked.stderr
    assert beside.returncode == EXIT_LOCKED and (running / "summary.json").read_text() == record, beside.stderr
    assert f"recalibration still running (pid {going.pid})" in " ".join(beside.stdout.split()), beside.stdout
    assert json.loads((stale / "summary.json").read_text())["decision"] == "locked"
    assert held.returncode == EXIT_LOCKED and "try again after it finishes" in held.stderr, held.stderr
    assert training.returncode == EXIT_LOCKED and "a recalibration is running" in training.stderr, training.stderr
    assert "Loading" not in training.stdout and "Traceback" not in training.stderr
    recorded = json.loads((scheduled / "summary.json").read_text())
    assert recorded["decision"] == "locked" and recorded["exit_code"] == EXIT_LOCKED
    assert "a recalibration is running" in recorded["why"]
    # So does a person opening the report there: not the earlier run's decision.
    for name in ("report.md", "report.html"):
        shown = (scheduled / name).read_text()
        assert "Decision: locked" in shown and "promoted" not in shown and "a recalibration is running" in shown


def test_a_store_it_cannot_use_is_recorded_for_the_scheduler_and_nothing_is_created(export, settings, params_file):
    # The store is checked before any work; a scheduler reading --report-dir learns why too.

    from tests.test_service import _free_port

    cli = str(Path(sys.executable).parent / "leadscore")
    env = {**os.environ, "LEADSCORE_PARAMS": str(params_file("recalibrate.yaml", **settings))}
    scheduled = export.parent / "store-report"
    absent = export.parent / "no-store" / "mlflow.db"
    absent.parent.mkdir(exist_ok=True)
    for uri, says in [(f"http://127.0.0.1:{_free_port()}", "no tracking server answers"),
                      (f"sqlite:///{absent}", "no model registered yet")]:  # fmt: skip
        done = subprocess.run([cli, "recalibrate", "--data", str(export), "--report-dir", str(scheduled)],
                              capture_output=True, text=True, env={**env, "MLFLOW_TRACKING_URI": uri})  # fmt: skip
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
        recorded = json.loads((scheduled / "summary.json").read_text())
        assert recorded["decision"] == "failed" and says in recorded["why"] and recorded["exit_code"] == 2
        (scheduled / "summary.json").unlink()
    assert not absent.exists()  # an empty store is not created only to find no champion in it


def test_an_as_of_before_the_export_is_a_clear_error(export, settings, champion):
    with pytest.raises(RecalibrationError, match="no lead was created before 1999-01-01: the export starts"):
        recalibrate(load_params(**settings), model_name=MODEL, data=export, as_of=pd.Timestamp("1999-01-01"))


def test_a_leads_file_ending_months_before_the_activities_is_named_as_the_cause(export, settings, champion, tmp_path):
    """It stopped with LightGBM's "Input data must be 2 dimensional and non empty"."""
    import shutil

    cut = shutil.copytree(export, tmp_path / "cut")
    leads = pd.read_csv(cut / "leads.csv", dtype=str, keep_default_na=False)
    created = pd.to_datetime(leads["created_at"], errors="coerce", format="mixed")
    leads[created.isna() | (created < "2025-05-01")].to_csv(cut / "leads.csv", index=False)
    with pytest.raises(RecalibrationError, match=r"no lead is first seen after 2025-0[45]-\d\d, yet the export runs"):
        recalibrate(load_params(**settings), model_name=MODEL, data=cut, as_of=LATER, dry_run=True)


def test_the_lock_message_reads_the_older_pid_only_format(tmp_path):
    """A lock written before rollback took it holds only "pid N"."""
    import fcntl

    lock = tmp_path / "recalibrate.lock"
    with lock.open("w") as handle:
        handle.write("pid 4242")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RecalibrationError, match=r"^a recalibration is running \(pid 4242;"), exclusive(lock):
            pass


def test_a_recalibration_stopped_by_sigterm_says_so_where_a_scheduler_looks(export, settings, params_file, champion):
    """A CI timeout or cancel stops a job with SIGTERM: Python died silent, the MLflow run stayed
    RUNNING and the fixed report folder kept the earlier run's "promoted"."""
    import signal
    import time

    import mlflow

    def running() -> set[str]:  # ids: an earlier test's run left RUNNING may be ended meanwhile
        found = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'")
        return set(found["run_id"])

    already = running()
    cli = str(Path(sys.executable).parent / "leadscore")
    env = {**os.environ, "LEADSCORE_PARAMS": str(params_file("recalibrate-term.yaml", **settings))}
    report = export.parent / "term-report"
    report.mkdir(exist_ok=True)
    (report / "summary.json").write_text('{"decision": "promoted"}')
    command = [cli, "recalibrate", "--data", str(export), "--report-dir", str(report), "--dry-run"]
    command += ["--model-name", MODEL]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 180
        while not running() - already and job.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert job.poll() is None, job.communicate()
        started = running() - already
        assert json.loads((report / "summary.json").read_text())["decision"] == "running"  # not the old one
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signal.SIGTERM and "recalibration stopped by SIGTERM" in stderr, stderr
    assert "Traceback" not in stderr
    # A log appended run after run dates its lines: when it started, and the error.
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ recalibration started \(pid \d+\)", stdout), stdout
    assert re.search(r"\d\d:\d\d:\d\dZ error: recalibration stopped by SIGTERM", stderr), stderr
    recorded = json.loads((report / "summary.json").read_text())
    assert recorded["decision"] == "stopped" and recorded["exit_code"] == 128 + signal.SIGTERM
    assert started and not started & running()  # its MLflow run ended (FAILED), not left RUNNING


def test_a_run_whose_process_was_killed_is_ended_by_the_next_run(
    export, settings, params_file, fresh_champion, tmp_path
):
    """`kill -9` (or the out-of-memory killer) left the MLflow run RUNNING for ever; the next
    run on the machine ends it, with its trial runs, and leaves runs of live processes alone."""
    import signal
    import socket
    import time

    import mlflow

    from training.abandoned import ENDED_TAG, PROCESS_TAG, this_process

    def running() -> dict[str, mlflow.entities.Run]:
        found = MlflowClient().search_runs(
            [e.experiment_id for e in MlflowClient().search_experiments()], "attributes.status = 'RUNNING'"
        )
        return {run.info.run_id: run for run in found}

    already = running()
    cli = str(Path(sys.executable).parent / "leadscore")
    env = {**os.environ, "LEADSCORE_PARAMS": str(params_file("recalibrate-kill.yaml", **settings))}
    command = [cli, "recalibrate", "--data", str(export), "--report-dir", str(tmp_path / "killed"), "--dry-run"]
    job = subprocess.Popen(
        [*command, "--model-name", fresh_champion], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.time() + 180
        while not set(running()) - set(already) and job.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, job.communicate()
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    orphans = {run_id: run for run_id, run in running().items() if run_id not in already}
    parents = [run for run in orphans.values() if PROCESS_TAG in run.data.tags]
    assert len(parents) == 1, orphans
    assert parents[0].data.tags[PROCESS_TAG].split()[:2] == [socket.gethostname(), str(job.pid)]
    client = MlflowClient()
    experiment = parents[0].info.experiment_id
    # A trial run still open under it (each lasts a moment, so one is made rather than caught).
    trial = client.create_run(experiment, tags={"mlflow.parentRunId": parents[0].info.run_id}).info.run_id
    orphans[trial] = client.get_run(trial)
    # Runs whose process runs, here or on another machine, are left as they are.
    live = client.create_run(experiment, tags={PROCESS_TAG: this_process()}).info.run_id
    elsewhere = client.create_run(
        experiment, tags={PROCESS_TAG: f"not-{socket.gethostname()} {job.pid} 1.00"}
    ).info.run_id

    # A champion of its own: the module's may have been recalibrated up to LATER already.
    recalibrate(load_params(**settings), model_name=fresh_champion, data=export, as_of=LATER, dry_run=True,
                report_dir=tmp_path / "next")  # fmt: skip

    for run_id in orphans:
        ended = client.get_run(run_id)
        assert ended.info.status == "KILLED" and ended.info.end_time, run_id
        assert "stopped without ending it" in ended.data.tags[ENDED_TAG]
    assert {client.get_run(run_id).info.status for run_id in (live, elsewhere)} == {"RUNNING"}
    for run_id in (live, elsewhere):
        client.set_terminated(run_id)


@pytest.fixture
def fresh_champion(export, settings, request) -> str:
    """A champion of its own name trained at FIRST_AS_OF (the module's may have been recalibrated
    up to LATER by an earlier test, leaving no new data to recalibrate on)."""
    name = f"recal-{request.node.name[-20:]}"
    params = load_params(**settings)
    metrics = train_and_register(prepare_crm(export, params, as_of=FIRST_AS_OF), params, model_name=name)
    assert metrics["promoted"], metrics["gates"]
    return name


def test_a_champion_of_other_feature_settings_is_compared_and_reported_on_its_own(
    export, settings, fresh_champion, tmp_path
):
    """Its gate scored it with its own windows, while the report, drift and stage table scored it
    with this checkout's (without its 90-day columns): two AUCs for one champion in one run."""
    params = load_params(**{**settings, "features.windows_days": [7, 30]})
    summary = recalibrate(
        params, model_name=fresh_champion, data=export, as_of=LATER, dry_run=True, report_dir=tmp_path
    )
    gate = next(g for g in summary["gates"] if g["name"] == "max_auc_drop_vs_champion")
    assert "scored with its own feature settings" in gate["detail"], gate
    reported = summary["comparison"]["champion"]["roc_auc"]
    assert f"test ROC AUC {reported:.4f}" in gate["detail"], (reported, gate)


def test_a_champion_that_moved_during_the_run_is_not_replaced_over(
    export, settings, fresh_champion, tmp_path, monkeypatch
):
    """Another checkout promoted while this recalibration trained: its report was about the
    champion it started with, so it must not promote over the new one."""
    import training.recalibrate as recal

    trained = recal.train_and_register

    def another_promoted_meanwhile(*args, **kwargs):
        metrics = trained(*args, **kwargs)
        metrics["model"]["compared_with_champion"] = "999"  # the gates saw another champion
        return metrics

    monkeypatch.setattr(recal, "train_and_register", another_promoted_meanwhile)
    before = str(MlflowClient().get_model_version_by_alias(fresh_champion, "champion").version)
    summary = recalibrate(load_params(**settings), model_name=fresh_champion, data=export, as_of=LATER,
                          report_dir=tmp_path)  # fmt: skip
    assert summary["decision"] == "kept the champion" and summary["exit_code"] == EXIT_LOCKED, summary["why"]
    assert "@champion moved while this recalibration ran" in summary["why"]
    assert [g["name"] for g in summary["gates"] if not g["passed"]] == ["champion_unchanged_during_run"]
    assert str(MlflowClient().get_model_version_by_alias(fresh_champion, "champion").version) == before


def test_a_scheduled_recalibration_does_not_undo_a_rollback(export, settings, fresh_champion, tmp_path):
    """After `leadscore rollback`, the next scheduled run promoted the same model again, and
    nothing said the rollback had been undone."""
    from training.register import ROLLED_BACK_TAG, lift_rollback_hold, promote, rollback, rollback_hold

    name, client = fresh_champion, MlflowClient()
    first = client.get_model_version_by_alias(name, "champion")
    second = str(client.create_model_version(name, source=first.source, run_id=first.run_id).version)
    promote(name, second)
    restored, undone = rollback(name)
    assert (restored, undone) == (str(first.version), second)
    assert "by `leadscore rollback`" in rollback_hold(name, restored, None)

    summary = recalibrate(load_params(**settings), model_name=name, data=export, as_of=LATER, report_dir=tmp_path)
    assert summary["decision"] == "kept the champion" and "a scheduled recalibration does not undo" in summary["why"]
    challenger = summary["challenger_version"]
    assert f"`leadscore promote {challenger}`" in summary["why"] and summary["exit_code"] == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == restored
    # Keeping the restored champion by hand lifts the hold; so does promoting another version. A
    # second rollback undoes the first, and holds in its turn.
    assert lift_rollback_hold(name, restored) and rollback_hold(name, restored, None) is None
    client.set_model_version_tag(name, restored, ROLLED_BACK_TAG, "again")
    promote(name, challenger)
    assert rollback_hold(name, challenger, None) is None
    back, _ = rollback(name)
    assert back == restored and ROLLED_BACK_TAG in client.get_model_version(name, restored).tags
    again, _ = rollback(name)
    assert again == challenger and ROLLED_BACK_TAG not in client.get_model_version(name, restored).tags


def test_an_export_cut_short_is_refused_before_training(export, settings, fresh_champion, tmp_path):
    """A leads.csv without a column the champion learned from trained for minutes and registered
    a version before its gate kept the champion; it is refused at once now."""
    import shutil

    cut = shutil.copytree(export, tmp_path / "cut")
    leads = pd.read_csv(cut / "leads.csv", dtype=str, keep_default_na=False)
    leads.drop(columns="industry").to_csv(cut / "leads.csv", index=False)

    def versions() -> list[str]:
        return sorted(v.version for v in MlflowClient().search_model_versions(f"name='{fresh_champion}'"))

    before = versions()
    with pytest.raises(RecalibrationError, match=r"no value in industry, while the champion \(v\d+\) learned from the"):
        recalibrate(load_params(**settings), model_name=fresh_champion, data=cut, as_of=LATER)
    assert versions() == before


def test_a_lock_in_a_folder_that_does_not_exist_is_refused_not_made(tmp_path):
    """`lock_file: /srv/shared/leadscore.lck` with a typo made the folder: two checkouts then held
    two locks and could move @champion at once. Under the models folder it is made, as before."""
    from features.tracking import MODELS_DIR
    from training.recalibrate import LockUnavailable

    typo = tmp_path / "sahred" / "leadscore.lock"
    with pytest.raises(LockUnavailable, match=r"no folder .*sahred \(recalibration\.lock_file"), exclusive(typo):
        pass
    assert not typo.parent.exists()
    made = MODELS_DIR / f"locks-{os.getpid()}" / "x.lock"
    try:
        with exclusive(made):
            assert made.is_file()
    finally:
        shutil.rmtree(made.parent, ignore_errors=True)
