"""Load params.yaml into one frozen, validated object."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_ENV = "LEADSCORE_PARAMS"
# A web origin as a browser sends it: scheme, host (a name, an IPv4 or a bracketed IPv6) and port.
ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# A host name as a request's Host header names it (a port and a trailing dot are allowed: the
# guard reads the name alone), or a bracketed IPv6 address.
HOST = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# A competitor's domain as it follows the @ of an e-mail address.
DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(_Frozen):
    embedded_leads: int = Field(gt=0, le=2_000_000)  # as `generate --leads` takes them
    embedded_seed: int
    embedded_start: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    embedded_months: int = Field(gt=0, le=120)

    @field_validator("embedded_start")
    @classmethod
    def _a_date(cls, start: str) -> str:
        import datetime as dt

        dt.date.fromisoformat(start)  # "2024-13-45" is said here, not as a DateParseError in training
        return start

    # A stratified holdout and 5-fold cross-validation need a few of each class in every part.
    min_positive: int = Field(ge=10)
    min_negative: int = Field(ge=10)
    # A CRM's own outcome statuses, read as converted, lost or open, beside the common
    # spellings the product knows ("Closed Won", "Unqualified", "Nurture", ...).
    outcome_statuses: dict[str, Literal["converted", "lost", "open"]] = {}


class IcpParams(_Frozen):
    industries: tuple[str, ...]
    min_employees: float
    max_employees: float
    seniorities: tuple[str, ...]
    departments: tuple[str, ...]
    countries: tuple[str, ...]
    # Absent from the settings of a model trained before it: that model compares case alone.
    match_spellings: bool = False


class FeatureParams(_Frozen):
    snapshot_days: int = Field(gt=0)
    horizon_days: int = Field(gt=0)
    windows_days: tuple[int, ...]
    decay_half_life_days: float = Field(gt=0)
    engagement_weights: dict[str, float]
    tech_stack_top_k: int = Field(ge=0)
    icp: IcpParams


class FlatParams(_Frozen):
    missing_tokens: tuple[str, ...]
    max_category_share: float = Field(gt=0, le=1)
    max_category_levels: int = Field(gt=1)
    # A flat model makes MQLs of this share of leads: its MQL score is set in training where
    # this share of held-out predictions of the training rows sit.
    mql_top_share: float = Field(0.25, gt=0, lt=1)


class LeakageParams(_Frozen):
    max_single_column_auc: float = Field(gt=0.5, le=1)
    action: Literal["exclude", "warn"]


class SplitParams(_Frozen):
    test_days: int = Field(gt=0)
    valid_days: int = Field(gt=0)
    test_share: float = Field(gt=0, lt=0.5)
    valid_share: float = Field(gt=0, lt=0.5)
    seed: int


# What LightGBM takes of the searched settings a trial could draw outside (num_leaves 1 failed
# trial 1 of a run, with LightGBM's own message).
SEARCH_BOUNDS: dict[str, tuple[float, float | None]] = {
    "num_leaves": (2, 131072), "max_depth": (1, None), "min_child_samples": (0, None), "min_data_in_leaf": (0, None),
    "feature_fraction": (1e-9, 1), "bagging_fraction": (1e-9, 1), "feature_fraction_bynode": (1e-9, 1),
    "bagging_freq": (0, None), "lambda_l1": (0, None), "lambda_l2": (0, None), "learning_rate": (1e-9, None),
    "min_data_per_group": (1, None), "max_bin": (2, None), "cat_smooth": (0, None), "cat_l2": (0, None),
}  # fmt: skip
# What the product sets itself: a binary classifier, ranked on `tuning.metric`, seeded by `tuning.seed`.
PRODUCT_SETS = frozenset({"objective", "metric", "seed", "random_state", "verbose", "verbosity", "n_jobs",
                          "num_threads"})  # fmt: skip


YAML_11_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})
# Names the check needs no LightGBM for (importing it cost every command 0.75 s).
COMMON_NAMES = frozenset(SEARCH_BOUNDS) | {
    "max_cat_threshold", "max_cat_to_onehot", "cat_l2", "path_smooth", "min_sum_hessian_in_leaf", "min_gain_to_split",
    "extra_trees", "linear_tree", "is_unbalance", "scale_pos_weight", "boosting", "max_delta_step",
    "min_data_in_bin", "bagging_seed", "feature_fraction_seed", "drop_rate", "skip_drop",
}  # fmt: skip


def _lightgbm_names() -> frozenset[str] | None:
    """Every LightGBM parameter name and alias, None where this LightGBM does not say."""
    try:
        import lightgbm.basic

        aliases = lightgbm.basic._ConfigAliases._get_all_param_aliases()
    except Exception:  # a private helper: its absence skips the check, nothing else
        return None
    return frozenset(aliases) | frozenset(alias for names in aliases.values() for alias in names)


# LightGBM settings searched on a log scale (each range must then start above 0).
LOG_SCALE = frozenset({"learning_rate", "lambda_l1", "lambda_l2", "cat_smooth", "cat_l2"})


class TuningParams(_Frozen):
    trials: int = Field(ge=1)
    timeout_seconds: float = Field(gt=0)
    seed: int
    early_stopping_rounds: int = Field(ge=1)
    refit_with_validation: bool = True
    metric: Literal["auc", "binary_logloss"] = "auc"
    max_boost_rounds: int = Field(ge=10)
    search_space: dict[str, tuple[float, float]]
    # LightGBM settings every trial and the final model share (not searched).
    fixed: dict[str, int | float | str | bool] = Field(default_factory=dict)
    # Numeric features at least this correlated (Spearman) with the label on the training rows
    # are constrained monotone in that direction, by LightGBM's `monotone_method`; 0 constrains none.
    monotone_min_abs_correlation: float = Field(0.0, ge=0, le=1)
    monotone_method: Literal["basic", "intermediate", "advanced"] = "advanced"
    # CRM models: the chosen settings are refit with each engagement feature constrained by its
    # meaning (`features.build.engagement_direction`), so one more activity never lowers a score.
    engagement_monotone: bool = True

    @model_validator(mode="after")
    def _ranges_can_be_searched(self) -> TuningParams:
        # Checked here, not by Optuna half-way through a run, with a traceback that names no setting.
        for name, (low, high) in self.search_space.items():
            if low > high:
                raise ValueError(f"tuning.search_space.{name}: [{low}, {high}] runs backwards; give [low, high]")
            if name in LOG_SCALE and low <= 0:
                raise ValueError(
                    f"tuning.search_space.{name}: [{low}, {high}] is searched on a log scale, so its low end must be "
                    f"above 0 (e.g. {high / 1e4:g})"
                )
        return self

    @model_validator(mode="after")
    def _lightgbm_takes_them(self) -> TuningParams:
        """Checked here, not by LightGBM minutes into tuning (a trial drawing `num_leaves` 1) or
        never (a misspelt name, which it ignores; a name in both lists, where the search won)."""
        uncommon = (set(self.search_space) | set(self.fixed)) - COMMON_NAMES
        known = _lightgbm_names() if uncommon else None
        for where, names in (("search_space", self.search_space), ("fixed", self.fixed)):
            unknown = [name for name in names if known and name not in known]
            if unknown:
                raise ValueError(f"tuning.{where}: {', '.join(map(repr, unknown))} is no LightGBM setting (it would "
                                 "be ignored)")  # fmt: skip
        worded = sorted(k for k, v in self.fixed.items() if isinstance(v, str) and v.casefold() in YAML_11_WORDS)
        if worded:  # LightGBM refused "yes" in the first trial
            raise ValueError(f"tuning.fixed: {', '.join(worded)}: write true or false (yes, no, on and off are text)")
        if both := sorted(set(self.search_space) & set(self.fixed)):
            raise ValueError(f"tuning.fixed: {', '.join(both)} is searched too (tuning.search_space): keep one")
        if ours := sorted(set(self.fixed) & PRODUCT_SETS):
            raise ValueError(f"tuning.fixed: {', '.join(ours)} is the product's to set (a binary classifier, its "
                             "metric, seed and threads)")  # fmt: skip
        for name, (low, high) in self.search_space.items():
            least, most = SEARCH_BOUNDS.get(name, (None, None))
            if (least is not None and low < least) or (most is not None and high > most):
                raise ValueError(f"tuning.search_space.{name}: [{low:g}, {high:g}] goes outside what LightGBM takes "
                                 f"({least:g} to {most if most is not None else 'any'})")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _constraints_come_from_the_data(self) -> TuningParams:
        set_here = sorted(k for k in self.fixed if k.startswith("monotone_constraints"))
        if set_here:
            raise ValueError(
                f"tuning.fixed: {', '.join(set_here)} are set from the data; use "
                "tuning.monotone_min_abs_correlation and tuning.monotone_method"
            )
        return self


class CalibrationParams(_Frozen):
    methods: tuple[Literal["isotonic", "sigmoid"], ...] = Field(min_length=1)
    cv_folds: int = Field(ge=2, le=20)
    ece_bins: int = Field(ge=2)


class GateParams(_Frozen):
    # ROC AUC and ECE run 0-1: a 60 meant as percent is a gate no model passes, a 5 one none fails.
    min_test_roc_auc: float = Field(ge=0, le=1)
    max_test_ece: float = Field(ge=0, le=1)
    max_auc_drop_vs_champion: float = Field(ge=-1, le=1)
    min_auc_gain_vs_baseline: float = Field(ge=-1, le=1)
    min_test_examples_per_class: int = Field(20, ge=1)


class MqlParams(_Frozen):
    min_score: float
    # None: not a condition (a flat model's ranks come from columns grouped by name, so it
    # qualifies on its score alone).
    min_fit: float | None
    min_engagement: float | None
    # A hand raised within `hand_raise_days` (a demo request, a meeting) makes a lead at
    # `min_score` an MQL whatever its fit and engagement ranks (models before it: off).
    hand_raise_qualifies: bool = False


class SqlParams(_Frozen):
    min_score: float
    require_hand_raise: bool
    min_bant_confirmed: int = Field(ge=0, le=4)


class DisqualifyParams(_Frozen):
    min_icp_match: float = Field(ge=0, le=1)
    competitor_domains: tuple[str, ...]
    recycle_after_days: int = Field(ge=1)


DEFAULT_DISQUALIFIED_ACTIONS = {
    "do_not_contact": "Do not contact: the lead opted out",
    "competitor": "Do not work: the e-mail address is a competitor's",
}


class CriteriaParams(_Frozen):
    hand_raise_types: tuple[str, ...]
    hand_raise_days: int = Field(gt=0)
    mql: MqlParams
    sql: SqlParams
    disqualify: DisqualifyParams
    next_actions: dict[Literal["disqualified", "do_not_contact", "competitor", "nurture", "MQL", "SAL", "SQL"], str]

    @model_validator(mode="before")
    @classmethod
    def _opt_outs_are_not_recycled(cls, data: Any) -> Any:
        """Models registered before these two actions existed recycled every disqualified lead,
        an opted-out one included: they get these defaults."""
        if isinstance(data, dict) and isinstance(data.get("next_actions"), dict):
            data = {**data, "next_actions": {**DEFAULT_DISQUALIFIED_ACTIONS, **data["next_actions"]}}
        return data

    @model_validator(mode="after")
    def _every_stage_has_an_action(self) -> CriteriaParams:
        missing = {"disqualified", "nurture", "MQL", "SAL", "SQL"} - set(self.next_actions)
        if missing:
            raise ValueError(f"no action in next_actions for {sorted(missing)}")
        return self


class ServiceParams(_Frozen):
    max_batch: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1000)
    # 0: no polling (POST /reload still checks); below a second, a stream of registry calls.
    reload_seconds: float = Field(default=30.0, ge=0)
    workers: Annotated[int, Field(ge=1)] | Literal["cpu_count"] = 1
    # Web origins whose pages may call the API from a browser (CORS); empty: none.
    cors_origins: tuple[str, ...] = ()
    # Host names besides localhost that a request reaching the service on this machine may be
    # addressed to when no API keys are set (a reverse proxy's name).
    allowed_hosts: tuple[str, ...] = ()
    # Failed API keys or sign-ins an address may make in a minute before it is answered 429; 0: no limit.
    failed_key_limit: int = Field(default=0, ge=0)
    # The lead's record in the CRM, linked from its page: a web address with {lead_id} in it.
    crm_lead_url: str = ""

    @field_validator("crm_lead_url")
    @classmethod
    def _a_web_address_naming_the_lead(cls, url: str) -> str:
        url = url.strip()
        if url and (
            not ORIGIN.match(url) or url.count("{lead_id}") != 1 or {"{", "}"} & set(url.replace("{lead_id}", ""))
        ):
            raise ValueError(
                f"{url!r}: a web address (http:// or https://) with {{lead_id}} once where the lead's id goes, e.g. "
                "https://acme.lightning.force.com/lightning/r/Lead/{lead_id}/view"
            )
        return url

    @field_validator("reload_seconds")
    @classmethod
    def _off_or_a_second_at_least(cls, seconds: float) -> float:
        if 0 < seconds < 1:
            raise ValueError(f"{seconds:g}: 0 (no polling) or 1 second or more (each check is a registry call)")
        return seconds

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        """A name as a request's Host header gives it: a scheme, path or `*` never matched, and
        the 403 then said to list a name that was listed."""
        odd = [host for host in hosts if not HOST.fullmatch(host)]
        if odd:
            raise ValueError(f"{', '.join(map(repr, odd))}: a host name (proxy.example.com, a port allowed), no "
                             "scheme, path or wildcard")  # fmt: skip
        return hosts

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        """A browser sends `https://host[:port]` exactly: a path or a trailing slash would never
        match, and the CRM's calls would fail in the browser with nothing said here."""
        odd = [origin for origin in origins if origin != "*" and not ORIGIN.fullmatch(origin)]
        if odd:
            raise ValueError(
                f"{', '.join(map(repr, odd))} is not a web origin: scheme and host (and port) only, no path or "
                "trailing slash, e.g. https://crm.example.com (or * for any)"
            )
        return origins


