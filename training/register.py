"""Register: log the model bundle to MLflow, check the gates, move the aliases."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema
from sklearn.metrics import roc_auc_score

import features
from features.bundle import NEWER_BUNDLE
from features.fit import TECH_PREFIX
from features.flat import model_column_name
from features.params import GateParams
from features.tracking import without_password

logger = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
# Exact requirements of the bundle: logging them saves MLflow ~10 s of inference.
# Pinned to the versions that trained the model, so an environment rebuilt from it
# (`mlflow models serve`) loads the booster and bundle as they were saved.
BUNDLE_REQUIREMENTS = [
    f"{name}=={importlib.metadata.version(name)}" for name in ("lightgbm", "pandas", "numpy", "pydantic", "mlflow")
]


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


def log_bundle(artifacts: dict[str, str], example: pd.DataFrame, output: pd.DataFrame, model_name: str) -> str:
    """Log the pyfunc bundle in the active run and register it; returns the new version."""
    inferred = infer_signature(example, output)
    # Every feature may be absent (the model reads it as unknown, as scoring does): which ones
    # inference marks required would otherwise depend on the blanks of the example's rows.
    inputs = Schema([ColSpec(col.type, col.name, required=False) for col in inferred.inputs.inputs])
    signature = ModelSignature(inputs=inputs, outputs=inferred.outputs)
    # MLflow prints its own registration lines straight to stderr, in the middle of the run's
    # output; the caller reports the version and alias itself. Anything else goes on at once.
    quiet = _WithoutRegistryChatter(sys.stderr)
    try:
        with contextlib.redirect_stderr(quiet):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(features.__file__).parent / "pyfunc_entry.py"),
                artifacts=artifacts,
                code_paths=[str(Path(features.__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=BUNDLE_REQUIREMENTS,
                registered_model_name=model_name,
            )
    finally:
        quiet.flush()
    return str(info.registered_model_version)


class _WithoutRegistryChatter(io.TextIOBase):
    """A stderr that passes every line on as it is written, except MLflow's registration lines."""

    CHATTER = ("Successfully registered model '", "Created version '", "Registered model '")

    def __init__(self, target: Any) -> None:
        self.target = target
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, partial = (self.partial + text).split("\n")
        kept = "".join(f"{line}\n" for line in lines if not line.startswith(self.CHATTER))
        if not any(prefix.startswith(partial[: len(prefix)]) for prefix in self.CHATTER):
            kept, partial = kept + partial, ""  # cannot become a registration line (a progress bar)
        self.partial = partial
        if kept:
            self.target.write(kept)
        return len(text)

    def flush(self) -> None:
        if self.partial and not self.partial.startswith(self.CHATTER):
            self.target.write(self.partial)
        self.partial = ""
        self.target.flush()


def current_version(client: MlflowClient, model_name: str, alias: str = CHAMPION) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class ChampionCheck:
    """The current champion next to a new model: its version, its ROC AUC on the new test
    set when it can be compared, why not otherwise, and whether it takes other inputs."""

    version: str | None
    auc: float | None
    note: str
    other_inputs: bool = False
    # This export has no activity but the champion learned from engagement: most likely a broken
    # export, on which the champion (every lead read as never engaged) could lose to a fit-only model.
    engagement_missing: bool = False
    # This export has no value in lead columns the champion learned from (a leads.csv cut short).
    columns_missing: bool = False
    # The champion could not be compared (it could not be loaded, an artifact store down; or its
    # features cannot be rebuilt here): not replaced, or a store's short outage would promote any
    # model over it.
    uncompared: bool = False
    # This model reads columns the champion's run left out (dropped or flagged as leaking): a
    # retrain that forgot --drop would bring a leak back into service.
    reads_left_out: bool = False
    # The champion's qualification rules and grade bands (None: it could not be loaded).
    criteria: dict[str, Any] | None = None
    grade_bands: dict[str, float] | None = None


def export_shortfall(
    scorer: Any, *, has_activities: bool, activities_cut: str | None, lead_columns: list[str] | None
) -> tuple[str, str] | None:
    """What a CRM export lacks that a champion (`scorer`) learned from, so that it must not
    replace it whatever a new model scores: ("engagement", why) for no usable activity or
    activities cut short (`activities_end_early`), ("columns", why) for lead columns without a
    value; None when nothing. The registration gates and recalibration's check before training
    both ask."""
    if scorer.uses_engagement():
        if not has_activities:
            return "engagement", "this export has no usable activity, so a model learns from fit attributes alone"
        if activities_cut:
            return "engagement", activities_cut
    learned_from = scorer.spec.settings.get("lead_columns")  # None: a champion from before it was kept
    lacking = [c for c in learned_from or () if lead_columns is not None and c not in lead_columns]
    if lacking:
        return "columns", f"this export's leads have no value in {', '.join(lacking)}"
    return None


