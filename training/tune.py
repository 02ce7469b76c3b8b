"""Tune LightGBM with Optuna: TPE sampling, pruning on the early-stopping rounds."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import optuna
import pandas as pd
from optuna_integration import LightGBMPruningCallback

from features.params import LOG_SCALE, TuningParams
from training.train import INTEGER, build_model, model_params


@dataclass(frozen=True)
class TuningResult:
    best_params: dict[str, Any]
    best_iteration: int
    best_valid_score: float
    trials: int
    pruned: int
    study: optuna.Study
    # The best trial's model cut to its best iteration (time split only): the same trees a
    # refit on the training rows with `best_iteration` rounds would grow, without the refit.
    best_model: lgb.Booster | None = None
    # After `refit_constrained`: the validation score of the constrained refit (time split).
    constrained_valid_score: float | None = None


# Minimum row counts (of a leaf, of a category group): on small data the space's upper end
# would forbid every split of a bagged sample and leave trials with constant predictions.
ROW_COUNTS = frozenset({"min_child_samples", "min_data_per_group"})
ROWS_PER_COUNT = 10
# Trials TPE draws at random before it models the results (Optuna's default): a search the time
# budget stops sooner has not searched.
TPE_STARTUP_TRIALS = 10


def suggest(trial: optuna.Trial, space: dict[str, tuple[float, float]], rows: int | None = None) -> dict[str, Any]:
    """Hyper-parameters for one trial from the search space in params.yaml.

    With `rows` (the rows one model of the trial learns from), the row-count parameters are
    capped at a tenth of them, so even a half-sized bagging sample can still grow depth-2 trees.
    """
    chosen: dict[str, Any] = {}
    for name, (low, high) in space.items():
        if name in ROW_COUNTS and rows is not None:
            cap = max(1, rows // ROWS_PER_COUNT)
            low, high = min(low, cap), min(high, cap)
        if name in INTEGER:
            chosen[name] = trial.suggest_int(name, int(low), int(high))
        else:
            chosen[name] = trial.suggest_float(name, low, high, log=name in LOG_SCALE)
    return chosen


def tune(
    x_train: pd.DataFrame,
    y_train: pd.Series,
    x_valid: pd.DataFrame,
    y_valid: pd.Series,
    params: TuningParams,
    *,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    fixed: dict[str, Any] | None = None,
) -> TuningResult:
    """Search hyper-parameters by validation ROC AUC.

    Each trial trains with early stopping on the validation set; Optuna's median pruner
    stops trials whose validation AUC trails the others at the same boosting round. Every
    trial shares `params.fixed` and `fixed` (settings learned from the data, such as
    monotone constraints); the best parameters include them.
    """

    best: dict[str, Any] = {}
    shared = {**params.fixed, **(fixed or {})}

    def objective(trial: optuna.Trial, within_budget: Callable[[Any], None]) -> float:
        hyper = {**shared, **suggest(trial, params.search_space, len(x_train))}
        pruning = LightGBMPruningCallback(trial, params.metric, valid_name="valid_0")
        model, iterations, score = _early_stopped(
            hyper, x_train, y_train, x_valid, y_valid, params, callbacks=[pruning, within_budget]
        )
        trial.set_user_attr("best_iteration", iterations)
        if "score" not in best or (score > best["score"] if maximize else score < best["score"]):
            best.update(score=score, number=trial.number, model=model.booster_, iterations=iterations)
        return score

    maximize = _direction(params) == "maximize"
    result = _run_study(objective, params, on_trial, shared)
    if best.get("number") != result.study.best_trial.number:
        return result
    trimmed = lgb.Booster(model_str=best["model"].model_to_string(num_iteration=best["iterations"]))
    return dataclasses.replace(result, best_model=trimmed)


def _early_stopped(
    hyper: dict[str, Any],
    x_train: pd.DataFrame,
    y_train: pd.Series,
    x_valid: pd.DataFrame,
    y_valid: pd.Series,
    params: TuningParams,
    callbacks: Sequence[Callable[[Any], None]] = (),
) -> tuple[lgb.LGBMClassifier, int, float]:
    """A model boosted until the validation score stops improving; its best round and score."""
    model = build_model({**hyper, "metric": params.metric}, n_estimators=params.max_boost_rounds, seed=params.seed)
    with warnings.catch_warnings():
        # LightGBM 4.7 prefers eval_X/eval_y, which the 4.5 and 4.6 the pin allows lack.
        warnings.filterwarnings("ignore", message="The argument 'eval_set' is deprecated")
        model.fit(
            x_train,
            y_train,
            eval_set=[(x_valid, y_valid)],
            callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False), *callbacks],
        )
    iterations = int(model.best_iteration_ or params.max_boost_rounds)
    return model, iterations, float(model.best_score_["valid_0"][params.metric])


def refit_constrained(
    result: TuningResult,
    constraints: list[int],
    params: TuningParams,
    valid: tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series] | None,
) -> TuningResult:
    """The best trial's settings with LightGBM monotone constraints (one sign per column).

    The trials search without them: a constrained round costs several free ones, so far fewer
    trials would fit the budget. With `valid` (train and validation rows, time split) the
    constrained model is early-stopped again, as it may want other rounds, and is the model
    returned; without (cross-validation), it keeps the trial's rounds and is refit later.
    """
    hyper = {**result.best_params, "monotone_constraints": constraints,
             "monotone_constraints_method": params.monotone_method}  # fmt: skip
    if valid is None:
        return dataclasses.replace(result, best_params=hyper, best_model=None)
    model, iterations, score = _early_stopped(hyper, *valid, params)
    trimmed = lgb.Booster(model_str=model.booster_.model_to_string(num_iteration=iterations))
    return dataclasses.replace(
        result, best_params=hyper, best_iteration=iterations, best_model=trimmed, constrained_valid_score=score
    )


def tune_cv(
    x: pd.DataFrame,
    y: pd.Series,
    params: TuningParams,
    *,
    folds: int,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    fixed: dict[str, Any] | None = None,
) -> TuningResult:
    """Search hyper-parameters by stratified k-fold ROC AUC (for data without timestamps).

    Each trial runs LightGBM's own cross-validation with early stopping on the mean fold
    AUC; the pruner compares trials on that mean at each boosting round. `fixed` as in `tune`.
    """
    shared = {**params.fixed, **(fixed or {})}

    def objective(trial: optuna.Trial, within_budget: Callable[[Any], None]) -> float:
        rows = len(x) * (folds - 1) // folds
        hyper = {**shared, **suggest(trial, params.search_space, rows), "metric": params.metric}
        history = lgb.cv(
            model_params(hyper, seed=params.seed),
            lgb.Dataset(x, label=y),  # a constructed Dataset cannot be reused with other params
            num_boost_round=params.max_boost_rounds,
            nfold=folds,
            stratified=True,
            seed=params.seed,
            callbacks=[
                lgb.early_stopping(params.early_stopping_rounds, verbose=False),
                LightGBMPruningCallback(trial, params.metric),
                within_budget,
            ],
        )
        scores = history[f"valid {params.metric}-mean"]
        trial.set_user_attr("best_iteration", len(scores))
        return float(scores[-1])

    return _run_study(objective, params, on_trial, shared)


def _direction(params: TuningParams) -> str:
    return "maximize" if params.metric == "auc" else "minimize"


class TuningBudget:
    """Cuts a trial still boosting when the tuning time budget is spent.

    Optuna checks its timeout only between trials, so the last trial could overrun the
    budget by a whole trial (several seconds here, minutes on large data). A cut trial is
    pruned; until one trial has completed nothing is cut, so there is always a model.
    """

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def callback(self, trial: optuna.Trial) -> Callable[[Any], None]:
        """A LightGBM callback for this trial (checked after every boosting round)."""
        if not trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return lambda env: None

        def within_budget(env: Any) -> None:
            if time.monotonic() > self.deadline:
                trial.set_user_attr("stopped", "tuning budget spent")
                raise optuna.TrialPruned("tuning budget spent")

        return within_budget


def _run_study(
    objective: Callable[[optuna.Trial, Callable[[Any], None]], float],
    params: TuningParams,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
    shared: dict[str, Any],
) -> TuningResult:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=_direction(params),
        sampler=optuna.samplers.TPESampler(seed=params.seed, n_startup_trials=TPE_STARTUP_TRIALS),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=30, interval_steps=10),
    )
    budget = TuningBudget(params.timeout_seconds)
    study.optimize(
        lambda trial: objective(trial, budget.callback(trial)),
        n_trials=params.trials,
        timeout=params.timeout_seconds,
        callbacks=[on_trial] if on_trial else None,
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(
            "no tuning trial completed; raise the time budget (tuning.timeout_seconds, or "
            "recalibration.timeout_seconds for a recalibration)"
        )
    best = study.best_trial
    return TuningResult(
        best_params={**shared, **best.params},
        best_iteration=int(best.user_attrs["best_iteration"]),
        best_valid_score=float(best.value),
        trials=len(study.trials),
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        study=study,
    )
