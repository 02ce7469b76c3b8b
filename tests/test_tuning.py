"""The search space of params.yaml becomes LightGBM parameters of the right types."""

import optuna

from training.train import model_params
from training.tune import suggest


def test_integer_hyper_parameters_are_suggested_and_passed_as_integers():
    space = {"num_leaves": (3.0, 4.0), "max_cat_to_onehot": (4.0, 64.0), "learning_rate": (0.03, 0.12)}
    trial = optuna.trial.FixedTrial({"num_leaves": 4, "max_cat_to_onehot": 16, "learning_rate": 0.05})
    chosen = suggest(trial, space)
    assert chosen == {"num_leaves": 4, "max_cat_to_onehot": 16, "learning_rate": 0.05}
    params = model_params({"max_cat_to_onehot": 16.0, "min_data_per_group": 50.0, "lambda_l1": 2.0}, seed=3)
    assert type(params["max_cat_to_onehot"]) is int and type(params["min_data_per_group"]) is int
    assert type(params["lambda_l1"]) is float and params["seed"] == 3


def test_the_best_trials_model_is_the_refit_on_the_training_rows():
    import numpy as np
    import pandas as pd

    from features.params import load_params
    from training.train import fit_final
    from training.tune import tune

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(3000, 4)), columns=list("abcd"))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(x["a"] - 0.5 * x["b"] * x["c"])))).astype(int).to_numpy()
    tuning = load_params(**{"tuning.trials": 4, "tuning.max_boost_rounds": 300}).tuning
    result = tune(x[:2000], y[:2000], x[2000:], y[2000:], tuning)
    assert result.best_model is not None and result.best_model.num_trees() == result.best_iteration
    refit = fit_final(x[:2000], y[:2000], result.best_params, n_estimators=result.best_iteration, seed=tuning.seed)
    valid = x[2000:]
    assert np.array_equal(result.best_model.predict(valid, raw_score=True), refit.predict(valid, raw_score=True))


def test_without_refit_the_best_trials_model_is_the_registered_one(small_crm_dir):
    """refit_with_validation off: the bundle carries the tuning's own best model and scores."""
    import numpy as np

    from features.params import load_params
    from serving.scoring import load_champion
    from training.pipeline import prepare_crm, train_and_register

    params = load_params(
        **{
            "tuning.trials": 2,
            "tuning.max_boost_rounds": 200,
            "tuning.refit_with_validation": False,
            # Off, as before it was kept: no constraint, and "never" is missing to the model.
            "tuning.engagement_monotone": False,
            "mlflow.shap_sample": 100,
            "gates.min_auc_gain_vs_baseline": -1.0,
            "gates.max_test_ece": 1.0,
        }
    )
    dataset = prepare_crm(small_crm_dir, params)
    tuned = []
    metrics = train_and_register(dataset, params, model_name="no-refit", on_tuned=tuned.append)
    assert metrics["promoted"] and tuned[0].best_model is not None
    scorer = load_champion("no-refit").scorer  # also compiles its trees for explanations
    assert scorer.booster.num_trees() == tuned[0].best_iteration
    assert scorer.spec.missing_as == {} and "monotone_constraints" not in scorer.booster.params
    test = dataset.features[(dataset.split.assignment == "test").to_numpy()].head(50)
    assert np.isfinite(scorer.predict_proba(test)).all()


def test_a_trial_running_past_the_budget_is_cut_once_one_has_completed(monkeypatch):
    """Optuna's timeout is checked between trials only; the budget also stops the running one."""
    import numpy as np
    import pandas as pd

    from features.params import load_params
    from training import tune as tuning_module

    monkeypatch.setattr(tuning_module.TuningBudget, "__init__", lambda self, seconds: setattr(self, "deadline", -1.0))
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(1500, 3)), columns=list("abc"))
    y = (rng.random(1500) < 1 / (1 + np.exp(-x["a"]))).astype(int).to_numpy()
    tuning = load_params(**{"tuning.trials": 3, "tuning.max_boost_rounds": 100}).tuning
    for result in (
        tuning_module.tune(x[:1000], y[:1000], x[1000:], y[1000:], tuning),
        tuning_module.tune_cv(x, y, tuning, folds=3),
    ):
        states = [t.state.name for t in result.study.trials]
        assert states == ["COMPLETE", "PRUNED", "PRUNED"]  # the first always completes: a model to keep
        assert [t.user_attrs.get("stopped") for t in result.study.trials[1:]] == ["tuning budget spent"] * 2
        assert result.best_iteration == result.study.trials[0].user_attrs["best_iteration"]


