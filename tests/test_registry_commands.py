"""The registry commands an operator runs: `leadscore criteria` (the params file's rules against
the champion's, their effect on the latest kept scoring, `--apply` putting them into service on
the same model), `leadscore versions` and `leadscore promote`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.bundle import LeadScorer, grade_of, score_from_probability
from features.params import load_params
from features.tracking import lock_path
from serving.pages import digest_view, model_view, render
from serving.scoring import load_champion
from serving.snapshots import list_snapshots, load_snapshot
from training.cli import app
from training.evaluate import conversion_by_grade, conversion_by_grade_from_counts, score_counts
from training.recalibrate import exclusive
from training.rules import RULES_FROM_TAG, proposed_rules, regraded
from training.versions import PROMOTED_DESPITE_TAG

pytestmark = pytest.mark.slow
CHAMPION_NAME = "svc-model"  # as the `champion_store` fixture registers it
CLI = str(Path(sys.executable).parent / "leadscore")
AS_OF = "2025-12-15"
STRICT = {"criteria.mql.min_score": 90, "criteria.sql.min_score": 95, "grades.A": 45,
          "criteria.next_actions.MQL": "Call within 2 days"}  # fmt: skip


@pytest.fixture
def registry(champion_store, tmp_path, monkeypatch) -> Path:
    """A copy of the shared champion's registry (applying rules must not move the shared
    champion), with a scores folder of its own."""
    copy = tmp_path / "mlflow.db"
    shutil.copy(champion_store.removeprefix("sqlite:///"), copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy}")
    monkeypatch.setenv("LEADSCORE_SCORES_DIR", str(tmp_path / "scores"))
    monkeypatch.setenv("LEADSCORE_MODEL_NAME", CHAMPION_NAME)
    return tmp_path / "scores"


def _run(*args: str, params: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("LEADSCORE_PARAMS", None)
    return subprocess.run([CLI, *args, "--params", str(params)], capture_output=True, text=True, env=env, timeout=300)


def test_every_command_reading_the_params_file_takes_params(tmp_path):
    """The README's "edit a copy and pass it (`--params FILE`)": `criteria --params` was refused."""
    ids = tmp_path / "ids.txt"
    ids.write_text("L1\n")
    commands = {
        "train": [], "demo": [], "serve": ["--port", "1"], "score": [str(ids), "-o", str(tmp_path / "s.csv")],
        "report": ["--leads", str(ids), "-o", str(tmp_path / "pages")], "criteria": [], "recalibrate": [],
        "rollback": [], "versions": [], "promote": ["1"], "openapi": ["-o", str(tmp_path / "spec.json")],
    }  # fmt: skip
    every = {command.name or command.callback.__name__ for command in app.registered_commands}
    assert set(commands) == every - {"generate"}  # the one that reads no params
    missing = tmp_path / "my-params.yaml"
    started = {
        name: subprocess.Popen([CLI, name, *args, "--params", str(missing)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
        for name, args in commands.items()
    }  # fmt: skip
    for name, process in started.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 and f"cannot read params file {missing}" in stderr, (name, stderr)


def _aliases() -> dict[str, str]:
    aliases = MlflowClient().get_registered_model(CHAMPION_NAME).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def test_criteria_shows_the_change_then_applies_it_on_the_same_model(registry, params_file, small_crm_dir, tmp_path):
    strict = params_file("strict-rules.yaml", **STRICT)
    before = _aliases()
    old = before["champion"]

    shown = _run("criteria", params=strict)
    assert shown.returncode == 0, shown.stderr
    for rule in ("criteria.mql.min_score", "criteria.sql.min_score", "criteria.next_actions.MQL", "grades.A"):
        assert rule in shown.stdout
    assert "No kept scoring" in shown.stdout and "Nothing changed" in shown.stdout
    # The command it says to run takes the same file: without it `--apply` read params.yaml.
    assert f"`leadscore criteria --apply --params {strict}`" in " ".join(shown.stdout.split()), shown.stdout
    assert _aliases() == before

    scored = _run("score", str(small_crm_dir), "-o", str(tmp_path / "s.csv"), "--as-of", AS_OF, "--snapshot",
                  params=strict)  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    kept = load_snapshot(list_snapshots(registry)[-1])
    mql_now = int((kept.scores["stage"] == "MQL").sum())
    assert mql_now > 0  # the change below has something to move

    shown = _run("criteria", params=strict)
    assert shown.returncode == 0, shown.stderr
    assert f"On the {len(kept.scores):,} leads of the latest kept scoring" in shown.stdout
    assert "MQL → nurture" in shown.stdout and _aliases() == before

    applied = _run("criteria", "--apply", params=strict)
    assert applied.returncode == 0, applied.stderr
    after = _aliases()
    new = after["champion"]
    assert new != old and after["previous"] == old, applied.stdout
    assert f"version {new} (v{old}'s model" in applied.stdout

    # The very model of the old champion, under the params file's rules.
    was, now = load_champion(CHAMPION_NAME, version=old), load_champion(CHAMPION_NAME)
    assert now.scorer.booster.model_to_string() == was.scorer.booster.model_to_string()
    assert now.scorer.calibrator.to_dict() == was.scorer.calibrator.to_dict()
    assert now.scorer.spec == was.scorer.spec
    params = load_params(strict)
    assert now.criteria == params.criteria and now.scorer.metadata["grade_bands"] == params.grades
    assert now.scorer.metadata["rules"]["from_version"] == old
    # Conversion by grade on the test period, measured again for the new bands from its score counts.
    evaluation = now.scorer.metadata["evaluation"]
    assert evaluation["by_grade"] == conversion_by_grade_from_counts(evaluation["score_counts"], params.grades)
    assert evaluation["by_grade"] != was.scorer.metadata["evaluation"]["by_grade"]
    assert regraded({k: v for k, v in evaluation.items() if k != "score_counts"}, params.grades).get("by_grade") is None
    assert MlflowClient().get_model_version(CHAMPION_NAME, new).tags[RULES_FROM_TAG] == old
    page = render("model.html", static=True, title="Model", m=model_view(now))
    assert f"the model of version {old}, with the qualification criteria and grade bands below since" in page
    assert "the model of version" not in render("model.html", static=True, title="Model", m=model_view(was))
    digest = render("digest.html", static=True, **digest_view(now, kept, None, {}, static=True))
    assert "Conversion by grade in the test period" in digest and "grades-unmeasured" not in digest
    # A model trained before the score counts were kept: the decile chart, and why no grade table.
    older = dict(evaluation)
    del older["score_counts"], older["by_grade"]
    scorer = now.scorer
    before_counts = dataclasses.replace(now, scorer=LeadScorer(scorer.booster, scorer.spec, scorer.calibrator,
                                                                 {**scorer.metadata, "evaluation": older}))  # fmt: skip
    digest = render("digest.html", static=True, **digest_view(before_counts, kept, None, {}, static=True))
    assert "grades-unmeasured" in digest and "decile 1" in digest and "retrain it" not in digest

    # The pages' latest scoring is the same leads, as of the same moment, under the new rules.
    rescored = load_snapshot(list_snapshots(registry)[-1])
    assert rescored.path != kept.path and rescored.as_of == kept.as_of
    assert rescored.meta["model_version"] == new and set(rescored.scores["model_version"]) == {new}
    pd.testing.assert_series_equal(rescored.scores["probability"], kept.scores["probability"])
    assert not (rescored.scores["stage"] == "MQL").any()  # no lead of this small CRM scores 90
    assert set(rescored.scores.loc[kept.scores["stage"] == "MQL", "stage"]) <= {"nurture"}
    # Against the scoring before, the moves are the rules' (it said the model had moved the scores).
    digest = render("digest.html", static=True, **digest_view(now, rescored, kept, {}, static=True))
    assert 'id="rules-changed"' in digest and 'id="model-changed"' not in digest

    again = _run("criteria", "--apply", params=strict)
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stdout
    assert _aliases() == after


def test_criteria_apply_waits_for_a_run_that_moves_the_champion(registry, params_file):
    strict = params_file("strict-rules.yaml", **STRICT)
    before = _aliases()
    with exclusive(lock_path(load_params(strict).recalibration.lock_file), job="train"):
        held = _run("criteria", "--apply", params=strict)
    assert held.returncode == 3, held.stdout + held.stderr
    assert "`leadscore train` is running" in held.stderr and "nothing applied" in held.stderr
    assert _aliases() == before


def test_criteria_says_when_it_would_replace_thresholds_a_recalibration_fitted(registry, params_file):
    """`criteria --apply` reset the MQL and SQL scores and grade bands a recalibration had fitted
    to the data, with nothing said (train says it)."""
    from training.progress import Reporter
    from training.rules import register_with_rules

    strict = params_file("strict-rules.yaml", **STRICT)
    trained = _run("criteria", params=strict)
    assert trained.returncode == 0 and "fitted to the data by a recalibration" not in trained.stdout
    # The champion as a recalibration registers it: its own rules, fitted, under the "recalibrate" job.
    champion = load_champion(CHAMPION_NAME)
    scorer = champion.scorer
    recalibrated = dataclasses.replace(champion, scorer=LeadScorer(
        scorer.booster, scorer.spec, scorer.calibrator, {**scorer.metadata, "job": "recalibrate"}))  # fmt: skip
    rules = champion.criteria.model_dump(mode="json")
    register_with_rules(recalibrated, rules, scorer.metadata["grade_bands"], [], load_params(strict), Reporter())
    shown = _run("criteria", params=strict)
    said = " ".join(shown.stdout.split())
    assert shown.returncode == 0 and "criteria.mql.min_score, criteria.sql.min_score, grades.A were fitted" in said
    assert "applying would replace them with" in said, said
    applied = _run("criteria", "--apply", params=strict)
    assert applied.returncode == 0 and "--apply replaces them" in " ".join(applied.stdout.split())
    assert load_champion(CHAMPION_NAME).scorer.metadata["job"] == "criteria"  # the file's thresholds now
    quiet = _run("criteria", params=params_file("other-rules.yaml", **{**STRICT, "criteria.mql.min_score": 80}))
    assert quiet.returncode == 0 and "fitted to the data by a recalibration" not in quiet.stdout, quiet.stdout

    # A champion a recalibration registered before models kept the job (rules put on it since that
    # left its thresholds alone): its training run's tag tells.
    current = load_champion(CHAMPION_NAME)
    kept = current.scorer
    older = {k: v for k, v in kept.metadata.items() if k != "job"}
    MlflowClient().set_tag(older["run_id"], "leadscore.job", "recalibrate")
    unmarked = dataclasses.replace(current, scorer=LeadScorer(kept.booster, kept.spec, kept.calibrator, older))
    register_with_rules(unmarked, current.criteria.model_dump(mode="json"), kept.metadata["grade_bands"], [],
                        load_params(strict), Reporter())  # fmt: skip
    assert "job" not in load_champion(CHAMPION_NAME).scorer.metadata
    assert load_champion(CHAMPION_NAME).scorer.metadata["rules"]["changes"] == []
    told = _run("criteria", params=params_file("other-rules.yaml", **{**STRICT, "criteria.mql.min_score": 80}))
    assert told.returncode == 0 and "were fitted to the data by a recalibration" in " ".join(told.stdout.split())


def test_a_flat_model_keeps_the_mql_score_its_training_fitted(params):
    flat = SimpleNamespace(kind="flat", criteria=params.criteria.model_copy(
        update={"mql": params.criteria.mql.model_copy(update={"min_score": 37.5, "min_fit": None})}))  # fmt: skip
    criteria, bands = proposed_rules(flat, params)
    assert criteria["mql"]["min_score"] == 37.5 and criteria["mql"]["min_fit"] is None
    assert criteria["sql"]["min_score"] == max(params.criteria.sql.min_score, 37.5)
    assert bands == params.grades


def test_a_version_that_failed_a_gate_is_promoted_only_when_a_person_says_so(registry, params_file, small_crm_dir):
    strict_gate = params_file("strict-gate.yaml", **{"gates.min_test_roc_auc": 0.999})
    trained = _run("train", "--data", str(small_crm_dir), "--model-name", CHAMPION_NAME, params=strict_gate)
    assert trained.returncode == 0, trained.stderr
    before = _aliases()
    old = before["champion"]
    versions = MlflowClient().search_model_versions(f"name = '{CHAMPION_NAME}'")
    new = str(max(int(v.version) for v in versions))
    assert new != old and new not in before.values()

    listed = _run("versions", params=strict_gate)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if line.count("│") > 5}
    assert "failed" in rows[new] and "@champion" in rows[old] and "passed" in rows[old], listed.stdout
    assert "compare directly" not in listed.stdout  # one export, one test period (below)
    listed = _run("versions", "--json", params=strict_gate)
    found = {row["version"]: row for row in json.loads(listed.stdout)}
    assert found[new]["gates_passed"] is False and found[new]["aliases"] == [] and found[new]["test_roc_auc"] < 0.999
    assert found[old]["aliases"] == ["champion"] and found[old]["gates_passed"] is True
    # Both trained on one export: one test period, so no warning that their figures do not compare.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d", found[new]["test_period"]), found[new]
    assert found[old]["test_period"] == found[new]["test_period"] and "compare directly" not in listed.stdout

    refused = _run("promote", new, params=strict_gate)
    assert refused.returncode == 2 and "gate min_test_roc_auc failed" in refused.stderr, refused.stderr
    assert "--despite-gates" in refused.stderr and _aliases() == before
    missing = _run("promote", "99", params=strict_gate)
    empty = _run("promote", " ", params=strict_gate)
    assert empty.returncode == 2 and "VERSION is empty" in empty.stderr, empty.stderr
    assert missing.returncode == 2 and "has no version 99" in missing.stderr, missing.stderr

    promoted = _run("promote", new, "--despite-gates", params=strict_gate)
    assert promoted.returncode == 0, promoted.stderr
    assert _aliases() == {"champion": new, "previous": old}
    client = MlflowClient()
    assert "min_test_roc_auc" in client.get_model_version(CHAMPION_NAME, new).tags[PROMOTED_DESPITE_TAG]
    assert client.get_run(client.get_model_version(CHAMPION_NAME, new).run_id).data.tags["promoted"] == "True"

    # The old champion back: the new one's gates compared the two, and the old one passed its own.
    back = _run("promote", old, params=strict_gate)
    assert back.returncode == 0, back.stderr
    assert _aliases() == {"champion": old, "previous": new}
    again = _run("promote", old, params=strict_gate)
    assert again.returncode == 0 and "already @champion" in again.stdout
    # A run stopped after it registered its version (a SIGTERM then): not promoted without a word.
    run_id = client.get_model_version(CHAMPION_NAME, old).run_id
    client.set_terminated(run_id, "FAILED")
    try:
        client.set_registered_model_alias(CHAMPION_NAME, "champion", new)
        stopped = _run("promote", old, params=strict_gate)
        assert stopped.returncode == 2 and f"v{old}'s training run ended FAILED" in stopped.stderr, stopped.stderr
        listed = _run("versions", params=strict_gate)
        rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if line.count("│") > 5}
        assert "(run failed)" in rows[old] and "(run" not in rows[new], listed.stdout
        # Killed outright (SIGKILL): the run never said how it ended, so it still reads RUNNING.
        client.update_run(run_id, status="RUNNING")
        killed = _run("promote", old, params=strict_gate)
        assert killed.returncode == 2 and f"v{old}'s training run has not ended" in killed.stderr, killed.stderr
        listed = _run("versions", params=strict_gate)
        rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if line.count("│") > 5}
        assert "(run not ended)" in rows[old], listed.stdout
    finally:
        client.set_terminated(run_id, "FINISHED")
        client.set_registered_model_alias(CHAMPION_NAME, "champion", old)


