"""Evaluation charts saved as PNG: ROC, precision-recall, calibration, lift, SHAP summary."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import lightgbm as lgb
import matplotlib.pyplot as plt  # for shap's summary plot only, which draws on pyplot's figure
import numpy as np
import pandas as pd
import shap
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from features.spec import missing_again
from serving.charts import figure
from training.evaluate import calibration_table, lift_by_decile


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # a no-op for figures pyplot does not hold
    return path


def evaluation_plots(
    label: np.ndarray, probability: np.ndarray, baselines: dict[str, np.ndarray], out: Path
) -> list[Path]:
    """ROC and precision-recall (model and baselines), calibration curve, lift by decile."""
    out.mkdir(parents=True, exist_ok=True)
    shown_names = {
        "logistic_regression": "baseline: logistic regression",
        "lightgbm_default": "baseline: LightGBM defaults",
    }
    curves = {"tuned LightGBM (calibrated)": probability, **{shown_names.get(k, k): v for k, v in baselines.items()}}
    fig, ax = figure(5, 5)
    for name, p in curves.items():
        fpr, tpr, _ = roc_curve(label, p)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the test period")
    ax.legend(loc="lower right", fontsize=8)
    paths = [_save(fig, out / "roc.png")]

    fig, ax = figure(5, 5)
    for name, p in curves.items():
        precision, recall, _ = precision_recall_curve(label, p)
        ax.plot(recall, precision, label=name)
    ax.axhline(np.mean(label), color="k", ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall on the test period")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out / "precision_recall.png"))

    table = calibration_table(label, probability)
    fig, ax = figure(5, 5)
    top = max(table["predicted"].max(), table["observed"].max()) * 1.05
    ax.plot([0, top], [0, top], "k:", lw=1)
    ax.plot(table["predicted"], table["observed"], "o-")
    ax.set(
        xlabel="predicted probability",
        ylabel="observed conversion rate",
        title="Calibration (deciles)",
    )
    paths.append(_save(fig, out / "calibration.png"))

    lift = lift_by_decile(label, probability)
    fig, ax = figure(6, 4)
    ax.bar(lift["decile"], lift["lift"])
    ax.set_xticks(lift["decile"])
    ax.axhline(1, color="k", ls=":", lw=1)
    ax.set(xlabel="score decile (1 = top 10%)", ylabel="lift over base rate", title="Lift by decile")
    paths.append(_save(fig, out / "lift.png"))
    return paths


LOG_ODDS_AXIS = "contribution to the score, in log-odds before calibration (SHAP)"


def beeswarm(
    contributions: np.ndarray,
    values: np.ndarray | pd.DataFrame,
    categories: list[bool],
    feature_names: list[str],
    max_display: int = 20,
    xlabel: str = LOG_ODDS_AXIS,
) -> Figure:
    """SHAP's beeswarm on pyplot's current figure (what a notebook shows and training saves).

    Colour is a value's rank for numeric columns only: category codes are in no order, so the
    columns flagged in `categories` are drawn grey (SHAP's colour for a value it cannot rank)."""
    shown = np.array(values, dtype=float)  # a copy: the caller's matrix keeps its categories
    shown[:, np.asarray(categories, dtype=bool)] = np.nan
    # Column names are text, not TeX: `Spend $\frac$` stopped training with a parse error.
    with warnings.catch_warnings(), plt.rc_context({"text.parse_math": False}):
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-grey (categorical) column has no colour range
        shap.summary_plot(contributions, shown, feature_names=feature_names, show=False, max_display=max_display)
        fig = plt.gcf()
        fig.axes[0].set_xlabel(xlabel)
    return fig


def shap_summary_plot(
    booster: lgb.Booster, x: pd.DataFrame, out: Path, missing_as: Mapping[str, float] | None = None
) -> Path:
    """SHAP beeswarm of the booster on a sample of rows (log-odds contributions), as PNG; the
    colours read each `missing_as` number (the spec's) as missing, grey."""
    contributions = booster.predict(x, pred_contrib=True)[:, :-1]
    categorical = [isinstance(x[c].dtype, pd.CategoricalDtype) for c in x.columns]
    shown = missing_again(x, missing_as or {})
    numbers = pd.DataFrame(
        {c: np.nan if is_category else shown[c] for c, is_category in zip(x.columns, categorical, strict=True)},
        index=x.index,
    )
    with plt.rc_context({"text.parse_math": False}):
        fig = beeswarm(contributions, numbers.astype(float).to_numpy(), categorical, list(x.columns))
        fig.axes[0].set_title(f"What moves the score: top features on {len(x):,} test rows (grey: categories)")
        fig.set_size_inches(8, 7)
        return _save(fig, out / "shap_summary.png")