def test_small_data_caps_the_row_counts_so_every_trial_can_split():
    import numpy as np
    import pandas as pd

    from features.params import load_params
    from training.tune import tune_cv

    study = optuna.create_study()
    space = {"min_child_samples": (50.0, 400.0), "min_data_per_group": (5.0, 200.0), "num_leaves": (3.0, 4.0)}
    for _ in range(20):
        chosen = suggest(study.ask(), space, rows=900)
        assert 50 <= chosen["min_child_samples"] <= 90 and 5 <= chosen["min_data_per_group"] <= 90
    assert suggest(study.ask(), space, rows=300)["min_child_samples"] == 30  # the cap is below the space

    # 1,200 rows (960 per fold): uncapped, trials with min_child_samples near 400 and half-sized
    # bagging samples could not split at all and scored a constant model's AUC of 0.5.
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(1200, 3)), columns=list("abc"))
    y = (rng.random(1200) < 1 / (1 + np.exp(-2 * x["a"]))).astype(int).to_numpy()
    tuning = load_params(**{"tuning.trials": 8, "tuning.max_boost_rounds": 60, "tuning.timeout_seconds": 300}).tuning
    result = tune_cv(x, y, tuning, folds=5)
    scores = [t.value for t in result.study.trials if t.value is not None]
    assert scores and min(scores) > 0.7, scores


def test_a_pruned_trials_partial_score_is_not_logged_as_a_finished_ones(isolated_mlflow):
    """The MLflow UI compares `valid_roc_auc` across trials: a pruned one's last intermediate
    score would look like a finished model's. Trials ranked on log loss log it by its name."""
    import mlflow

    from training.pipeline import _log_trial

    mlflow.set_tracking_uri(isolated_mlflow)
    mlflow.set_experiment("trial-logging")
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.81))
    study.add_trial(
        optuna.trial.create_trial(
            params={},
            distributions={},
            value=0.62,
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={40: 0.62},
        )
    )
    with mlflow.start_run() as parent:
        for trial in study.trials:
            _log_trial(study, trial, "auc")
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", order_by=["attributes.run_name"]
    )
    assert list(children["tags.state"]) == ["COMPLETE", "PRUNED"]
    assert children["metrics.valid_roc_auc"].iloc[0] == 0.81 and children["metrics.valid_roc_auc"].isna().iloc[1]
    assert children["metrics.valid_roc_auc_when_pruned"].iloc[1] == 0.62
    with mlflow.start_run() as by_log_loss:
        _log_trial(study, study.trials[0], "binary_logloss")
    logged = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{by_log_loss.info.run_id}'")
    assert logged["metrics.valid_log_loss"].iloc[0] == 0.81 and "metrics.valid_roc_auc" not in logged


def test_clearly_correlated_numeric_features_are_constrained_monotone_in_every_trial_and_the_final_model():
    import numpy as np
    import pandas as pd

    from features.params import load_params
    from training.train import fit_final, learned_settings, monotone_constraints
    from training.tune import tune_cv

    rng = np.random.default_rng(2)
    rows = 4000
    x = pd.DataFrame(
        {
            "up": rng.normal(size=rows),
            "down": rng.normal(size=rows),
            "noise": rng.normal(size=rows),
            "kind": pd.Categorical(rng.choice(list("abc"), rows)),
        }
    )
    x.loc[::7, "up"] = np.nan  # blanks do not count against the correlation
    # A rising trend with wiggles an unconstrained model follows.
    logit = 1.5 * x["up"].fillna(0) + np.sin(4 * x["up"].fillna(0)) - x["down"]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    assert monotone_constraints(x, y, 0.05) == [1, -1, 0, 0]
    assert monotone_constraints(x, y, 0.0) == [0, 0, 0, 0]

    tuning = load_params(
        **{
            "tuning.trials": 3,
            "tuning.max_boost_rounds": 300,
            "tuning.fixed": {"max_bin": 63},
            "tuning.monotone_min_abs_correlation": 0.05,
        }
    ).tuning
    learned = learned_settings(x, y, tuning)
    assert learned == {"monotone_constraints": [1, -1, 0, 0], "monotone_constraints_method": tuning.monotone_method}
    # No constraint, no method: LightGBM 4.7 segfaults on the `advanced` method alone.
    assert learned_settings(x[["noise", "kind"]], y, tuning) == {}
    result = tune_cv(x, y, tuning, folds=3, fixed=learned)
    for trial in result.study.trials:
        assert trial.state.name in ("COMPLETE", "PRUNED")
    assert result.best_params["monotone_constraints"] == [1, -1, 0, 0]
    assert result.best_params["max_bin"] == 63

    grid = x.iloc[[0] * 200].copy()
    grid["up"] = np.linspace(-3, 3, 200)

    def steps(hyperparams):
        booster = fit_final(x, y, hyperparams, n_estimators=result.best_iteration, seed=tuning.seed)
        return np.diff(booster.predict(grid, raw_score=True))

    assert (steps(result.best_params) >= 0).all()
    free = {k: v for k, v in result.best_params.items() if not k.startswith("monotone_constraints")}
    assert (steps(free) < 0).any()  # the same model without the constraint dips