def test_conversion_by_grade_is_measured_again_from_the_score_counts_for_any_bands():
    rng = np.random.default_rng(5)
    probability = rng.beta(1, 6, 5000)
    label = (rng.random(5000) < probability).astype(int)
    counts = score_counts(label, probability)
    assert sum(counts["leads"]) == 5000 and sum(counts["converted"]) == label.sum()
    for bands in ({"A": 60, "B": 35, "C": 15, "D": 0}, {"A": 30, "B": 20.5, "C": 10.1, "D": 0}):
        # Each lead graded on its own, as scoring grades it: the reference the counts must match.
        grade = grade_of(score_from_probability(probability), bands)
        again = conversion_by_grade_from_counts(counts, bands)
        assert list(again) == list(bands)
        for letter in bands:
            mask = grade == letter
            assert again[letter]["leads"] == mask.sum(), letter
            assert again[letter]["share"] == pytest.approx(mask.mean()), letter
            assert again[letter]["conversion"] == pytest.approx(label[mask].mean()), letter
        assert conversion_by_grade(label, probability, bands) == again


def test_criteria_apply_does_not_bury_a_scoring_kept_while_it_ran(registry, params_file, champion, small_crm_dir,
                                                                   monkeypatch):  # fmt: skip
    """`criteria --apply` copied the scoring it read at its start under the new rules: a `score`
    kept during its seconds of registering was pushed down to "previous", and the digest showed
    the older leads with their moves called the rules'."""
    from typer.testing import CliRunner

    import training.rules
    from serving.batch import read_leads, score_batch
    from serving.snapshots import write_snapshot

    leads, acts, _ = read_leads(small_crm_dir, None)
    scored = score_batch(champion, leads, acts, pd.Timestamp(AS_OF)).scored
    meta = {"as_of": AS_OF, "model_name": CHAMPION_NAME, "model_version": champion.version}
    write_snapshot(scored, leads, acts, meta, registry)
    registering = training.rules.register_with_rules

    def with_a_scoring_meanwhile(*args, **kwargs):
        newer = {**meta, "as_of": (pd.Timestamp(AS_OF) + pd.Timedelta(days=1)).isoformat()}
        write_snapshot(scored, leads, acts, newer, registry)
        return registering(*args, **kwargs)

    monkeypatch.setattr(training.rules, "register_with_rules", with_a_scoring_meanwhile)
    strict = params_file("strict-rules-race.yaml", **STRICT)
    applied = CliRunner().invoke(app, ["criteria", "--apply", "--params", str(strict)], env={"COLUMNS": "200"})
    assert applied.exit_code == 0, applied.output
    assert "was kept while this ran, and stays the latest" in applied.output
    kept = list_snapshots(registry, CHAMPION_NAME)
    assert len(kept) == 2 and load_snapshot(kept[-1]).as_of == pd.Timestamp(AS_OF) + pd.Timedelta(days=1)