def own_reading(scorer: Any) -> dict[str, Any] | None:
    """What `Dataset.features_for` builds a model's own features from: a CRM model's feature
    settings, a flat model's schema; None for a CRM model from before they were kept."""
    return scorer.spec.settings.get("features" if scorer.spec.kind == "crm" else "flat")


def champion_auc(
    model_name: str,
    kind: str,
    features_test: pd.DataFrame,
    label: np.ndarray,
    *,
    export_has_activities: bool = True,
    activities_cut: str | None = None,
    lead_columns: list[str] | None = None,
    leaking: set[str] = frozenset(),
    dropped: set[str] = frozenset(),
    features_for: Callable[[dict[str, Any], list[str]], pd.DataFrame | None] | None = None,
    test_window: tuple[str, str] | None = None,
    columns: list[str] | None = None,
    header: list[str] | None = None,
) -> ChampionCheck:
    """The current champion's ROC AUC on this run's test set, when it can be compared.
    `activities_cut`: why this export's activities look cut short (`activities_end_early`).
    `lead_columns`: the feature inputs this CRM export has values in (`lead_columns_with_values`).
    `leaking`: columns this run leaves out as leaks (excluded by the leakage audit, or dropped
    with `--replace-leaky-champion`); `dropped`: all it leaves out by `--drop`; `features_for`
    (CRM): the test examples' features built with the champion's own feature settings and
    technologies, or None when they are this run's (scored with this run's, a champion trained
    with other windows lacked columns and went uncompared; with another half-life it was
    compared on features it never learned from). `test_window`: the first and last day this
    run's test examples are scored as of (a split by time); `columns`: the columns this model
    reads; `header`: a flat export's header as written (the --drop to advise names them so)."""
    client = MlflowClient()
    version = current_version(client, model_name)
    if version is None:
        return ChampionCheck(None, None, "no champion yet")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}@{CHAMPION}")
        scorer = model.unwrap_python_model().scorer
    except Exception as exc:  # a broken or foreign champion must not stop training, nor be replaced unseen
        if NEWER_BUNDLE in str(exc):
            # Replacing it by hand (the advice below) would undo the upgrade it belongs to.
            return ChampionCheck(
                version,
                None,
                f"champion v{version} was registered by a newer release of leadscore, which this checkout cannot "
                "read: not compared, so not promoted; update this checkout (git pull, then make install) and train "
                "again",
                uncompared=True,
            )
        said = without_password(" ".join(str(exc).split()))[:300]
        return ChampionCheck(
            version,
            None,
            f"champion v{version} could not be loaded ({type(exc).__name__}: {said}), so this model was not "
            "compared with it: not promoted; train again once its artifacts can be read (if they never can, "
            "promote a version by hand in notebook 02, or remove the @champion alias)",
            uncompared=True,
        )
    # Every answer from here on carries the champion's rules, which this run may replace.
    found = functools.partial(
        ChampionCheck, criteria=scorer.metadata.get("criteria"), grade_bands=scorer.metadata.get("grade_bands")
    )
    if scorer.spec.kind != kind:
        return found(version, None, f"champion v{version} is a {scorer.spec.kind} model, this one {kind}", True)
    learned_to = (scorer.metadata.get("training_window") or [None, None])[-1]
    if test_window and learned_to and str(learned_to) >= test_window[0]:
        # Test leads are those first seen in the test period: a champion that learned from
        # examples as of those days learned from some of these leads, and its AUC on them is
        # in-sample (it measured above the Bayes AUC on a generated export).
        return found(
            version,
            None,
            f"champion v{version} learned from examples as of {learned_to} and before, and this run's test period "
            f"starts {test_window[0]}: it learned from some of these test leads, so its AUC here would flatter it; "
            "not compared, so not promoted. Either this run's data ends before the champion's did (was --as-of or "
            "--data meant?) or its test period is longer than the champion's (split.test_days, or "
            "features.horizon_days, raised); `leadscore promote` makes a version the champion by hand",
            uncompared=True,
        )
    shortfall = (
        export_shortfall(scorer, has_activities=export_has_activities, activities_cut=activities_cut,
                         lead_columns=lead_columns)
        if kind == "crm" else None
    )  # fmt: skip
    if shortfall and shortfall[0] == "engagement":
        return found(
            version,
            None,
            f"{shortfall[1]}, while champion v{version} learned from engagement: an export cut short must not "
            "replace it (check the activities file, then train again; if activities really stopped, train under "
            "a name of its own: --model-name NAME)",
            engagement_missing=True,
        )
    if shortfall:
        return found(
            version,
            None,
            f"{shortfall[1]}, which champion v{version} learned from: scored without them the champion could lose "
            "to a model that never saw them, so a leads file cut short must not replace it (check leads.csv, then "
            "train again; if the CRM really stopped filling them, train under a name of its own: --model-name NAME)",
            columns_missing=True,
        )
    note = ""
    own_settings = own_reading(scorer)
    if scorer.spec.kind == kind and features_for is not None and own_settings is not None:
        try:
            own = features_for(own_settings, list(scorer.spec.settings.get("tech_vocabulary", [])))
        except NotImplementedError as exc:
            return found(
                version,
                None,
                f"champion v{version} was trained with other feature settings or technologies, and {exc}: not "
                "compared, so not promoted; train with the local engine to compare the two",
                uncompared=True,
            )
        if own is not None:
            own_way = "feature settings" if kind == "crm" else "reading of numbers"
            features_test, note = own, f" (the champion scored with its own {own_way})"
    missing = [c for c in scorer.spec.columns if c not in features_test.columns]
    technologies = [c for c in missing if c.startswith(TECH_PREFIX)]
    if kind == "crm" and technologies and missing == technologies:
        # The technologies learned from the export change with it (its top ones): a technology
        # of the champion's that is not among this export's is read as "not used", a small
        # handicap for the champion, rather than leaving the gate unchecked.
        features_test = features_test.assign(**dict.fromkeys(technologies, 0.0))
        note = f" ({', '.join(technologies[:5])} read as 0: not among this export's technologies)"
        missing = []
    if kind == "flat" and columns:
        champion_dropped = scorer.spec.settings.get("flat", {}).get("dropped", [])
        left_out = {model_column_name(c): "dropped with --drop" for c in champion_dropped}
        for column in scorer.metadata.get("leakage_excluded", []):
            left_out.setdefault(column, "flagged as leaking")
        back = [c for c in columns if c in left_out]
        if back:
            shown = ", ".join(f"{c} ({left_out[c]})" for c in back[:5]) + (
                f" and {len(back) - 5} more" if len(back) > 5 else ""
            )
            # This run's --drop and the columns back, as this file's header writes them.
            wanted = {*dropped, *back}
            drop = ",".join(h for h in header or back if model_column_name(h) in wanted)
            return found(
                version,
                None,
                f"this model reads {shown}, which champion v{version}'s run left out: a retrain without them left "
                f"out would bring a leak back into service; train with --drop '{drop}', or, if those columns are "
                "known before the outcome, make this version the champion by hand (`leadscore promote VERSION`)",
                reads_left_out=True,
            )
    leaks = [c for c in scorer.spec.columns if c in leaking]
    if kind == "flat" and leaks and set(missing) <= set(leaking):
        # The same table without its leaks: callers still send the champion's columns, and the new
        # model reads a part of them. A test AUC earned with a leak is no bar for an honest model:
        # the other gates decide.
        return found(
            version,
            None,
            f"champion v{version} also reads {', '.join(leaks[:5])}, which this run leaves out as leaking: "
            "not compared on AUC",
        )
    if kind == "flat" and missing and set(missing) <= set(dropped) | set(leaking):
        kept_out = [c for c in missing if c not in leaking]
        those = "that column is" if len(kept_out) == 1 else "those columns are"
        return found(
            version,
            None,
            f"champion v{version} reads {', '.join(kept_out)}, which --drop leaves out, so the two cannot be compared "
            f"on this test set; if {those} recorded after the outcome (leaks), give --replace-leaky-champion to "
            "replace the champion without comparing; if not, keep them (no --drop)",
            other_inputs=True,
        )
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        # CRM features are the same contract every time, only the technologies learned from the
        # export may differ; a flat export without the champion's columns is another table.
        return found(
            version,
            None,
            f"champion v{version} uses columns this model does not (absent, or left out of this data): {shown}",
            other_inputs=kind == "flat",
        )
    probability = scorer.predict_proba(features_test)
    return found(version, float(roc_auc_score(label, probability)), note)


