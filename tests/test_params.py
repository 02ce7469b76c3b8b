"""An edit to params.yaml that would change what the product does without a word, or fail far
from the key minutes into a run, is refused when the file is read, naming the key."""

from __future__ import annotations

import pytest

from features.params import PROJECT_ROOT, ParamsError, load_params

REFUSED = [
    # A negative window counted the activities after the moment: a leak, trained on silently.
    ({"features.windows_days": [-7, 30, 90]}, r"features\.windows_days: \[-7, 30, 90\]: days back from the moment"),
    ({"features.windows_days": [7, 7, 90]}, r"none twice"),
    ({"features.engagement_weights.demo_requests": 8.0}, r"'demo_requests': not an activity type"),
    ({"gates.min_test_roc_auc": 60}, r"gates\.min_test_roc_auc"),  # a percent: no model could pass
    ({"gates.max_test_ece": 5}, r"gates\.max_test_ece"),
    ({"recalibration.conversion_shift_threshold": 2}, r"conversion_shift_threshold"),
    ({"service.workers": 0}, r"service\.workers"),
    ({"service.reload_seconds": 0.01}, r"service\.reload_seconds"),
    ({"service.allowed_hosts": ["http://proxy.local"]}, r"'http://proxy\.local': a host name \(proxy"),
    ({"service.allowed_hosts": ["*"]}, r"no scheme, path or wildcard"),
    ({"calibration.methods": []}, r"calibration\.methods"),
    ({"calibration.cv_folds": 500}, r"calibration\.cv_folds"),
    ({"mlflow.model_name": "team/lead scorer"}, r"mlflow\.model_name"),
    ({"mlflow.model_name": "  "}, r"mlflow\.model_name"),
    ({"mlflow.model_name": "Bob's scorer"}, r"mlflow\.model_name"),
    ({"mlflow.model_name": ".."}, r"mlflow\.model_name"),
    ({"tuning.fixed": {"is_unbalance": "yes"}}, r"tuning\.fixed: is_unbalance: write true or false"),
    ({"mlflow.experiment": ""}, r"mlflow\.experiment"),
    ({"data.embedded_start": "2024-13-45"}, r"data\.embedded_start"),
    ({"data.embedded_leads": 50_000_000}, r"data\.embedded_leads"),
    ({"recalibration.grade_shares": {}}, r"recalibration\.grade_shares"),
    ({"recalibration.grade_shares": {"A": 0.05, "B": 0.15, "C": 0.3}}, r"together 1"),
    # LightGBM ignored a misspelt name, the search beat a fixed one, and num_leaves 1 failed a trial.
    ({"tuning.search_space.num_leafs": [3, 4]}, r"tuning\.search_space: 'num_leafs' is no LightGBM setting"),
    ({"tuning.fixed": {"maxbin": 63}}, r"tuning\.fixed: 'maxbin' is no LightGBM setting"),
    ({"tuning.fixed": {"num_leaves": 31}}, r"tuning\.fixed: num_leaves is searched too"),
    ({"tuning.fixed": {"objective": "regression"}}, r"tuning\.fixed: objective is the product's to set"),
    ({"tuning.search_space.num_leaves": [1, 4]}, r"tuning\.search_space\.num_leaves: \[1, 4\] goes outside"),
    ({"tuning.search_space.feature_fraction": [0.5, 1.5]}, r"feature_fraction: \[0\.5, 1\.5\] goes outside"),
]


@pytest.mark.parametrize(("edit", "said"), REFUSED, ids=[next(iter(edit)) for edit, _ in REFUSED])
def test_an_edit_that_would_act_otherwise_than_meant_is_refused_by_key(edit, said):
    with pytest.raises(ParamsError, match=said):
        load_params(**edit)


