"""Load params.yaml into one frozen, validated object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_ENV = "LEADSCORE_PARAMS"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(_Frozen):
    embedded_leads: int = Field(gt=0)
    embedded_seed: int
    embedded_start: str
    embedded_months: int = Field(gt=0)
    min_positive: int = Field(ge=1)
    min_negative: int = Field(ge=1)


class IcpParams(_Frozen):
    industries: tuple[str, ...]
    min_employees: float
    max_employees: float
    seniorities: tuple[str, ...]
    departments: tuple[str, ...]
    countries: tuple[str, ...]


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
    def _constraints_come_from_the_data(self) -> TuningParams:
        set_here = sorted(k for k in self.fixed if k.startswith("monotone_constraints"))
        if set_here:
            raise ValueError(
                f"tuning.fixed: {', '.join(set_here)} are set from the data; use "
                "tuning.monotone_min_abs_correlation and tuning.monotone_method"
            )
        return self


class CalibrationParams(_Frozen):
    methods: tuple[Literal["isotonic", "sigmoid"], ...]
    cv_folds: int = Field(ge=2)
    ece_bins: int = Field(ge=2)


class GateParams(_Frozen):
    min_test_roc_auc: float
    max_test_ece: float
    max_auc_drop_vs_champion: float
    min_auc_gain_vs_baseline: float
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
            raise ValueError(f"criteria.next_actions: no action for {sorted(missing)}")
        return self


class ServiceParams(_Frozen):
    max_batch: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1000)
    reload_seconds: float = Field(default=30.0, ge=0)
    workers: int | Literal["cpu_count"] = 1


class RecalibrationParams(_Frozen):
    window_days: int = Field(default=540, ge=90)
    trials: int = Field(default=30, ge=1)
    timeout_seconds: float = Field(default=90, gt=0)
    mql_top_share: float = Field(default=0.25, gt=0, lt=1)
    sql_precision: float = Field(default=0.5, gt=0, le=1)
    min_sql_leads: int = Field(default=30, ge=1)
    grade_shares: dict[str, float] = Field(default_factory=lambda: {"A": 0.05, "B": 0.15, "C": 0.3, "D": 0.5})
    feature_psi_threshold: float = Field(default=0.2, gt=0)
    score_psi_threshold: float = Field(default=0.1, gt=0)
    conversion_shift_threshold: float = Field(default=0.02, gt=0)
    conversion_shift_min_z: float = Field(default=3.0, ge=0)
    lock_file: str = "recalibrate.lock"


class MlflowParams(_Frozen):
    experiment: str
    model_name: str
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
        if bounds != sorted(bounds, reverse=True) or len(set(bounds)) != len(bounds):
            raise ValueError("grades: lower bounds must be listed best first, strictly falling")
        return self


class ParamsError(ValueError):
    """params.yaml is missing or invalid."""


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
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"cannot read params file {path}: {exc}") from exc
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
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ParamsError(f"invalid params file {path}: {problems}") from exc