def _on_its_side(value: float, limit: float, *, at_least: bool = True, signed: bool = False) -> str:
    """`value` to 4 decimals, or as many more as it takes to read on its side of `limit`
    (-0.010036 failing a minimum of -0.01 read "-0.0100"; an ECE of 0.05004 failing a maximum
    of 0.05 read "0.0500")."""
    sign = "+" if signed else ""
    holds = (lambda v: v >= limit) if at_least else (lambda v: v <= limit)
    for decimals in range(4, 9):
        shown = f"{value:{sign}.{decimals}f}"
        if holds(float(shown)) == holds(value):
            return shown
    return f"{value:{sign}}"


def check_gates(
    gates: GateParams,
    test: dict[str, float],
    best_baseline_auc: float,
    champion: ChampionCheck,
) -> list[Gate]:
    """The registration gates of params.yaml, each with its verdict and the numbers.

    A model of other data never replaces the champion: whatever calls the service would be
    scored on inputs the new model does not know (every lead the same score)."""
    gain = test["roc_auc"] - best_baseline_auc
    result = [
        Gate("min_test_roc_auc", test["roc_auc"] >= gates.min_test_roc_auc,
             f"test ROC AUC {_on_its_side(test['roc_auc'], gates.min_test_roc_auc)} "
             f"vs minimum {gates.min_test_roc_auc}"),
        Gate("max_test_ece", test["ece"] <= gates.max_test_ece,
             f"test ECE {_on_its_side(test['ece'], gates.max_test_ece, at_least=False)} "
             f"vs maximum {gates.max_test_ece}"),
        Gate("min_test_examples_per_class",
             min(test["positives"], test["n"] - test["positives"]) >= gates.min_test_examples_per_class,
             f"test rows: {test['positives']:,} converted, {test['n'] - test['positives']:,} not converted "
             f"vs minimum {gates.min_test_examples_per_class} of each"),
        Gate("min_auc_gain_vs_baseline", gain >= gates.min_auc_gain_vs_baseline,
             f"gain over the better baseline {_on_its_side(gain, gates.min_auc_gain_vs_baseline, signed=True)} "
             f"vs minimum {gates.min_auc_gain_vs_baseline:+}"),
    ]  # fmt: skip
    if champion.other_inputs:
        result.append(
            Gate("same_inputs_as_champion", False,
                 f"{champion.note}; {'or ' if '--replace-leaky-champion' in champion.note else ''}train it under a "
                 "name of its own (--model-name NAME) so each model keeps its own @champion")
        )  # fmt: skip
    elif champion.reads_left_out:
        result.append(Gate("no_column_the_champion_left_out", False, champion.note))
    elif champion.engagement_missing:
        result.append(Gate("activities_like_champion", False, champion.note))
    elif champion.columns_missing:
        result.append(Gate("lead_columns_like_champion", False, champion.note))
    elif champion.auc is None:
        result.append(Gate("max_auc_drop_vs_champion", not champion.uncompared, champion.note))
    else:
        drop = champion.auc - test["roc_auc"]
        result.append(
            Gate("max_auc_drop_vs_champion", drop <= gates.max_auc_drop_vs_champion,
                 f"champion v{champion.version} test ROC AUC {champion.auc:.4f}, new {test['roc_auc']:.4f} "
                 f"(drop {drop:+.4f}, allowed {gates.max_auc_drop_vs_champion}){champion.note}")
        )  # fmt: skip
    return result