def test_a_deleted_weight_is_refused_rather_than_weighed_nothing(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text()
    edited = tmp_path / "params.yaml"
    edited.write_text(text.replace("    demo_request: 8.0\n", ""))
    with pytest.raises(ParamsError, match=r"features\.engagement_weights: no weight for demo_request"):
        load_params(edited)


def test_yaml_words_are_read_as_written_not_as_yaml_1_1_guessed_them(tmp_path):
    """`yes` was 1 where a number goes (min_icp_match: yes disqualified 612 leads), `060` was
    octal 48, `1:30` was 90 (base 60), `NO` (Norway) false, a date not text."""
    text = (PROJECT_ROOT / "params.yaml").read_text()

    def edited(old: str, new: str):
        assert old in text
        path = tmp_path / "params.yaml"
        path.write_text(text.replace(old, new, 1))
        return path

    with pytest.raises(ParamsError, match=r"criteria\.disqualify\.min_icp_match"):
        load_params(edited("min_icp_match: 0.2", "min_icp_match: yes"))
    with pytest.raises(ParamsError, match=r"criteria\.hand_raise_days"):
        load_params(edited("hand_raise_days: 30", "hand_raise_days: 1:30"))
    assert load_params(edited("valid_days: 90", "valid_days: 060")).split.valid_days == 60  # not 48
    assert load_params(edited('embedded_start: "2024-11-01"', "embedded_start: 2024-11-01")).data.embedded_start == (
        "2024-11-01"
    )
    assert "NO" in load_params(edited("countries: [", "countries: [NO, ")).features.icp.countries
    assert load_params(edited("max_body_bytes: 20000000", "max_body_bytes: 2e7")).service.max_body_bytes == 20_000_000


def test_a_params_file_not_in_utf8_is_named_not_a_traceback(tmp_path):
    latin1 = tmp_path / "params.yaml"
    text = (PROJECT_ROOT / "params.yaml").read_text()
    latin1.write_bytes(text.replace('nurture: "Keep', 'nurture: "Relance à J+3. Keep', 1).encode("latin-1"))
    with pytest.raises(ParamsError, match=r"cannot read params file .*params\.yaml: not UTF-8 text \(byte 0xe0"):
        load_params(latin1)


def test_what_worked_before_still_loads(tmp_path):
    """The stricter checks refuse what acted otherwise than meant, not what a user plausibly has."""
    assert load_params(**{"service.reload_seconds": 0}).service.reload_seconds == 0  # no polling, as documented
    hosts = ("proxy.local:8080", "proxy.local.", "my_proxy", "[::1]")
    assert load_params(**{"service.allowed_hosts": list(hosts)}).service.allowed_hosts == hosts
    assert load_params(**{"mlflow.model_name": "Lead Scorer"}).mlflow.model_name == "Lead Scorer"
    # Grades the recalibration's shares do not name load (scoring and serving need no shares); the
    # recalibration refuses to rename them (tests/test_recalibration.py).
    assert list(load_params(**{"grades": {"A": 60, "B": 30, "C": 0}}).grades) == ["A", "B", "C"]
    text = (PROJECT_ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  trials: 60", "  trials: 60.", 1))
    assert load_params(path).tuning.trials == 60


def test_a_registered_models_stored_settings_are_read_as_written():
    """A model trained before a check (a misspelt weight, which trained) still loads and scores:
    the checks are a params file's, not a stored model's."""
    from features.params import FeatureParams

    stored = load_params().features.model_dump(mode="json")
    stored["engagement_weights"] = {**stored["engagement_weights"], "demo_requests": 8.0}
    stored["windows_days"] = [7, 7]
    assert FeatureParams.model_validate(stored).engagement_weights["demo_requests"] == 8.0


def test_a_recalibration_refuses_shares_that_would_rename_the_grades():
    """`grade_shares` {Hot, Warm, Cold} beside grades A-D: a promotion renamed the grades a CRM gets."""
    from training.recalibrate import RecalibrationError, recalibrate

    params = load_params(**{"grades": {"A": 60, "B": 30, "C": 0}})
    with pytest.raises(RecalibrationError, match=r"grade_shares names A, B, C, D, the grades are A, B, C"):
        recalibrate(params, model_name="never-trained")


def test_two_spellings_of_one_outcome_status_with_two_meanings_are_refused():
    """`Junk lead: lost` and `junk-lead: converted` are one status as outcomes are read: the last won."""
    with pytest.raises(ParamsError, match=r"'Junk lead' and 'junk-lead' read as one status, given converted and lost"):
        load_params(**{"data.outcome_statuses": {"Junk lead": "lost", "junk-lead": "converted"}})
    assert load_params(**{"data.outcome_statuses": {"Junk lead": "lost", "junk-lead": "lost"}})


def test_a_profile_entry_no_lead_matches_is_said_in_training(small_crm_dir):
    """`industries: [Sofware, ...]` trained with exit 0 and said nothing, though no lead matched it."""
    from training.pipeline import prepare_crm

    params = load_params(**{"features.icp.industries": ["Sofware", "Retail"]})
    notes = prepare_crm(small_crm_dir, params).quarantine.notes
    assert "features.icp.industries: 'Sofware' matches no lead's industry in this export (spelt otherwise?)" in notes
    assert not [n for n in prepare_crm(small_crm_dir, load_params()).quarantine.notes if "matches no lead" in n]