class RecalibrationParams(_Frozen):
    window_days: int = Field(default=540, ge=90)
    trials: int = Field(default=30, ge=1)
    timeout_seconds: float = Field(default=90, gt=0)
    mql_top_share: float = Field(default=0.25, gt=0, lt=1)
    sql_precision: float = Field(default=0.5, gt=0, le=1)
    min_sql_leads: int = Field(default=30, ge=1)
    grade_shares: dict[str, float] = Field(
        default_factory=lambda: {"A": 0.05, "B": 0.15, "C": 0.3, "D": 0.5}, min_length=1
    )
    feature_psi_threshold: float = Field(default=0.2, gt=0)
    score_psi_threshold: float = Field(default=0.1, gt=0)
    conversion_shift_threshold: float = Field(default=0.02, gt=0, le=1)  # a share: 0.02 is 2 points
    conversion_shift_min_z: float = Field(default=3.0, ge=0)
    lock_file: str = "recalibrate.lock"


class MlflowParams(_Frozen):
    experiment: str = Field(min_length=1)
    # As MLflow's registry takes a name (not blank, no "/" or ":", not dots alone: refused at the
    # end of a training) and its searches quote one (no quote marks).
    model_name: str = Field(pattern=r"^[^/:'\"]*[^/:'\"\s.][^/:'\"]*$")
    shap_sample: int = Field(ge=10)


