"""Score leads with the champion bundle: calibrated probability, score, grade, fit and
engagement sub-scores, qualification stage, and the reasons in score points.

Shared by the service, batch scoring and the pages, so all three give identical numbers.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.build import build_crm_features
from features.bundle import LeadScorer, grade_of, score_from_probability
from features.clean import blank_to_missing, numbers_as_text, stored_formats
from features.criteria import qualify_columns, reachable_stages
from features.fit import tech_names
from features.flat import clean_flat_columns, model_column_name
from features.ingest import DUPLICATE_ACTIVITY, CountedNote, Quarantine, clean_activities, clean_leads
from features.params import CriteriaParams, FeatureParams
from features.reasons import reads_as_yes_no, sentence
from features.schema import LEAD_NUMERIC
from features.spec import to_model_frame
from features.tracking import shown_uri, tracking_uri, without_password
from serving.treeshap import CompiledTrees, as_matrix, compile_booster, shap_matrix

logger = logging.getLogger(__name__)
CHAMPION = "champion"
REASONS_EACH_WAY = 3
SPARE_NEGATIVES = 3  # candidates beyond those shown, for the negatives a sentence leaves out
MIN_REASON_POINTS = 0.05
# A reason moves the score by at least this share of the lead's strongest factor: "-0.5" next
# to "+21" is noise to a rep, not a reason.
MIN_REASON_SHARE = 0.1
# Batches larger than this are scored in blocks of this many leads (see `score_matrix`).
PIPELINE_ROWS = 25_000


class ModelNotReady(RuntimeError):
    """No usable champion: nothing registered, or the bundle cannot be loaded. The message
    never holds the registry's password: it reaches API answers, pages and logs."""

    def __init__(self, message: str) -> None:
        super().__init__(without_password(message))


class AliasMissing(ModelNotReady):
    """The model name has versions, but the alias asked for points at none of them."""