def test_a_rollback_stopped_between_its_two_steps_is_completed_not_repeated(registry):
    """Killed between moving @champion and @previous, a rollback left both on one version: the
    next `rollback` said it had rolled back, and the replaced champion had no alias left."""
    from training.register import ROLLED_BACK_TAG, rollback

    client = MlflowClient()
    first = client.get_model_version_by_alias(CHAMPION_NAME, "champion")
    second = str(client.create_model_version(CHAMPION_NAME, first.source, run_id=first.run_id).version)
    # v(second) was the champion; the rollback marked v(first) and moved @champion only.
    client.set_model_version_tag(CHAMPION_NAME, first.version, ROLLED_BACK_TAG, f"2026-12-07 09:00 UTC, from v{second}")
    client.set_registered_model_alias(CHAMPION_NAME, "champion", first.version)
    client.set_registered_model_alias(CHAMPION_NAME, "previous", first.version)
    assert rollback(CHAMPION_NAME) == (str(first.version), second)
    assert _aliases() == {"champion": str(first.version), "previous": second}
    # Without a rollback's mark (a promotion stopped so), nothing is guessed: it is said.
    client.delete_model_version_tag(CHAMPION_NAME, first.version, ROLLED_BACK_TAG)
    client.set_registered_model_alias(CHAMPION_NAME, "previous", first.version)
    with pytest.raises(ValueError, match=f"are both version {first.version}"):
        rollback(CHAMPION_NAME)


def test_rules_put_on_rules_still_show_and_compare_as_the_model_they_hold(registry):
    """A second `criteria --apply` names the first rules version, whose run has no figures: the
    new version listed `?` for its AUC, ECE and gates, and promoting the trained version back was
    refused as "never compared by the gates"."""
    from training.versions import list_versions, promotion_check

    client = MlflowClient()
    trained = client.get_model_version_by_alias(CHAMPION_NAME, "champion")
    versions = [str(trained.version)]
    for _ in range(2):  # rules on the trained version, then rules on those
        made = client.create_model_version(CHAMPION_NAME, trained.source, run_id=trained.run_id,
                                           tags={RULES_FROM_TAG: versions[-1]})  # fmt: skip
        versions.append(str(made.version))
    client.set_registered_model_alias(CHAMPION_NAME, "champion", versions[-1])
    listed = {v.version: v for v in list_versions(CHAMPION_NAME)}
    figures = ("test_roc_auc", "test_ece", "gates_passed")
    assert all(getattr(listed[versions[-1]], f) == getattr(listed[versions[0]], f) is not None for f in figures)
    assert not [p for p in promotion_check(CHAMPION_NAME, versions[0]).problems if "never compared" in p]
