"""The model bundle registered in MLflow: feature spec, LightGBM booster, calibrator and
metadata, behind one pyfunc model that takes feature rows and returns probabilities."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.calibration import Calibrator
from features.spec import FeatureSpec, to_model_frame

# The bundle's layout and the meaning of its metadata. Raise it whenever a reader of the
# previous format would misread a new bundle (a key whose meaning changes, a new key it must
# not ignore): an older checkout then refuses the bundle by name. (Before the number was
# written, a changed `subscore_quantiles` made older checkouts rank every lead's fit near 100
# without a word.) 1: bundles without the number; 2: since 2026-12-05; 3: a spec whose missing
# values have a meaning (`FeatureSpec.missing_as`, since 2026-12-07), which an older checkout
# would ignore and read "never had a trial" as a trial a moment ago. A bundle without them is
# still written as 2, for the checkouts that read it rightly.
BUNDLE_FORMAT = 3
NEWER_BUNDLE = "newer than this release of leadscore reads"

ARTIFACTS = {
    "booster": "booster.txt",
    "spec": "spec.json",
    "calibrator": "calibrator.json",
    "metadata": "metadata.json",
}


def score_from_probability(probability: np.ndarray) -> np.ndarray:
    """The 0-100 score: the calibrated probability in percent, one decimal."""
    return np.round(100.0 * np.asarray(probability), 1)


def grade_of(score: np.ndarray, bands: dict[str, float]) -> np.ndarray:
    """Grade letter of each score from lower bounds listed best first."""
    score = np.asarray(score)
    grades = np.full(score.shape, list(bands)[-1], dtype=object)
    for letter, bound in reversed(list(bands.items())):
        grades[score >= bound] = letter
    return grades


class LeadScorer:
    """Everything scoring needs, loaded from bundle files."""

    def __init__(
        self,
        booster: lgb.Booster,
        spec: FeatureSpec,
        calibrator: Calibrator,
        metadata: dict[str, Any],
    ):
        self.booster = booster
        self.spec = spec
        self.calibrator = calibrator
        self.metadata = metadata

    @classmethod
    def from_files(cls, files: dict[str, str | Path]) -> LeadScorer:
        metadata = json.loads(Path(files["metadata"]).read_text(encoding="utf-8"))
        check_bundle_files(files, metadata)
        booster = lgb.Booster(model_file=str(files["booster"]))
        spec = FeatureSpec.model_validate_json(Path(files["spec"]).read_text(encoding="utf-8"))
        calibrator = Calibrator.from_dict(json.loads(Path(files["calibrator"]).read_text(encoding="utf-8")))
        # LightGBM stores a feature name's spaces as underscores.
        if booster.feature_name() != [column.replace(" ", "_") for column in spec.columns]:
            # Files of two different models: scoring would silently feed the wrong columns.
            raise ValueError(
                f"inconsistent bundle: the booster expects {booster.num_feature()} feature(s) "
                f"({', '.join(booster.feature_name()[:3])}, ...) but the spec lists {len(spec.columns)} "
                f"({', '.join(list(spec.columns)[:3])}, ...)"
            )
        return cls(booster, spec, calibrator, metadata)

    def uses_engagement(self) -> bool:
        """Whether the trees split on any engagement feature (a model of an export with
        activities); without activities to read such a model scores every lead as never engaged."""
        splits = self.booster.feature_importance("split")
        groups = [self.spec.groups.get(c) for c in self.spec.columns]
        return any(n > 0 and g == "engagement" for g, n in zip(groups, splits, strict=True))

    def margin(self, features: pd.DataFrame) -> np.ndarray:
        """Raw log-odds of the booster for feature rows (cast to the spec first)."""
        return self.booster.predict(to_model_frame(features, self.spec), raw_score=True)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.calibrator.apply(self.margin(features))


class LeadScorerModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: feature rows (text and numbers) in, probability and score out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.scorer = LeadScorer.from_files(context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        # Every input is optional in the signature (a feature left out is unknown), so input
        # with none of the features (raw lead rows, other headers) is refused here: it would
        # give every row the same score.
        expected = list(self.scorer.spec.columns)
        if not set(expected) & {str(c) for c in model_input.columns}:
            shown = ", ".join(expected[:5]) + (f" and {len(expected) - 5} more" if len(expected) > 5 else "")
            raise ValueError(
                f"none of the model's feature columns are in the input ({shown}); it takes built "
                "features, not lead rows: use `leadscore score` or the service for leads and activities"
            )
        given = {str(c) for c in model_input.columns}
        engagement = [c for c in expected if self.scorer.spec.groups.get(c) == "engagement"]
        if self.scorer.spec.kind == "crm" and engagement and not given & set(engagement):
            # A leads.csv shares the attributes' names with the features (MLflow drops its other
            # columns before this is called): every lead would be scored as if it had done nothing.
            raise ValueError(
                "none of the model's engagement features is in the input "
                f"({', '.join(engagement[:3])}, ...): lead rows are not built features; use `leadscore score` or the "
                "service for leads and activities (to score profiles alone, give those columns as missing)"
            )
        missing = [c for c in expected if c not in given]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            warnings.warn(
                f"{len(missing)} of the model's {len(expected)} feature columns are not in the input and are read as "
                f"unknown, which changes the scores: {shown}",
                stacklevel=2,
            )
        probability = self.scorer.predict_proba(model_input)
        return pd.DataFrame({"probability": probability, "score": score_from_probability(probability)})


def write_bundle_files(
    directory: Path, booster: lgb.Booster, spec: FeatureSpec, calibrator: Calibrator, metadata: dict
) -> dict[str, str]:
    """Write the bundle's files; returns the artifact map for `mlflow.pyfunc.log_model`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {key: directory / name for key, name in ARTIFACTS.items()}
    booster.save_model(str(paths["booster"]))
    paths["spec"].write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    paths["calibrator"].write_text(json.dumps(calibrator.to_dict()), encoding="utf-8")
    checksums = {key: _sha256(paths[key]) for key in CHECKED_FILES}
    paths["metadata"].write_text(
        json.dumps(
            {**metadata, "bundle_format": BUNDLE_FORMAT if spec.missing_as else 2, "file_sha256": checksums},
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    return {key: str(path) for key, path in paths.items()}


CHECKED_FILES = ("booster", "spec", "calibrator")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_bundle_files(files: dict[str, str | Path], metadata: dict[str, Any]) -> None:
    """Refuse damaged files before a parser sees them: LightGBM's model reader can take a
    truncated file down with the whole process, not with an exception.

    Raises:
        ValueError: a bundle of a newer format than this release reads, a checksum differs
            from the one written at training time, or (bundles from before checksums) the
            booster text ends before its last tree.
    """
    written = metadata.get("bundle_format", 1)
    if not isinstance(written, int) or isinstance(written, bool) or written < 1:
        raise ValueError(f"damaged bundle: its metadata's bundle_format is {written!r}, not a format number")
    if written > BUNDLE_FORMAT:
        raise ValueError(
            f"bundle format {written} is {NEWER_BUNDLE} (up to {BUNDLE_FORMAT}): the model was registered by a "
            "newer release; update this checkout (git pull, then make install) before it scores with this model"
        )
    checksums = metadata.get("file_sha256") or {}
    for key, expected in checksums.items():
        if key in files and _sha256(Path(files[key])) != expected:
            raise ValueError(f"damaged bundle: {Path(files[key]).name} differs from the file written at training time")
    if not checksums and b"end of trees" not in Path(files["booster"]).read_bytes():
        raise ValueError("damaged bundle: the booster file ends before its last tree")