def test_the_chosen_settings_refit_with_constraints_are_early_stopped_again():
    """`tuning.engagement_monotone`: trials search freely, then the best trial's settings are refit
    with the constraints, stopped on validation anew; under cross-validation, refit later."""
    import numpy as np
    import pandas as pd

    from features.params import load_params
    from training.tune import refit_constrained, tune

    rng = np.random.default_rng(3)
    x = pd.DataFrame({"up": rng.normal(size=4000), "other": rng.normal(size=4000)})
    logit = 1.5 * x["up"] + 2 * np.sin(4 * x["up"]) + 0.5 * x["other"]
    y = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    tuning = load_params(**{"tuning.trials": 3, "tuning.max_boost_rounds": 300}).tuning
    result = tune(x[:3000], y[:3000], x[3000:], y[3000:], tuning)
    constrained = refit_constrained(result, [1, 0], tuning, (x[:3000], y[:3000], x[3000:], y[3000:]))
    assert constrained.best_params["monotone_constraints"] == [1, 0]
    assert constrained.best_params["monotone_constraints_method"] == tuning.monotone_method
    assert constrained.best_model.num_trees() == constrained.best_iteration
    assert constrained.constrained_valid_score is not None and constrained.best_valid_score == result.best_valid_score

    grid = x.iloc[[0] * 200].copy()
    grid["up"] = np.linspace(-3, 3, 200)
    assert (np.diff(constrained.best_model.predict(grid, raw_score=True)) >= 0).all()
    assert (np.diff(result.best_model.predict(grid, raw_score=True)) < 0).any()  # the free model dips

    later = refit_constrained(result, [1, 0], tuning, None)
    assert later.best_model is None and later.best_iteration == result.best_iteration
    assert later.best_params["monotone_constraints"] == [1, 0] and later.constrained_valid_score is None


def test_constraints_are_off_by_default_and_cannot_be_fixed_by_hand():
    import pytest

    from features.params import ParamsError, load_params

    tuning = load_params().tuning
    assert tuning.monotone_min_abs_correlation == 0 and tuning.fixed == {}
    with pytest.raises(ParamsError, match="are set from the data"):
        load_params(**{"tuning.fixed": {"monotone_constraints_method": "basic"}})


def test_a_search_range_optuna_cannot_search_is_refused_by_name():
    """`lambda_l1: [0.0, 10.0]` or a range written backwards failed in the first trial with
    Optuna's traceback, after the data was read, naming no setting."""
    import pytest

    from features.params import ParamsError, load_params

    with pytest.raises(ParamsError, match=r"tuning.search_space.lambda_l1: \[0.0, 10.0\] is searched on a log scale"):
        load_params(**{"tuning.search_space.lambda_l1": [0.0, 10.0]})
    with pytest.raises(ParamsError, match=r"tuning.search_space.learning_rate: \[0.12, 0.03\] runs backwards"):
        load_params(**{"tuning.search_space.learning_rate": [0.12, 0.03]})
    load_params(**{"tuning.search_space.min_child_samples": [0, 400]})  # a linear range may start at 0


def test_the_logistic_regression_baseline_reaches_its_l2_optimum():
    """The baseline is the regularized model it claims to be, not wherever a solver stopped."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from training.baselines import logistic_regression

    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(4000, 6)) * [1, 10, 100, 1, 1, 1], columns=list("abcdef"))
    x["kind"] = rng.integers(0, 5, 4000)
    x.loc[rng.random(4000) < 0.1, "a"] = np.nan
    logit = x["a"].fillna(0) - 0.02 * x["c"] + 0.3 * x["kind"] - 1
    y = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(int)
    baseline = logistic_regression(["kind"], list("abcdef"), seed=0).fit(x, y)
    design = baseline[0].transform(x)
    exact = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(design, y)
    # lbfgs at its default tolerance stopped 0.057 away from it on this data; Newton, 0.0004.
    np.testing.assert_allclose(baseline[-1].coef_, exact.coef_, atol=2e-3)
    np.testing.assert_allclose(baseline[-1].intercept_, exact.intercept_, atol=2e-3)


def test_the_trial_summary_says_when_the_time_budget_ended_the_search(capsys):
    from training.progress import PrintReporter

    for done, expected in ((2, "2 trials run of 60: the time budget ended the search"), (60, "60 trials run\n")):
        reporter = PrintReporter()
        reporter.trials_started(60)
        for number in range(done):
            reporter.trial_done(number, "COMPLETE", 0.8)
        reporter.trials_finished()
        assert expected in capsys.readouterr().out