class ChampionMoved(RuntimeError):
    """`@champion` moved after the gates compared a new model with it."""


_UNCHECKED = object()


def promote(model_name: str, version: str, compared_with: Any = _UNCHECKED) -> str | None:
    """Make `version` the champion; the replaced champion keeps the alias `previous`.

    Args:
        compared_with: the champion version the gates compared `version` with (None: there was
            none). When `@champion` names another version now, another person's run or a
            recalibration promoted meanwhile (the lock is a file of one checkout, not of the
            registry): `version` is not promoted over a model it was never compared with.

    Returns:
        The version that was champion before, if any.

    Raises:
        ChampionMoved: the champion is not the one compared with.
    """
    client = MlflowClient()
    old = current_version(client, model_name)
    if compared_with is not _UNCHECKED and old != compared_with:
        was, now = (f"v{v}" if v is not None else "none" for v in (compared_with, old))
        raise ChampionMoved(
            f"@champion moved while this run trained (it was {was} when compared, {now} now: another person's "
            f"run or a recalibration promoted meanwhile): v{version} is registered, not promoted over a model "
            "it was not compared with; train again to compare with it"
        )
    # Before the aliases move: a registry lost after the move must not leave a "champion
    # unchanged" error behind a promotion that happened.
    lift_rollback_hold(model_name, version, client)  # promoted now, not restored by a rollback
    if old is not None and old != version:
        client.set_registered_model_alias(model_name, PREVIOUS, old)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    logger.info("model %s version %s is now @%s", model_name, version, CHAMPION)
    return old


