"""Qualification rules without retraining: the champion's model registered again with the
params file's criteria and grade bands, after a look at what they would change.

The rules travel in the model bundle (DESIGN.md), so the service, batch scoring and the pages
all read the same ones; a sales team changing its MQL score or a next action used to wait for
the next training run. The new version holds the very booster, calibrator and feature spec of
the champion it was made from, so its scores are the champion's: only stages and grades move.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from features.bundle import LeadScorer, score_from_probability, write_bundle_files
from features.params import Params
from serving.batch import score_batch
from serving.scoring import LoadedModel
from serving.snapshots import Snapshot
from training.evaluate import conversion_by_grade_from_counts
from training.pipeline import JOB_TAG, flat_rules, git_commit, run_tags, use_experiment
from training.progress import Reporter
from training.register import ROLLED_BACK_TAG, ChampionMoved, describe_version, log_bundle, promote
from training.stopping import sigterm_held

RULES_FROM_TAG = "leadscore.rules_from_version"
STAGE_ORDER = ("SQL", "SAL", "MQL", "nurture", "disqualified")


@dataclass(frozen=True)
class RuleChange:
    name: str  # dotted, e.g. criteria.mql.min_score
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.name}: {json.dumps(self.old)} → {json.dumps(self.new)}"


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[RuleChange]:
    """Each leaf that differs between two nested settings, by dotted name (lists are leaves)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}.{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += differences(before, after, name)
        elif json.dumps(before) != json.dumps(after):
            changes.append(RuleChange(name, before, after))
    return changes


def proposed_rules(model: LoadedModel, params: Params) -> tuple[dict[str, Any], dict[str, float]]:
    """The criteria and grade bands the params file gives this model. A flat model keeps the MQL
    score its training fitted to its own label (the CRM's MQL score is a 30-day probability)."""
    criteria = params.criteria.model_dump(mode="json")
    if model.kind == "flat":
        criteria = flat_rules(criteria, model.criteria.mql.min_score)
    return criteria, dict(params.grades)


def rule_differences(model: LoadedModel, criteria: dict[str, Any], bands: dict[str, float]) -> list[RuleChange]:
    """What differs between the model's rules and `criteria` / `bands`. The model's own are read
    through the rules' schema, so defaults a newer release added are not reported as changes."""
    own = model.criteria.model_dump(mode="json")
    return differences(own, criteria, "criteria") + differences(model.scorer.metadata["grade_bands"], bands, "grades")


# The rules a recalibration fits to the newest quarter, with the grade bands; the others come from the file.
FITTED_RULES = ("criteria.mql.min_score", "criteria.sql.min_score")


def fitted_changes(changes: list[RuleChange]) -> list[str]:
    """The changes of rules a recalibration fits to the data, by name."""
    return [c.name for c in changes if c.name in FITTED_RULES or c.name.startswith("grades.")]


def thresholds_job(model: LoadedModel) -> str | None:
    """The job that set the model's thresholds: "train", "recalibrate" or "criteria". A model
    from before the bundle kept it: "criteria" when the rules last put on it changed them, else
    its training run's tag."""
    metadata = model.scorer.metadata
    if "job" in metadata:
        return metadata["job"]
    put_on = [str(change).split(": ")[0] for change in (metadata.get("rules") or {}).get("changes", [])]
    if any(name in FITTED_RULES or name.startswith("grades.") for name in put_on):
        return "criteria"
    if not metadata.get("run_id"):
        return None
    try:
        return MlflowClient().get_run(metadata["run_id"]).data.tags.get(JOB_TAG)
    except MlflowException:  # the run deleted, or another store's
        return None


def retrain_only_changes(model: LoadedModel, params: Params) -> list[RuleChange]:
    """Edits of the ideal customer profile: it is a feature (`icp_match`), so only training takes it."""
    learned = (model.scorer.spec.settings.get("features") or {}).get("icp")
    if model.kind != "crm" or learned is None:
        return []
    return differences(learned, params.features.icp.model_dump(mode="json"), "features.icp")


def with_rules(model: LoadedModel, criteria: dict[str, Any], bands: dict[str, float]) -> LoadedModel:
    """The same model qualifying and grading by `criteria` and `bands`."""
    scorer = model.scorer
    metadata = {**scorer.metadata, "criteria": criteria, "grade_bands": bands}
    return dataclasses.replace(model, scorer=LeadScorer(scorer.booster, scorer.spec, scorer.calibrator, metadata))


@dataclass(frozen=True)
class Effect:
    """Stages and grades of one kept scoring's leads under the model's rules and under new ones."""

    now: pd.DataFrame  # lead_id, stage, grade, ... as `score_batch` gives them
    new: pd.DataFrame

    def counts(self, column: str) -> pd.DataFrame:
        """Leads per stage (or grade) now and with the new rules, in the order of the column."""
        table = pd.DataFrame({"now": self.now[column].value_counts(), "new": self.new[column].value_counts()})
        table = table.fillna(0).astype(int)
        order = [s for s in STAGE_ORDER if s in table.index] if column == "stage" else sorted(table.index)
        return table.loc[order + [i for i in table.index if i not in order]]

    def moves(self, column: str) -> pd.Series:
        """How many leads go from each value to each other one (`MQL → nurture`), most first."""
        changed = self.now[column].to_numpy() != self.new[column].to_numpy()
        pairs = self.now[column][changed].astype(str) + " → " + self.new[column][changed].astype(str).to_numpy()
        return pairs.value_counts()


def effect_on(snapshot: Snapshot, model: LoadedModel, proposed: LoadedModel) -> Effect:
    """Score the kept scoring's leads again, as of its moment, under both rule sets (the same
    model: any move is the rules')."""

    def scored(chosen: LoadedModel) -> pd.DataFrame:
        result = score_batch(
            chosen, snapshot.leads, snapshot.activities, snapshot.as_of, day_first=snapshot.meta.get("day_first")
        )
        return result.scored.reset_index(drop=True)

    return Effect(now=scored(model), new=scored(proposed))


def regraded(evaluation: dict[str, Any], bands: dict[str, float]) -> dict[str, Any]:
    """The test period's conversion by grade under other bands, measured again from its counts of
    leads per score; without them (a model trained before they were kept) left out, since the
    old figures are of the old bands."""
    counts = evaluation.get("score_counts")
    if counts:
        return {**evaluation, "by_grade": conversion_by_grade_from_counts(counts, bands)}
    return {k: v for k, v in evaluation.items() if k != "by_grade"}


def register_with_rules(
    model: LoadedModel,
    criteria: dict[str, Any],
    bands: dict[str, float],
    changes: list[RuleChange],
    params: Params,
    reporter: Reporter,
) -> tuple[str, str | None]:
    """Register `model`'s bundle again with `criteria` and `bands` in an MLflow run of its own,
    and make it the champion (the one it was made from becomes `@previous`).

    Returns:
        (the new version, the version that was champion).

    Raises:
        ChampionMoved: `@champion` is no longer `model`'s version (promoted meanwhile).
    """
    use_experiment(params, reporter)
    commit, dirty = git_commit()
    applied_at = pd.Timestamp.now(tz="UTC").isoformat()
    client = MlflowClient()
    tags = {**run_tags(commit, dirty), RULES_FROM_TAG: model.version, "data.kind": model.kind}
    with mlflow.start_run(run_name=f"rules-v{model.version}", tags=tags) as run:
        mlflow.log_dict(
            {"from_version": model.version, "changes": [dataclasses.asdict(c) for c in changes],
             "criteria": criteria, "grade_bands": bands},
            "rules.json",
        )  # fmt: skip
        mlflow.log_dict(params.model_dump(mode="json"), "params.json")
        metadata = {
            **model.scorer.metadata,
            "criteria": criteria,
            "grade_bands": bands,
            # The model is the one trained in `run_id`; these are the rules put on it since.
            "rules": {"from_version": model.version, "applied_at": applied_at, "run_id": run.info.run_id,
                      "git_commit": commit, "changes": [str(c) for c in changes]},
        }  # fmt: skip
        if bands != model.scorer.metadata["grade_bands"]:
            metadata["evaluation"] = regraded(metadata.get("evaluation") or {}, bands)
        if fitted_changes(changes):
            metadata["job"] = "criteria"  # its thresholds are the file's now, not a recalibration's
        for written_by_the_bundle in ("bundle_format", "file_sha256"):
            metadata.pop(written_by_the_bundle, None)
        with tempfile.TemporaryDirectory() as tmp:
            source = mlflow.artifacts.download_artifacts(f"models:/{model.name}/{model.version}", dst_path=tmp)
            example = Model.load(source).load_input_example(source)
            scorer = model.scorer
            bundle = Path(tmp) / "bundle"
            artifacts = write_bundle_files(bundle, scorer.booster, scorer.spec, scorer.calibrator, metadata)
            probability = scorer.predict_proba(example)
            output = pd.DataFrame({"probability": probability, "score": score_from_probability(probability)})
            version = log_bundle(artifacts, example, output, model.name)
        mlflow.set_tag("model.version", version)
    # A signal waits until the new version's tags are written (`sigterm_held`).
    with sigterm_held():
        try:
            was = promote(model.name, version, compared_with=model.version)
        except ChampionMoved as exc:
            raise ChampionMoved(
                f"@champion is no longer v{model.version}, whose model these rules were put on (another run promoted "
                f"meanwhile): v{version} is registered with them but not promoted; run `leadscore criteria` again"
            ) from exc
        # The model's own tags, not a rollback's mark: this promotion by hand ends that hold.
        tags = {
            k: v for k, v in client.get_model_version(model.name, model.version).tags.items() if k != ROLLED_BACK_TAG
        }
        describe_version(model.name, version, {**tags, RULES_FROM_TAG: model.version})
    return version, was
