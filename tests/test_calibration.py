import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from features.calibration import Calibrator
from training.calibrate import choose_calibrator
from training.evaluate import expected_calibration_error


def test_calibration_repairs_overconfident_margins(params):
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1.5, 1.2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    margin = 2.5 * true_logit + 1.0  # an overconfident, shifted model
    raw = 1 / (1 + np.exp(-margin))
    calibrator, scores, held_out = choose_calibrator(margin, y, params.calibration)
    assert set(scores) == {"isotonic", "sigmoid"}
    assert expected_calibration_error(y, calibrator.apply(margin)) < 0.02 < expected_calibration_error(y, raw)
    # The held-out probabilities are of the chosen method, each row calibrated without it.
    assert expected_calibration_error(y, held_out) < 0.02
    assert not np.allclose(held_out, calibrator.apply(margin))
    assert abs(log_loss(y, held_out) - scores[calibrator.method]) < 1e-12


def test_calibrator_round_trips_through_plain_numbers():
    c = Calibrator("isotonic", x=[-1.0, 0.0, 2.0], y=[0.1, 0.2, 0.9])
    again = Calibrator.from_dict(c.to_dict())
    assert np.allclose(again.apply(np.array([-5, -0.5, 1.0, 9])), [0.1, 0.15, 0.55, 0.9])


def test_lift_by_decile_does_not_depend_on_the_order_of_tied_scores():
    """Isotonic calibration gives many leads one probability; cutting them at a decile's edge by
    row order changed the top decile's lift with the order of the rows."""
    from training.evaluate import lift_by_decile

    rng = np.random.default_rng(3)
    probability = np.round(rng.beta(1, 6, 1994), 2)  # about 40 distinct scores, as isotonic gives
    label = (rng.random(1994) < probability).astype(int)
    first = lift_by_decile(label, probability)
    order = rng.permutation(len(label))
    np.testing.assert_allclose(lift_by_decile(label[order], probability[order]).to_numpy(), first.to_numpy())
    np.testing.assert_allclose(first["leads"].sum(), 1994)
    assert abs(first["conversions"].sum() - label.sum()) < 1e-9
    # Untied scores give each decile whole leads, as ranking them one by one does, whatever the count.
    for n in (1000, 1003, 25, 15, 7):
        untied = rng.random(n)
        ranks = pd.Series(untied).rank(method="first", ascending=False).to_numpy()
        decile = np.ceil(ranks / n * 10).clip(1, 10).astype(int)
        by_rank = pd.Series(label[:n]).groupby(decile).agg(["size", "sum"])
        ranked = lift_by_decile(label[:n], untied)
        assert ranked["decile"].tolist() == by_rank.index.tolist(), n
        np.testing.assert_allclose(ranked["leads"], by_rank["size"])
        np.testing.assert_allclose(ranked["conversions"], by_rank["sum"])
