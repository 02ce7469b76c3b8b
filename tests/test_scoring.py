"""Scoring: large batches are scored in pipelined blocks (the numbers must not depend on it); a
model chosen by version is named clearly."""

from __future__ import annotations

import pandas as pd
import pytest

import serving.scoring as scoring
from features.build import build_crm_features
from features.ingest import load_crm

AS_OF = pd.Timestamp("2025-12-20")


def test_blocked_scoring_equals_one_pass(champion, small_crm_dir, monkeypatch):
    crm = load_crm(small_crm_dir)
    leads = crm.leads[crm.leads["created_at"] < AS_OF].reset_index(drop=True)
    features = build_crm_features(
        leads, crm.activities, AS_OF, champion.feature_params, champion.scorer.spec.settings["tech_vocabulary"]
    )
    context = leads[["email"]].assign(sales_accepted=(leads.index % 9 == 0).astype(float))
    moments = pd.Series([AS_OF] * len(leads))
    whole = scoring.score_features(champion, features, context, moments)
    monkeypatch.setattr(scoring, "PIPELINE_ROWS", 300)  # several blocks, the last one short
    assert len(leads) % 300 and len(leads) > 900
    blocked = scoring.score_features(champion, features, context, moments)
    pd.testing.assert_frame_equal(whole, blocked)
    assert blocked["reasons"].map(len).gt(0).all()


def test_an_empty_model_version_is_named_before_the_registry_is_asked():
    from serving.scoring import ModelNotReady, load_chosen

    with pytest.raises(ModelNotReady, match="--model-version is empty"):
        load_chosen("lead-scorer", " @ ")
