"""What the registry holds for a model, and promoting a version a person chose (a challenger
after review, say): what an operator otherwise needed the MLflow UI or a notebook for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training.recalibrate import mark_promoted
from training.register import CHAMPION, current_version, promote, unknown_model
from training.rules import RULES_FROM_TAG

PROMOTED_DESPITE_TAG = "leadscore.promoted_despite"


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    registered: pd.Timestamp
    run_id: str
    run_name: str = ""
    kind: str | None = None
    test_roc_auc: float | None = None
    test_ece: float | None = None
    test_period: str | None = None  # None: its run is gone, or it predates the param
    gates_passed: bool | None = None  # None: not recorded (its run is gone, or it predates the tag)
    rules_from: str | None = None  # set by `leadscore criteria --apply`: whose model it holds
    run_ended: str | None = None  # how its training run ended (FAILED: stopped after registering it; RUNNING: not yet)

    @property
    def note(self) -> str:
        return f"v{self.rules_from}'s model, other rules" if self.rules_from else self.run_name


def tested_apart(versions: list[VersionInfo]) -> bool:
    """Whether some of these versions were tested on other leads than others (a version trained
    before test periods were recorded says nothing either way)."""
    return len({info.test_period for info in versions if info.test_period}) > 1


def list_versions(model_name: str, limit: int = 20) -> list[VersionInfo]:
    """The model's newest `limit` versions, newest first, with their aliases and test figures.

    Raises:
        ValueError: no model of that name is registered.
    """
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        raise ValueError(unknown_model(model_name, client) or str(exc)) from exc
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name = '{model_name}'")
    newest = sorted(versions, key=lambda v: int(v.version), reverse=True)[:limit]
    return [_describe(client, model_name, v, by_version.get(str(v.version), [])) for v in newest]


def _describe(client: MlflowClient, model_name: str, version: Any, aliases: list[str]) -> VersionInfo:
    info = VersionInfo(
        version=str(version.version),
        aliases=sorted(aliases, key=lambda a: (a != CHAMPION, a)),
        registered=pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC"),
        run_id=version.run_id or "",
        kind=version.tags.get("kind"),
        rules_from=version.tags.get(RULES_FROM_TAG),
    )
    run_id = version.run_id
    if info.rules_from:  # the figures and gates of the model it holds
        try:
            run_id = client.get_model_version(model_name, trained_version(client, model_name, info.rules_from)).run_id
        except MlflowException:
            run_id = None
    run = _run(client, version.run_id)
    info.run_name = run.info.run_name if run else ""
    source = _run(client, run_id) if run_id != version.run_id else run
    if source is not None:
        info.test_roc_auc = source.data.metrics.get("test.roc_auc")
        info.test_ece = source.data.metrics.get("test.ece")
        info.test_period = source.data.params.get("test_period")
        passed = source.data.tags.get("gates_passed")
        info.gates_passed = None if passed is None else passed == "True"
        info.run_ended = source.info.status
    if info.test_roc_auc is None and version.tags.get("test_roc_auc"):
        info.test_roc_auc = float(version.tags["test_roc_auc"])
    return info


def _run(client: MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:  # deleted, or in a store this registry no longer reaches
        return None


@dataclass
class PromotionCheck:
    """Why promoting a version needs a person's say-so; empty `problems`: it does not."""

    version: str
    champion: str | None
    problems: list[str] = field(default_factory=list)


def promotion_check(model_name: str, version: str) -> PromotionCheck:
    """The registration gates of the version's training run, and whether it and the champion were
    ever compared (a version holding the other's model under other rules needs no comparison)."""
    client = MlflowClient()
    champion = current_version(client, model_name)
    check = PromotionCheck(version, champion)
    trained, metrics = _training_record(client, model_name, version)
    if metrics is None:
        check.problems.append(f"v{trained}'s training run records no gates (its metrics.json is missing)")
        return check
    ended = _run_status(client, model_name, trained)
    if ended in ("FAILED", "KILLED"):  # stopped after registering: what it did after is not recorded
        check.problems.append(f"v{trained}'s training run ended {ended} (stopped or failed after registering it)")
    elif ended == "RUNNING":  # still training, or killed outright (SIGKILL, power) before it could say so
        check.problems.append(
            f"v{trained}'s training run has not ended: it is still training, or it was killed before it could "
            "record how it ended"
        )
    for gate in metrics.get("gates", []):
        if not gate.get("passed"):
            check.problems.append(f"gate {gate['name']} failed: {gate['detail']}")
    if champion is None:
        return check
    champion_trained, champion_metrics = _training_record(client, model_name, champion)
    compared = {(trained, _compared_with(metrics)), (champion_trained, _compared_with(champion_metrics))}
    if trained != champion_trained and not compared & {(trained, champion_trained), (champion_trained, trained)}:
        check.problems.append(
            f"v{version} and the champion, v{champion}, were never compared by the gates (v{version}'s compared it "
            f"with {_shown(_compared_with(metrics))})"
        )
    return check


def _training_record(client: MlflowClient, model_name: str, version: str) -> tuple[str, dict | None]:
    """The version whose training made this version's model (itself, but for a version of
    `leadscore criteria`), and that run's metrics.json (None when it cannot be read)."""
    trained = str(version)
    try:
        trained = trained_version(client, model_name, trained)
        run_id = client.get_model_version(model_name, trained).run_id
        return trained, mlflow.artifacts.load_dict(f"runs:/{run_id}/metrics.json")
    except Exception:  # a run deleted, or from before metrics.json: said by the caller, not a crash
        return trained, None


def trained_version(client: MlflowClient, model_name: str, version: str) -> str:
    """The version whose training run made `version`'s model: itself, or for a version of
    `leadscore criteria` the one it put rules on, followed back through rules put on rules (a
    second `criteria --apply` named the first, whose run holds no figures or gates)."""
    seen = {version}
    while source := client.get_model_version(model_name, version).tags.get(RULES_FROM_TAG):
        if source in seen:  # a loop no command writes: stop rather than spin
            break
        seen.add(version := source)
    return version


def _run_status(client: MlflowClient, model_name: str, version: str) -> str | None:
    """How the run that registered the version ended (None when it cannot be read)."""
    try:
        return client.get_run(client.get_model_version(model_name, version).run_id).info.status
    except Exception:  # a run deleted: said by the gates' check already
        return None


def _compared_with(metrics: dict | None) -> str | None:
    return ((metrics or {}).get("model") or {}).get("compared_with_champion")


def _shown(version: str | None) -> str:
    return f"v{version}" if version else "no champion (there was none)"


def promote_version(model_name: str, check: PromotionCheck) -> str | None:
    """Make the checked version the champion (the old one keeps `@previous`); its run says it
    was promoted, and with which problems overridden. Returns the version that was champion.

    Raises:
        ChampionMoved: the champion changed since `check` was made.
    """
    client = MlflowClient()
    before = promote(model_name, check.version, compared_with=check.champion)
    if check.problems:
        client.set_model_version_tag(model_name, check.version, PROMOTED_DESPITE_TAG, "; ".join(check.problems)[:5000])
    run_id = client.get_model_version(model_name, check.version).run_id
    try:
        metrics = mlflow.artifacts.load_dict(f"runs:/{run_id}/metrics.json")
    except Exception:  # a version made by `leadscore criteria`: its run holds rules.json
        client.set_tag(run_id, "promoted", "True")
        return before
    mark_promoted(model_name, run_id, metrics, before)
    return before