class InvalidLeads(ValueError):
    """Leads that cannot be scored; `problems` names the lead's position and the field, and
    `rows` holds each as (table, 0-based row, reason) for callers that point at the input."""

    def __init__(self, problems: list[str], rows: list[tuple[str, int, str]] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.rows = rows or []


@dataclass(frozen=True)
class LoadedModel:
    """The champion bundle and where it came from."""

    scorer: LeadScorer
    name: str
    version: str
    alias: str
    trees: CompiledTrees

    @property
    def kind(self) -> str:
        return self.scorer.spec.kind

    # Read once per model, not per request (cached_property writes the instance dict directly).
    @cached_property
    def criteria(self) -> CriteriaParams:
        return CriteriaParams.model_validate(self.scorer.metadata["criteria"])

    @cached_property
    def stages(self) -> list[str]:
        """The stages this model can give (`reachable_stages`): a flat model's rows carry the
        rule inputs among its columns only (`criteria_inputs`, `prepare_flat_rows`)."""
        features = set(self.scorer.spec.columns)
        inputs = {n for n in ("icp_match", "bant_confirmed", "do_not_contact") if n in features}
        if any(f"days_since_{kind}" in features for kind in self.criteria.hand_raise_types):
            inputs.add("days_since_hand_raise")
        # The raw columns of a flat export (all its header when kept; else its features).
        header = set(self.scorer.spec.settings.get("flat", {}).get("header") or features)
        inputs |= {n for n in ("email", "sales_accepted", "do_not_contact") if n in header}
        return reachable_stages(self.kind, self.criteria, inputs)

    @cached_property
    def tech_names(self) -> dict[str, str]:
        """Technologies as the training export spelt them, by feature (`features.fit.tech_names`)."""
        return tech_names(self.scorer.spec.settings)

    @cached_property
    def feature_params(self) -> FeatureParams:
        return FeatureParams.model_validate(self.scorer.spec.settings["features"])

    @cached_property
    def idle_engagement(self) -> tuple[list[int], np.ndarray] | None:
        """The engagement columns and the values a lead with no activity has in them, when the
        fit sub-score holds engagement there (CRM models since it was kept); else None."""
        idle = self.scorer.metadata.get("subscore_idle_engagement")
        if idle is None:
            return None
        columns = self.scorer.spec.columns
        return [columns.index(c) for c in idle], np.array([np.nan if v is None else v for v in idle.values()], float)

    @cached_property
    def subscores(self) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
        """Per sub-score: the model columns it sums, and the training reference of its rank."""
        spec = self.scorer.spec
        out = {}
        for group, quantiles in self.scorer.metadata["subscore_quantiles"].items():
            reference = np.maximum.accumulate(np.asarray(quantiles, dtype=float))
            index = [i for i, c in enumerate(spec.columns) if spec.groups[c] == group]
            out[group] = (index, reference, np.linspace(0, 100, len(reference)))
        return out


def _has_versions(model_name: str) -> bool:
    try:
        return bool(MlflowClient().search_model_versions(f"name = '{model_name}'", max_results=1))
    except Exception:  # only a better message depends on it
        return False


# MLflow's error codes for a name, alias or version the registry does not hold.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def champion_version(model_name: str, alias: str = CHAMPION) -> str:
    """The version `models:/<name>@<alias>` points at now (a registry lookup, no loading).

    Raises:
        ModelNotReady: nothing registered under that alias, or the registry unreachable.
    """
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            if _has_versions(model_name):
                why = (
                    ": no training run has passed the registration gates yet (the training output lists them), "
                    "or the alias was removed"
                    if alias == CHAMPION
                    else ""
                )
                raise AliasMissing(
                    f"{model_name} has registered versions but none is @{alias} in {shown_uri(tracking_uri())}{why}"
                ) from exc
            raise ModelNotReady(
                f"no model registered as {model_name}@{alias} in {shown_uri(tracking_uri())}; "
                "run `leadscore train` first"
            ) from exc
        raise ModelNotReady(
            f"registry {shown_uri(tracking_uri())} unreachable or failing: {without_password(str(exc))[:300]}"
        ) from exc
    except Exception as exc:  # a tracking server that is down must not take the service with it
        raise ModelNotReady(f"registry {shown_uri(tracking_uri())} unreachable: {type(exc).__name__}: {exc}") from exc


def load_chosen(model_name: str, which: str | None) -> LoadedModel:
    """The model a person named: a version number, an alias (`previous`, `@challenger`), or
    the champion when `which` is None.

    Raises:
        ModelNotReady: no such version or alias, or the registry unreachable.
    """
    if which is None:
        return load_champion(model_name)
    which = which.strip().lstrip("@")
    if not which:
        raise ModelNotReady("--model-version is empty: give a version number (3) or an alias (previous)")
    if not (which.isascii() and which.isdigit()):
        return load_champion(model_name, which)
    mlflow.set_tracking_uri(tracking_uri())
    try:
        MlflowClient().get_model_version(model_name, which)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            raise ModelNotReady(f"{model_name} has no version {which} in {shown_uri(tracking_uri())}") from exc
        raise ModelNotReady(
            f"registry {shown_uri(tracking_uri())} unreachable or failing: {without_password(str(exc))[:300]}"
        ) from exc
    except Exception as exc:
        raise ModelNotReady(f"registry {shown_uri(tracking_uri())} unreachable: {type(exc).__name__}: {exc}") from exc
    return load_champion(model_name, f"version {which}", version=which)


def load_champion(model_name: str, alias: str = CHAMPION, *, version: str | None = None) -> LoadedModel:
    """Resolve `models:/<name>@<alias>` in the configured registry and load that version
    (or the given `version`, as resolved by the caller).

    Raises:
        ModelNotReady: with a reason a person can act on.
    """
    version = version or champion_version(model_name, alias)
    mlflow.set_tracking_uri(tracking_uri())  # the configured registry, whatever the process had set before
    path, modules = list(sys.path), set(sys.modules)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
        scorer = model.unwrap_python_model().scorer
    except Exception as exc:  # a broken bundle must give a reason, not a crash
        raise ModelNotReady(f"{model_name} version {version} could not be loaded: {type(exc).__name__}: {exc}") from exc
    finally:
        # MLflow puts the bundle's copy of the project code first on sys.path; left there it
        # would shadow the installed code for every later import here and in any process
        # started from here (Dask workers failed on an older bundle's copy).
        sys.path[:] = path
        # Each load imports the bundle's model code as a new `code_model_<uuid>` module that
        # nothing uses after it: a service swapping champions would keep one per swap.
        for name in set(sys.modules) - modules:
            if name.startswith("code_model_"):
                del sys.modules[name]
    if "criteria" not in scorer.metadata or "subscore_quantiles" not in scorer.metadata:
        raise ModelNotReady(
            f"{model_name} version {version} was trained by an older release without criteria "
            "and sub-score references; retrain it with `leadscore train`"
        )
    logger.info("loaded %s version %s (@%s)", model_name, version, alias)
    return LoadedModel(
        scorer=scorer, name=model_name, version=version, alias=alias, trees=compile_booster(scorer.booster)
    )


# Log-odds are ranked to this many decimals: far below any difference a score shows.
RANK_DECIMALS = 9


def _percentile(values: np.ndarray, reference: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Rank (0-100) of each value among the training leads the reference quantiles describe;
    a value many of them share (no activity: engagement 0) takes the middle of their ranks.

    Values are rounded as the reference is (`RANK_DECIMALS`): "what activity adds" of a lead with
    none is 0 give or take 1e-15 (a SHAP sum less a prediction), which must not pick a rank
    among the many training leads at 0 by its rounding noise."""
    values, reference = np.round(values, RANK_DECIMALS), np.round(reference, RANK_DECIMALS)
    low = np.interp(values, reference, ranks)  # at a tie, the last of the tied ranks
    high = -np.interp(-values, -reference[::-1], -ranks[::-1])  # at a tie, the first
    return np.round((low + high) / 2, 0)


SINGLE_THREAD_ROWS = 2_000


def subscore_totals(model: LoadedModel, contributions: np.ndarray, matrix: np.ndarray) -> dict[str, np.ndarray]:
    """What the fit and engagement ranks are taken of, as in training (`subscore_reference`):
    the profile's log-odds with engagement held at no activity, and what activity adds to it;
    or, for models without that reference, the SHAP contributions of each group summed."""
    idle = model.idle_engagement
    if idle is not None:
        held = matrix.copy()
        held[:, idle[0]] = idle[1]
        # One thread for a request's few rows: OpenMP's start and wait cost 0.4-0.9 ms a call on
        # a busy machine, one thread about 60 µs (a SHAP pass of one lead: about 4 µs).
        threads = 1 if len(held) < SINGLE_THREAD_ROWS else 0
        profile = model.scorer.booster.predict(held, raw_score=True, num_threads=threads)
        return {"fit": profile, "engagement": contributions.sum(axis=1) - profile}
    per_feature = contributions[:, :-1]
    return {group: per_feature[:, index].sum(axis=1) for group, (index, _, _) in model.subscores.items()}


def explain_frame(model: LoadedModel, features: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Exact SHAP contributions (log-odds) of each feature for each lead, and the base value.

    The matrix has one column per feature in spec order and a last one holding the base value
    (as `shap`'s `TreeExplainer` adds it): a lead's row sums to its margin in log-odds."""
    return shap_matrix(model.trees, model_matrix(model, features)), model.trees.base_value


def model_matrix(model: LoadedModel, features: pd.DataFrame) -> np.ndarray:
    """Features as the model's float matrix (spec column order, categories as codes)."""
    return as_matrix(to_model_frame(features, model.scorer.spec))


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return np.asarray(values, dtype=float)


UNSUBSCRIBES = "n_unsubscribe_total"  # a nurture lead that unsubscribed is not nurtured by e-mail


def criteria_inputs(model: LoadedModel, features: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of the qualification rules that are not scores: ICP match, BANT, the most
    recent hand-raise, do-not-contact, sales acceptance and e-mail (a data frame or a dict of
    columns alike)."""
    inputs: dict[str, Any] = {}
    for name in ("icp_match", "bant_confirmed", "do_not_contact", "lead_age_days", UNSUBSCRIBES):
        if name in features:
            inputs[name] = _floats(features[name])
    raised = [_floats(features[f"days_since_{kind}"]) for kind in model.criteria.hand_raise_types
              if f"days_since_{kind}" in features]  # fmt: skip
    if raised:
        inputs["days_since_hand_raise"] = np.fmin.reduce(np.vstack(raised), axis=0)  # NaN only when all are
    for name in ("email", "sales_accepted", "do_not_contact"):
        if name in context:
            values = context[name]
            inputs[name] = values.to_numpy() if isinstance(values, pd.Series) else values
    return inputs


def score_matrix(
    model: LoadedModel,
    matrix: np.ndarray,
    values: Mapping[str, Any],
    inputs: Mapping[str, Any],
    moments: list,
    *,
    with_reasons: bool = True,
) -> dict[str, Any]:
    """Scores, sub-scores, stage and reasons as columns, from the model matrix.

    Args:
        matrix: features in model form (`model_matrix`).
        values: each feature's values as the lead has them (shown in the reasons): a data
            frame or a dict of lists.
        inputs: the criteria inputs (`criteria_inputs`).
        moments: the scoring moment of each lead.
    """
    n = len(matrix)
    if not with_reasons or n <= PIPELINE_ROWS:
        return _score_block(model, shap_matrix(model.trees, matrix), matrix, values, inputs, moments, with_reasons)
    # The reasons are Python (one core); the SHAP kernel runs without the GIL: explain the next
    # block on the other core while this block's reasons are written.
    bounds = [*range(0, n, PIPELINE_ROWS), n]
    blocks = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(shap_matrix, model.trees, matrix[: bounds[1]], serial=True)
        for a, b, c in zip(bounds[:-1], bounds[1:], [*bounds[2:], n], strict=True):
            contributions = pending.result()
            if b < n:
                pending = pool.submit(shap_matrix, model.trees, matrix[b:c], serial=True)
            rows = values.iloc[a:b] if isinstance(values, pd.DataFrame) else {k: v[a:b] for k, v in values.items()}
            part = {k: v[a:b] for k, v in inputs.items()}
            blocks.append(_score_block(model, contributions, matrix[a:b], rows, part, moments[a:b], with_reasons))
    return {
        key: np.concatenate([block[key] for block in blocks])
        if isinstance(blocks[0][key], np.ndarray)
        else [item for block in blocks for item in block[key]]
        for key in blocks[0]
    }


def _score_block(
    model: LoadedModel,
    contributions: np.ndarray,
    matrix: np.ndarray,
    values: Mapping[str, Any],
    inputs: Mapping[str, Any],
    moments: list,
    with_reasons: bool,
) -> dict[str, Any]:
    scorer = model.scorer
    base = model.trees.base_value
    per_feature = contributions[:, :-1]
    margin = contributions.sum(axis=1)
    probability = scorer.calibrator.apply(margin)
    score = score_from_probability(probability)
    columns = scorer.spec.columns
    totals = subscore_totals(model, contributions, matrix)
    sub = {group: _percentile(totals[group], *model.subscores[group][1:]) for group in ("fit", "engagement")}
    n = len(contributions)
    stages = qualify_columns({"score": score, **sub, **inputs}, n, model.criteria, moments)
    out: dict[str, Any] = {
        "probability": np.round(probability, 6),
        "score": score,
        "grade": grade_of(score, scorer.metadata["grade_bands"]),
        "fit": sub["fit"],
        "engagement": sub["engagement"],
        **stages,
    }
    if with_reasons:
        points = per_feature * scorer.calibrator.points_per_logit(margin, base)[:, None]
        flat_columns = scorer.spec.settings.get("flat", {}).get("columns", {})
        yes_no = frozenset(model_column_name(c) for c, kind in flat_columns.items() if kind == "boolean")
        arrays = _Columns(values, columns, n, scorer.spec.categories)
        averages = scorer.metadata.get("activity_averages") or {}
        yes_no = frozenset(filter(reads_as_yes_no, yes_no))
        out["reasons"] = _reasons(points, arrays, columns, yes_no, averages, model.tech_names)
    out["model_version"] = [model.version] * n
    return out


def score_columns(
    model: LoadedModel,
    features: pd.DataFrame,
    context: pd.DataFrame,
    as_of: pd.Series,
    *,
    with_reasons: bool = True,
) -> dict[str, Any]:
    """Scores, sub-scores, stage and reasons from built features, as columns (arrays or lists).

    Args:
        model: the loaded champion.
        features: feature rows (text and numbers) as the feature builders make them.
        context: per-lead inputs of the criteria that are not features (e.g. `email`,
            `sales_accepted`), aligned with `features`.
        as_of: the scoring moment of each lead.
        with_reasons: compute the top reasons (the SHAP values are needed either way for
            the sub-scores).
    """
    features = features.reset_index(drop=True)
    context = context.reset_index(drop=True)
    return score_matrix(
        model,
        model_matrix(model, features),
        features,
        criteria_inputs(model, features, context),
        list(as_of),
        with_reasons=with_reasons,
    )


def score_features(
    model: LoadedModel,
    features: pd.DataFrame,
    context: pd.DataFrame,
    as_of: pd.Series,
    *,
    with_reasons: bool = True,
) -> pd.DataFrame:
    """`score_columns` as a data frame."""
    return pd.DataFrame(score_columns(model, features, context, as_of, with_reasons=with_reasons))


class _Columns(dict):
    """Feature columns as plain Python lists (floats, str, None), converted on first use:
    reasons touch few columns, and plain values format faster than NumPy scalars. A category
    is shown as the training export spelt the level it matches (`categories`), so a lead's
    reasons read alike sent alone or in a file whose most frequent spelling is another."""

    def __init__(
        self, source: Mapping[str, Any], columns: list[str], n: int, categories: Mapping[str, list[str]]
    ) -> None:
        super().__init__()
        self._source = source
        self._columns = columns
        self._n = n
        self._categories = categories

    def __missing__(self, key: str) -> list:
        if key in self._source:
            values = self._source[key]
            values = values.tolist() if hasattr(values, "tolist") else list(values)
        else:
            values = [None] * self._n
        if key in self._categories:
            trained = {level.casefold(): level for level in self._categories[key]}
            spelt = {v: trained.get(v.strip().casefold(), v) for v in set(values) if isinstance(v, str)}
            values = [spelt.get(v, v) if isinstance(v, str) else v for v in values]
        self[key] = values
        return values

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class _Row(Mapping):
    """One lead's feature values, read from column arrays on demand (no per-lead dict)."""

    def __init__(self, columns: _Columns, index: int) -> None:
        self._columns = columns
        self._index = index

    def __getitem__(self, key: str) -> object:
        return self._columns[key][self._index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def _plain(value: object) -> object:
    """None for missing (None or NaN: NaN is the only value unequal to itself)."""
    return None if value is None or value != value else value


def _reasons(
    points: np.ndarray,
    arrays: _Columns,
    columns: list[str],
    yes_no: frozenset[str] = frozenset(),
    averages: Mapping[str, float] | None = None,
    names: Mapping[str, str] | None = None,
) -> list[list[dict[str, Any]]]:
    """Top positive and negative factors of each lead, strongest first; the text of a flat
    export's yes/no column (`yes_no`) says Yes or No ("Do Not Email is 1" read as a count); an
    amount of activity is weighed against its training average (`averages`, `sentence`); a
    technology is spelt as in the export (`names`)."""
    n, width = points.shape
    k = min(REASONS_EACH_WAY, width)
    if n == 0 or k == 0:
        return [[] for _ in range(n)]
    rows = np.arange(n)[:, None]
    top = np.argpartition(-points, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-points[rows, top], axis=1), axis=1)
    # A few more negatives than are shown: one `sentence` leaves out gives its place to the next.
    spare = min(REASONS_EACH_WAY + SPARE_NEGATIVES, width)
    bottom = np.argpartition(points, spare - 1, axis=1)[:, :spare]
    bottom = np.take_along_axis(bottom, np.argsort(points[rows, bottom], axis=1), axis=1)
    # Millions of small dicts would trigger the cyclic garbage collector over and over while
    # none of them can be garbage yet: pause it for the loop.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _reason_lists(n, arrays, columns, top, bottom, points, yes_no, averages or {}, names or {})
    finally:
        if collecting:
            gc.enable()


def _reason_lists(
    n: int,
    arrays: _Columns,
    columns: list[str],
    top: np.ndarray,
    bottom: np.ndarray,
    points: np.ndarray,
    yes_no: frozenset[str],
    averages: Mapping[str, float],
    names: Mapping[str, str],
) -> list[list[dict[str, Any]]]:
    top_points = np.take_along_axis(points, top, axis=1).tolist()
    bottom_points = np.take_along_axis(points, bottom, axis=1).tolist()
    top, bottom = top.tolist(), bottom.tolist()
    out = []
    for i in range(n):
        lead = _Row(arrays, i)
        floor = max(MIN_REASON_POINTS, MIN_REASON_SHARE * max(top_points[i][0], -bottom_points[i][0]))
        reasons: list[dict[str, Any]] = []
        for candidates, sign in ((zip(top[i], top_points[i], strict=True), 1),
                                 (zip(bottom[i], bottom_points[i], strict=True), -1)):  # fmt: skip
            said_before = len(reasons)
            for j, value in candidates:
                if len(reasons) - said_before == REASONS_EACH_WAY or sign * value < floor:
                    break
                feature = columns[j]
                shown, rounded = _plain(lead[feature]), round(value, 2)
                said = ("Yes" if shown == 1 else "No") if feature in yes_no and shown is not None else shown
                # The text from the points as sent: from the unrounded effect, 0.25 read "+0.3" beside 0.25.
                text = sentence(feature, said, rounded, averages.get(feature), names)
                if text is not None:
                    reasons.append({"feature": feature, "value": shown, "points": rounded, "text": text})
        out.append(reasons)
    return out


def model_date_order(scorer: Any, otherwise: bool | None = None) -> bool | None:
    """The order of numeric dates the model learned from its export, else `otherwise`."""
    stored = scorer.spec.settings.get("day_first")
    return otherwise if stored is None else stored


def clean_lead_rows(
    model: LoadedModel,
    leads: pd.DataFrame,
    quarantine: Quarantine,
    day_first: bool | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The lead rows as text cells (with `_row`, each one's position) and as the training rules
    clean them (unusable ones go to `quarantine`), numbers as the training export wrote them."""
    settings = model.scorer.spec.settings
    tokens = settings.get("missing_tokens", ("",))
    # A number sent as a number stays that number under the export's reading of dots (1.532 as sent).
    typed = leads.apply(lambda values: numbers_as_text(values) if values.name in LEAD_NUMERIC else values)
    raw = typed.astype(object).where(typed.notna(), "").astype(str).reset_index(drop=True)
    raw.insert(0, "_row", np.arange(len(raw)))
    # Numbers as the training export wrote them (a model from before the setting: as it read them).
    formats = stored_formats(settings.get("number_formats"))
    return raw, clean_leads(raw, quarantine, tokens, day_first=day_first, formats=formats)


def prepare_crm_leads(
    model: LoadedModel,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Series,
    *,
    strict: bool = True,
    day_first: bool | None = None,
    notes: list[CountedNote] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Clean raw CRM lead rows and their activities with the training rules and build
    features as of each lead's moment.

    Args:
        strict: raise on any unusable row (the service); otherwise leave such leads out and
            return them with their reasons (batch scoring quarantines them).
        day_first: the order of numeric dates when the model stored none (a batch file's, see
            `serving.batch.file_date_order`; None: each column's own).
        notes: gets the notes of the cleaning on values read otherwise than written (numbers
            that do not parse read as missing, ...), as training notes them.

    Returns:
        Features and criteria context of the usable leads, their positions in `leads`, and
        the problems (columns `table`, `row`, `lead_id`, `reason`; rows are 0-based positions).

    Raises:
        InvalidLeads: with `strict`, naming each lead (by position) that cannot be scored.
    """
    quarantine = Quarantine()
    day_first = model_date_order(model.scorer, day_first)
    raw, clean = clean_lead_rows(model, leads, quarantine, day_first)
    moments = pd.Series(pd.to_datetime(as_of).to_numpy(), index=raw.index)
    # Activities are checked against every readable lead: those of a lead set aside below are
    # not "of an unknown lead" (that would be a second, misleading error for one mistake).
    # A lead refused as a duplicate counts as readable too: its activities are its, not strangers'.
    known = pd.Index(clean["lead_id"]).union(pd.Index(blank_to_missing(raw["lead_id"], ("",)).dropna()))
    positions = clean["_row"].to_numpy()
    future = pd.Series(clean["created_at"].to_numpy() > moments.to_numpy()[positions], index=clean.index)
    if future.any():
        # Both moments said: an as_of read otherwise than meant (`20261022` is Unix time, 1970) shows.
        moment = pd.Series(moments.to_numpy()[positions], index=clean.index).dt.floor("s").astype(str)
        said = (
            "created_at is after the scoring moment (as_of): "
            + clean["created_at"].astype(str)
            + " UTC after "
            + moment
            + " UTC (a moment without an offset is UTC, a date alone its midnight: send the time)"
        )
        quarantine.add("leads", clean, future, said)
        clean = clean[~future].reset_index(drop=True)
        positions = clean["_row"].to_numpy()
    acts = activities.astype(object).where(activities.notna(), "").astype(str).reset_index(drop=True)
    acts.insert(0, "_row", np.arange(len(acts)))
    clean_acts = clean_activities(acts, known, quarantine, day_first=day_first)
    if notes is not None:
        notes.extend(quarantine.counted)
    problems = quarantine.frame()
    # An activity sent twice is counted once, as batch scoring counts it; it spoils nothing.
    blocking = problems[~((problems["table"] == "activities") & (problems["reason"] == DUPLICATE_ACTIVITY))]
    if strict and not blocking.empty:
        raise InvalidLeads(
            [f"{row.table}[{row.row}] (lead_id {row.lead_id!r}): {row.reason}" for row in blocking.itertuples()],
            [(row.table, int(row.row), row.reason) for row in blocking.itertuples()],
        )
    vocabulary = model.scorer.spec.settings.get("tech_vocabulary", [])
    moment_of = moments.to_numpy()[positions]
    features = build_crm_features(clean, clean_acts, pd.Series(moment_of), model.feature_params, vocabulary)
    context = clean[[c for c in ("email", "sales_accepted", "do_not_contact") if c in clean]].reset_index(drop=True)
    context["activities_not_read"] = _not_read(clean["lead_id"], moment_of, clean_acts, notes)
    return features, context, positions, problems


NOT_READ = "dated at or after the scoring moment, not read (per lead: activities_not_read)"


def _not_read(lead_ids: pd.Series, moments: np.ndarray, acts: pd.DataFrame, notes: list | None) -> np.ndarray:
    """How many of each lead's activities are dated at or after its moment, which its features do
    not read (a meeting booked ahead; local times sent without their offset), counted in `notes`."""
    if acts.empty or "occurred_at" not in acts or lead_ids.empty:
        return np.zeros(len(lead_ids), dtype=int)
    first = ~lead_ids.duplicated().to_numpy()
    lead = pd.Index(lead_ids[first]).get_indexer(acts["lead_id"])
    moment = pd.to_datetime(pd.Series(moments[first])).to_numpy()[np.maximum(lead, 0)]
    late = (lead >= 0) & (acts["occurred_at"].to_numpy() >= moment)
    counts = acts.loc[late, "lead_id"].value_counts()
    if notes is not None and len(counts):
        shown = tuple(sorted(counts.index)[:5])  # lead ids
        notes.append(CountedNote("activities.occurred_at", NOT_READ, int(counts.sum()), shown))
    return lead_ids.map(counts).fillna(0).astype(int).to_numpy()


def prepare_flat_rows(
    model: LoadedModel, rows: pd.DataFrame, cleaned: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Clean flat-export rows with the schema learned in training (values that do not parse
    are read as missing, as in training); `cleaned`: these rows already cleaned so."""
    rows = rows.reset_index(drop=True)
    if cleaned is None:
        features, _ = clean_flat_columns(rows, model.scorer.spec.settings["flat"])
    else:
        features = cleaned.reset_index(drop=True)
    context = rows[[c for c in ("email", "sales_accepted") if c in rows]]
    return features, context, np.arange(len(rows))