class Params(_Frozen):
    data: DataParams
    features: FeatureParams
    flat: FlatParams
    leakage: LeakageParams
    split: SplitParams
    tuning: TuningParams
    calibration: CalibrationParams
    gates: GateParams
    grades: dict[str, float]
    criteria: CriteriaParams
    service: ServiceParams
    mlflow: MlflowParams
    recalibration: RecalibrationParams = Field(default_factory=RecalibrationParams)

    @model_validator(mode="after")
    def _grades_descend(self) -> Params:
        bounds = list(self.grades.values())
        shown = ", ".join(f"{grade}: {bound:g}" for grade, bound in self.grades.items())
        if bounds != sorted(bounds, reverse=True) or len(set(bounds)) != len(bounds):
            raise ValueError(f"grades: lower bounds must be listed best first, strictly falling ({shown})")
        if not bounds or bounds[-1] != 0 or bounds[0] > 100:
            # Every score falls in the last grade below its bound: a D from 5 would grade a 3 D too.
            raise ValueError(f"grades: scores run 0-100, so the last grade starts at 0 and none above 100 ({shown})")
        return self

    @model_validator(mode="after")
    def _rules_can_be_met(self) -> Params:
        """What an admin's edit can get wrong that each type alone allows: a rule that never
        fires or a text that fails at scoring time. Checked for params files only: a registered
        model's criteria are read as they were written."""

        problems = criteria_problems(self.criteria) + icp_problems(self.features.icp)
        shares = self.recalibration.grade_shares
        if any(not 0 < share <= 1 for share in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            problems.append(f"recalibration.grade_shares: each above 0 and together 1, the last grade's share "
                            f"included ({shares})")  # fmt: skip
        problems += feature_problems(self.features) + status_problems(self.data.outcome_statuses)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def feature_problems(features: FeatureParams) -> list[str]:
    """Feature settings of a params file that would act otherwise than meant without a word.
    Checked for params files only: a registered model's settings are read as they were written."""
    from features.schema import ACTIVITY_TYPES

    problems = []
    windows = features.windows_days
    if not windows or any(days < 1 for days in windows) or len(set(windows)) != len(windows):
        # A negative window counted the activities *after* the moment: a leak, trained on silently.
        problems.append(f"features.windows_days: {list(windows)}: days back from the moment, each 1 or more, none "
                        "twice (as [7, 30, 90])")  # fmt: skip
    weights = features.engagement_weights
    unknown = [kind for kind in weights if kind not in ACTIVITY_TYPES]
    if unknown:  # `demo_requests` weighed nothing: its activities added no engagement
        problems.append(f"features.engagement_weights: {', '.join(map(repr, unknown))}: not an activity type; the "
                        f"types are {', '.join(ACTIVITY_TYPES)}")  # fmt: skip
    unweighed = [kind for kind in ACTIVITY_TYPES if kind not in weights]
    if unweighed:  # a line deleted weighed that type nothing, silently
        problems.append(f"features.engagement_weights: no weight for {', '.join(unweighed)} (0 to leave it out)")
    return problems


def status_problems(statuses: dict[str, str]) -> list[str]:
    """Two spellings of one status (as outcomes are read: case, spaces, - _ / alike) given two
    meanings: the last one won, without a word."""
    from features.ingest import status_key

    meanings: dict[str, dict[str, str]] = {}
    for status, meaning in statuses.items():
        meanings.setdefault(status_key(status), {})[status] = meaning
    return [f"data.outcome_statuses: {' and '.join(map(repr, spelt))} read as one status, given "
            f"{' and '.join(sorted(set(spelt.values())))}"
            for spelt in meanings.values() if len(set(spelt.values())) > 1]  # fmt: skip


def criteria_problems(criteria: CriteriaParams) -> list[str]:
    """Why qualification rules written in a params file could not work as meant."""
    from features.engagement import INTENT_TYPES  # the activity types with a days-since feature

    problems = []
    unknown = [kind for kind in criteria.hand_raise_types if kind not in INTENT_TYPES]
    if unknown:
        problems.append(
            f"criteria.hand_raise_types: {', '.join(map(repr, unknown))} cannot count as a hand raise (it would be "
            f"ignored, and no lead would reach SQL on it); use some of {', '.join(INTENT_TYPES)}"
        )
    if not criteria.hand_raise_types and (criteria.sql.require_hand_raise or criteria.mql.hand_raise_qualifies):
        problems.append("criteria.hand_raise_types: empty, while sql.require_hand_raise or "
                        "mql.hand_raise_qualifies needs a hand raise (no lead would reach SQL)")  # fmt: skip
    bounded = {"mql.min_score": criteria.mql.min_score, "sql.min_score": criteria.sql.min_score,
               "mql.min_fit": criteria.mql.min_fit, "mql.min_engagement": criteria.mql.min_engagement}  # fmt: skip
    for name, value in bounded.items():
        if value is not None and not 0 <= value <= 100:
            problems.append(f"criteria.{name}: {value:g} is outside 0-100 (a score in percent, a rank)")
    if criteria.sql.min_score < criteria.mql.min_score:
        problems.append(f"criteria.sql.min_score: {criteria.sql.min_score:g} is below mql.min_score "
                        f"{criteria.mql.min_score:g}; an SQL is an MQL first")  # fmt: skip
    empty = [stage for stage, text in criteria.next_actions.items() if not text.strip()]
    if empty:
        problems.append(f"criteria.next_actions: no text for {', '.join(empty)}: a rep would read a blank action")
    # Only the disqualified action is filled in (with the recycle date, an ISO date text); the
    # others are shown as written, braces and all.
    recycled = criteria.next_actions.get("disqualified", "")
    try:
        recycled.format(recycle_on="2026-01-31")
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        what = f"unknown placeholder {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
        problems.append(f"criteria.next_actions.disqualified: {what}: it takes {{recycle_on}} as it stands (the "
                        "date as 2026-01-31), and {{ and }} for a brace")  # fmt: skip
    odd = [domain for domain in criteria.disqualify.competitor_domains
           if not DOMAIN.fullmatch(domain) or domain.casefold().startswith("www.")]  # fmt: skip
    if odd:
        problems.append(f"criteria.disqualify.competitor_domains: {', '.join(map(repr, odd))}: write a domain as it "
                        "follows the @ of an address (salesforce.com), without @, www. or spaces")  # fmt: skip
    return problems


def icp_problems(icp: IcpParams) -> list[str]:
    """An ideal customer profile no lead could match on some criterion."""
    lists = ("industries", "seniorities", "departments", "countries")
    problems = [f"features.icp.{name}: empty, so every lead would miss this criterion; list at least one"
                for name in lists if not [value for value in getattr(icp, name) if value.strip()]]  # fmt: skip
    problems += [f"features.icp.{name}: a blank entry, which no lead's value matches"
                 for name in lists if any(not value.strip() for value in getattr(icp, name))
                 and [value for value in getattr(icp, name) if value.strip()]]  # fmt: skip
    if icp.min_employees > icp.max_employees:
        problems.append(f"features.icp.min_employees: {icp.min_employees:g} is above max_employees "
                        f"{icp.max_employees:g}")  # fmt: skip
    return problems


class ParamsError(ValueError):
    """params.yaml is missing or invalid."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: PyYAML keeps the last
    one without a word, so an admin's second `min_score:` silently replaced the first.

    Plain words are read as YAML 1.2 reads them: only true and false are booleans (`yes`, `on`
    and `NO`, Norway, read as true or false, and then as 1 or 0 where a number goes), digits are
    decimal (`060` read as octal 48, `1:30` as 90) and a date stays text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # `<<: *defaults` merged in first, as the safe loader does
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice in one section: keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_RESOLVED_OTHERWISE = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                       "tag:yaml.org,2002:timestamp"}  # fmt: skip
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _RESOLVED_OTHERWISE]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9][0-9_]*$"), list("-+0123456789"))
UniqueKeyLoader.add_constructor(  # decimal, whatever its leading zeros (PyYAML read 060 as octal)
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node).replace("_", ""), 10)
)
UniqueKeyLoader.add_implicit_resolver(  # also 1e-3, 2e7 and 5., which YAML 1.1 read as text
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def default_params_path() -> Path:
    """The params file in use: $LEADSCORE_PARAMS, else the project's params.yaml."""
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml"))


def load_params(path: str | Path | None = None, **overrides: object) -> Params:
    """Read and validate a params file.

    Args:
        path: YAML file; defaults to `default_params_path()`.
        **overrides: dotted keys with replacement values, e.g. ``{"tuning.trials": 5}``.

    Returns:
        The frozen parameters.

    Raises:
        ParamsError: the file cannot be read or a value is invalid (names the key).
    """
    path = Path(path) if path else default_params_path()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except OSError as exc:
        raise ParamsError(f"cannot read params file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"cannot read params file {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
            f"{exc.start}); save it as UTF-8"
        ) from exc
    except ValueError as exc:  # a number PyYAML's constructor could not read
        raise ParamsError(f"cannot read params file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        # One line, at the file's line (PyYAML's several lines name "<unicode string>", not the file).
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        said = " ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
        raise ParamsError(f"cannot read params file {path}{where}: {said or exc}") from exc
    if not isinstance(raw, dict):
        found = "nothing" if raw is None else f"a {type(raw).__name__}"
        raise ParamsError(f"invalid params file {path}: it holds {found}, not the settings (key: value lines)")
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ParamsError(f"invalid params file {path}: {key} holds a value, not settings under it")
        node[leaf] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"invalid params file {path}: {'; '.join(map(_said, exc.errors()))}") from exc


def _said(error: dict[str, Any]) -> str:
    """One validation error as a person editing the file reads it: the key, then the problem
    in YAML's words (a list, not a tuple; no pydantic prefix)."""
    message = error["msg"].removeprefix("Value error, ")
    message = message.replace("a valid tuple", "a list").replace("a valid dictionary", "key: value settings")
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {message}" if where else message
