"""The feature spec: which columns the model takes, their types and category levels.

Learned on training data, saved in the model bundle, and applied unchanged at scoring
time, so training, batch scoring and the service see identical inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

FeatureGroup = Literal["fit", "engagement"]


class FeatureSpec(BaseModel):
    """Columns in model order, their kind, category levels and the settings that made them."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["crm", "flat"]
    columns: list[str]
    categories: dict[str, list[str]]
    groups: dict[str, FeatureGroup]
    settings: dict[str, Any]
    # Columns whose missing value has a meaning, and the number the model reads instead: days
    # since an activity the lead never had are longer ago than any, so that a score constrained
    # to fall with the days (`tuning.engagement_monotone`) cannot rank "never" above "an hour ago".
    missing_as: dict[str, float] = {}

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.columns if c not in self.categories]


def learn_spec(
    features: pd.DataFrame,
    *,
    kind: Literal["crm", "flat"],
    groups: dict[str, FeatureGroup],
    settings: dict[str, Any],
    exclude: tuple[str, ...] = (),
    missing_as: dict[str, float] | None = None,
) -> FeatureSpec:
    """Learn the spec from training features: text columns become categories."""
    columns = [c for c in features.columns if c not in exclude]
    categories = {}
    for column in columns:
        if not pd.api.types.is_numeric_dtype(features[column]):
            levels = features[column].dropna().astype(str).unique().tolist()
            categories[column] = sorted(levels)
    return FeatureSpec(
        kind=kind,
        columns=columns,
        categories=categories,
        groups={c: groups.get(c, "fit") for c in columns},
        settings=settings,
        missing_as={c: v for c, v in (missing_as or {}).items() if c in columns},
    )


def missing_again(values: pd.DataFrame, missing_as: Mapping[str, float]) -> pd.DataFrame:
    """Model-form values with each `missing_as` number missing again, as the features have them:
    for what reads them as amounts (the baselines, colour scales), where a day count of a
    century would dwarf every real one."""
    return values.assign(**{c: values[c].mask(values[c] == v) for c, v in missing_as.items() if c in values})


def to_model_frame(features: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Cast features to the spec: model column order, floats, the trained category levels.

    Columns the spec lacks are ignored; columns it needs but the input lacks are missing.
    Unknown category values become missing (the model treats missing as a value). A missing
    value the spec gives a meaning (`missing_as`) becomes its number.
    """
    numeric = features.reindex(columns=spec.numeric)
    try:
        # One cast for the whole numeric block: the common case, and far cheaper per request.
        block = numeric.astype("float64")
    except (TypeError, ValueError):
        block = numeric.apply(lambda col: pd.to_numeric(col, errors="coerce")).astype("float64")
    out = {column: block[column] for column in spec.numeric}
    for column, value in spec.missing_as.items():
        out[column] = out[column].fillna(value)
    for column, levels in spec.categories.items():
        values = features[column] if column in features else pd.Series([np.nan] * len(features), index=features.index)
        # Match each distinct value once (case- and space-insensitively), then spread.
        position = {level.casefold(): i for i, level in enumerate(levels)}
        codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
        matched = [position.get(str(v).strip().casefold(), -1) for v in uniques]
        index = np.array([*matched, -1], dtype=np.int64)
        out[column] = pd.Categorical.from_codes(index[codes], categories=levels)
    return pd.DataFrame({column: out[column] for column in spec.columns}, index=features.index)
