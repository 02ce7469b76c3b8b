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