# On a version a rollback made the champion again: when, and from which version. A scheduled
# recalibration does not promote over it (`rollback_hold`); any promotion clears it.
ROLLED_BACK_TAG = "leadscore.restored_by_rollback"


def lift_rollback_hold(model_name: str, version: str, client: MlflowClient | None = None) -> bool:
    """Remove a rollback's mark from `version` (a person promoted it, or kept it); whether it had one."""
    client = client or MlflowClient()
    if ROLLED_BACK_TAG not in client.get_model_version(model_name, version).tags:
        return False
    client.delete_model_version_tag(model_name, version, ROLLED_BACK_TAG)
    return True


def rollback_hold(model_name: str, champion: str, challenger: str | None) -> str | None:
    """Why a recalibration must not promote over `champion`: a person rolled back to it (the
    next scheduled run promoted the same model again and undid the rollback, unsaid), else None."""
    client = MlflowClient()
    restored = client.get_model_version(model_name, champion).tags.get(ROLLED_BACK_TAG)
    if not restored:
        return None
    review = f"v{challenger} is registered as @{CHALLENGER}: `leadscore promote {challenger}`" if challenger else (
        "`leadscore promote VERSION`")  # fmt: skip
    return (
        f"v{champion} was made @champion again by `leadscore rollback` ({restored}): a scheduled recalibration "
        f"does not undo a person's rollback; {review} puts a version in service once it is reviewed (`leadscore "
        f"promote {champion}` keeps this one and lifts the hold)"
    )


def unknown_model(model_name: str, client: MlflowClient | None = None) -> str | None:
    """The message "no registered model named ... (registered: ...)", or None when one is."""
    client = client or MlflowClient()
    if client.search_registered_models(filter_string=f"name = '{model_name}'"):
        return None
    names = ", ".join(m.name for m in client.search_registered_models()) or "none"
    return f"no registered model named {model_name!r} (registered: {names})"


def rollback(model_name: str) -> tuple[str, str]:
    """Make `@previous` the champion again; the replaced champion becomes `@previous`, so a
    second rollback undoes the first.

    Returns:
        (the version now champion, the version that was).

    Raises:
        ValueError: the model has no `@previous` or no `@champion`.
    """
    client = MlflowClient()
    if missing := unknown_model(model_name, client):
        raise ValueError(missing)
    previous = current_version(client, model_name, PREVIOUS)
    champion = current_version(client, model_name)
    if previous is None or champion is None:
        raise ValueError(f"{model_name} has no @{PREVIOUS if previous is None else CHAMPION} version to roll back to")
    if previous == champion:
        # A rollback or promotion stopped between its two alias moves (killed). A rollback's mark
        # says which version it replaced: that one becomes @previous, and the rollback is whole.
        restored = client.get_model_version(model_name, champion).tags.get(ROLLED_BACK_TAG, "")
        replaced = re.search(r"from v(\d+)$", restored)
        if replaced and replaced.group(1) != champion:
            client.set_registered_model_alias(model_name, PREVIOUS, replaced.group(1))
            logger.info("completed the rollback of %s stopped part way: v%s is @previous", model_name, replaced[1])
            return champion, replaced.group(1)
        raise ValueError(
            f"@{CHAMPION} and @{PREVIOUS} of {model_name} are both version {champion} (a promotion or rollback was "
            "stopped between its two steps): nothing to roll back to; `leadscore versions` lists the versions and "
            "`leadscore promote VERSION` puts the one you want in service"
        )
    # Marked before the aliases move: a registry lost after the move must not leave the rollback
    # done without its hold. A mark on a version that is not @champion holds nothing.
    when = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    client.set_model_version_tag(model_name, previous, ROLLED_BACK_TAG, f"{when}, from v{champion}")
    lift_rollback_hold(model_name, champion, client)  # a second rollback undoes the first
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    client.set_registered_model_alias(model_name, PREVIOUS, champion)
    logger.info("rolled %s back: version %s is @champion again, %s is @previous", model_name, previous, champion)
    return previous, champion


def set_alias(model_name: str, alias: str, version: str) -> None:
    """Point `models:/<name>@<alias>` at `version` (e.g. `challenger`)."""
    MlflowClient().set_registered_model_alias(model_name, alias, version)
    logger.info("model %s version %s is now @%s", model_name, version, alias)


def describe_version(model_name: str, version: str, tags: dict[str, Any]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
