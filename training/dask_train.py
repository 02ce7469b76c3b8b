"""Training on Dask (`leadscore train --engine dask`), for exports whose activity table does
not fit in one process.

Leads and outcomes (one row per lead) are read and cleaned by the client, so examples, the
time split and the lead-level quarantine are those of the single-process path. Activities
stay partitioned on the cluster: they are co-partitioned by lead with the examples and each
partition's features are built by the single-process code (`build_crm_features`). Optuna
tunes on a sample of the training examples; LightGBM's own Dask estimator
(`lightgbm.dask.DaskLGBMClassifier`) fits the final model on all of them with the tuned
parameters. Calibration and evaluation use every validation and test example.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import getitem
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build import build_crm_features, crm_feature_groups
from features.clean import blank_to_missing, order_from_votes, parse_timestamps, snake_case
from features.fit import learn_tech_spellings, learn_tech_vocabulary, unmatched_icp_entries
from features.ingest import (
    DataError,
    Quarantine,
    activities_as_of,
    after_today,
    as_of_note,
    before_creation,
    before_creation_note,
    booked_ahead_note,
    clean_activities,
    clean_leads,
    clean_outcomes,
    created_days,
    drop_unknown_outcomes,
    export_date_votes,
    export_folder,
    hash_files,
    history_end,
    lead_columns_with_values,
    lead_number_formats,
    leads_as_of,
    no_usable_activity,
    note_column_names,
    note_lead_columns,
    read_csv_table,
    refuse_cut_short,
    refuse_mixed_date_orders,
)
from features.params import Params
from features.schema import (
    ACTIVITY_REQUIRED,
    LEAD_REQUIRED,
    OUTCOME_REQUIRED,
    TABLE_FILES,
    TRUTH_FILE,
    contract_clash,
    contract_names,
)
from features.spec import FeatureSpec, to_model_frame
from serving.dask_batch import bucket_by_lead, csv_errors, date_votes_on_dask, prepare_workers, read_frame
from training.examples import build_examples
from training.pipeline import Dataset
from training.split import split_by_time
from training.train import model_params

EXAMPLE, LABEL, PART = "_example", "_label", "_part"
OTHER_TYPES = re.compile(r"^activities: (\d+) row\(s\) of types outside the contract")


@dataclass
class DaskDataset:
    """A training set whose full feature matrix lives on the cluster."""

    tuning: Dataset  # the sampled training examples plus every validation and test example
    features: Any  # dask dataframe: features of every kept example, with EXAMPLE, LABEL, PART
    engine: dict[str, Any]  # what ran where, for the report and the metrics file


def _scan(frame: pd.DataFrame, created: pd.Series, day_first: bool | None) -> pd.DataFrame:
    """Rows of one partition, the newest time of its activities that `clean_activities` keeps
    (of kept leads, by `created_days`; not after today, with a type), as `load_crm` takes the
    export's end, and how many of those are dated before their lead was created (repeats, set
    aside later, included)."""
    occurred, _ = parse_timestamps(frame["occurred_at"], day_first)
    lead_id = blank_to_missing(frame["lead_id"], ())
    usable = (
        lead_id.isin(created.index).to_numpy()
        & ~after_today(occurred).to_numpy()
        & snake_case(frame["activity_type"]).notna().to_numpy()
    )
    early = before_creation(pd.DataFrame({"lead_id": lead_id, "occurred_at": occurred})[usable], created)
    return pd.DataFrame({"rows": [len(frame)], "last": [occurred[usable].max()], "early": [int(early.sum())]})


def _number_rows(frame: pd.DataFrame, offsets: list[int], partition_info: dict | None = None) -> pd.DataFrame:
    """The 1-based line number of each activity in its file, as `read_csv_table` gives it."""
    start = offsets[partition_info["number"]] if partition_info else 0
    return frame.assign(_row=np.arange(start + 1, start + 1 + len(frame)))


def _partition_features(
    rows: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    params: Any,
    vocabulary: list[str],
    left_out: list[str],
    set_aside: list[str],
    day_first: bool | None,
    as_of: pd.Timestamp | None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], tuple[int, int]]:
    """Features of one partition's examples, its activity quarantine, cleaning notes, and how
    many clean activities it holds and how many of them `as_of` leaves out.

    `rows` holds every clean lead of the partition (leads without a kept example have
    EXAMPLE -1), so an activity is "unknown" exactly when it is in the single-process path.
    With `as_of`, the activities are those of `as_of_view`: of leads created before it, before it.
    """
    quarantine = Quarantine()
    acts = activities.drop(columns="_bucket").reset_index(drop=True)
    known = pd.Index(rows["lead_id"].unique())
    clean = clean_activities(acts, known, quarantine, pd.Index(left_out), history=True, day_first=day_first,
                             set_aside_leads=set(set_aside))  # fmt: skip
    cleaned = len(clean)
    if as_of is not None:
        clean = activities_as_of(clean, rows.loc[rows["created_at"] < as_of, "lead_id"], as_of)
    examples = rows[rows[EXAMPLE] >= 0].drop(columns="_bucket").sort_values(EXAMPLE).reset_index(drop=True)
    leads = examples.drop(columns=[EXAMPLE, LABEL, PART, "as_of"])
    features = build_crm_features(leads, clean.drop(columns="_row"), examples["as_of"], params, vocabulary)
    features.insert(0, EXAMPLE, examples[EXAMPLE].to_numpy())
    features[LABEL] = examples[LABEL].to_numpy()
    features[PART] = examples[PART].to_numpy()
    return features, quarantine.frame(), quarantine.notes, (cleaned, cleaned - len(clean))


def _merge_notes(notes: list[str]) -> list[str]:
    """One note for the other-type activity counts of all partitions; others once each."""
    total = sum(int(m.group(1)) for n in notes if (m := OTHER_TYPES.match(n)))
    rest = list(dict.fromkeys(n for n in notes if not OTHER_TYPES.match(n)))
    merged = [f"activities: {total} row(s) of types outside the contract counted as 'other'"] if total else []
    return merged + rest


def prepare_crm_on_dask(
    client,
    directory: Path,
    params: Params,
    *,
    tuning_rows: int,
    partitions: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    as_of: pd.Timestamp | None = None,
) -> DaskDataset:
    """Examples and point-in-time features of a CRM export, built on the cluster.

    Args:
        as_of: see the export as it was at this moment, as `prepare_crm(as_of=)` does.
        tuning_rows: at most this many training examples (a uniform sample) go to Optuna,
            the leakage audit and the baselines; the final fit sees all of them.
        partitions: buckets the examples and activities are co-partitioned into (default:
            the activity file's partitions, at least two per worker).
        on_progress: called with (partitions done, partitions) while features are built.
    """
    import dask
    import dask.dataframe as dd
    from distributed import as_completed

    started = time.perf_counter()
    directory = export_folder(directory)
    paths = {name: directory / file for name, file in TABLE_FILES.items()}
    quarantine = Quarantine()
    raw_leads = read_csv_table(paths["leads"], LEAD_REQUIRED, table="leads", quarantine=quarantine)
    raw_outcomes = read_csv_table(paths["outcomes"], OUTCOME_REQUIRED, table="outcomes", quarantine=quarantine)
    if not paths["activities"].is_file():
        raise DataError(f"{paths['activities']}: file not found")
    refuse_cut_short(paths["activities"])  # read in blocks by Dask: its rows are not counted here
    activities = read_frame(paths["activities"])
    if clash := contract_clash(activities.columns, "activities"):
        raise DataError(f"{paths['activities'].name}: {clash}")
    renames, unused = contract_names(activities.columns, "activities")
    activities = activities.rename(columns=renames)
    note_column_names(quarantine, paths["activities"].name, renames, unused)
    missing = [c for c in ACTIVITY_REQUIRED if c not in activities.columns]
    if missing:
        raise DataError(f"{paths['activities'].name}: missing required column(s) {', '.join(missing)}")
    # The order of numeric dates across the three tables, as the local engine decides it (a
    # pass over activities.csv on the cluster: an ISO leads.csv says nothing of its order).
    with csv_errors({paths["activities"]: activities}):
        acts_votes = date_votes_on_dask(activities)
    refuse_mixed_date_orders(
        {paths["leads"].name: raw_leads, paths["outcomes"].name: raw_outcomes}, {paths["activities"].name: acts_votes}
    )
    votes = export_date_votes(raw_leads, raw_outcomes)
    day_first = order_from_votes((votes[0] + acts_votes[0], votes[1] + acts_votes[1]))
    lead_columns = lead_columns_with_values(raw_leads, params.flat.missing_tokens)
    note_lead_columns(quarantine, paths["leads"].name, lead_columns)
    formats = lead_number_formats(raw_leads, params.flat.missing_tokens)
    leads = clean_leads(
        raw_leads, quarantine, params.flat.missing_tokens, history=True, day_first=day_first,
        formats=formats,
    )  # fmt: skip
    outcomes = clean_outcomes(
        raw_outcomes, leads, quarantine, day_first=day_first, statuses=params.data.outcome_statuses
    )
    leads, left_out = drop_unknown_outcomes(leads, outcomes, quarantine)
    leads = leads.drop(columns="_row")
    for note in unmatched_icp_entries(leads, params.features.icp):
        quarantine.note(note)

    meta = {"rows": "int64", "last": "datetime64[ns]", "early": "int64"}
    with csv_errors({paths["activities"]: activities}):
        scan = activities.map_partitions(_scan, created_days(leads), day_first, meta=meta).compute()
    if scan["last"].isna().all():  # as `load_crm` says it
        quarantine.note(no_usable_activity(int(scan["rows"].sum())))
    if early := before_creation_note(int(scan["early"].sum())):
        quarantine.note(early)
    offsets = np.concatenate([[0], np.cumsum(scan["rows"].to_numpy())]).tolist()
    activities = activities.map_partitions(_number_rows, offsets)
    export_end = history_end(leads, outcomes)
    if pd.notna(scan["last"].max()) and scan["last"].max() >= export_end:
        quarantine.note(booked_ahead_note(export_end, scan["last"].max()))
    # Activities of later leads stay on the cluster with their leads (else they would read as
    # of unknown leads); each partition leaves them out after cleaning, as `as_of_view` does.
    seen_leads, seen_outcomes, reopened = leads, outcomes, 0
    if as_of is not None:
        seen_leads, seen_outcomes, reopened = leads_as_of(leads, outcomes, as_of)
        export_end = min(as_of, export_end)

    examples = build_examples(seen_leads, seen_outcomes, export_end, params.features)
    if examples.empty:
        raise DataError(f"{directory}: no training examples: the data spans less than one snapshot plus the horizon")
    split = split_by_time(examples, params.split, params.features.horizon_days)
    train_leads = seen_leads[seen_leads["lead_id"].isin(examples.loc[split.assignment == "train", "lead_id"])]
    vocabulary = learn_tech_vocabulary(train_leads, params.features.tech_stack_top_k)
    kept = examples.assign(**{EXAMPLE: np.arange(len(examples)), PART: split.assignment.to_numpy()})
    kept = kept[kept[PART] != ""].rename(columns={"label": LABEL})
    rows = leads.merge(kept, on="lead_id", how="left")
    rows[EXAMPLE] = rows[EXAMPLE].fillna(-1).astype("int64")
    rows[LABEL] = rows[LABEL].fillna(0).astype("int64")
    rows[PART] = rows[PART].fillna("")

    prepare_workers(client)
    workers = len(client.scheduler_info()["workers"])
    buckets = partitions or max(activities.npartitions, 2 * workers)
    lead_rows = dd.from_pandas(rows, npartitions=max(1, min(buckets, len(rows) // 1000 or 1)))
    lead_rows = lead_rows.map_partitions(bucket_by_lead, buckets).shuffle(on="_bucket", npartitions=buckets)
    activities = activities.map_partitions(bucket_by_lead, buckets).shuffle(on="_bucket", npartitions=buckets)
    options = {
        "params": params.features,
        "vocabulary": list(vocabulary),
        "left_out": left_out.tolist(),
        "set_aside": sorted(quarantine.lead_ids_set_aside()),  # their activities say so, as on one process
        "day_first": day_first,
        "as_of": as_of,
    }
    sample_rows = rows[rows[EXAMPLE] >= 0].head(20).assign(_bucket=0)
    meta, _, _, _ = _partition_features(sample_rows, activities._meta.assign(_row=0), **options)
    build = dask.delayed(_partition_features, pure=True)
    parts = [build(r, a, **options) for r, a in zip(lead_rows.to_delayed(), activities.to_delayed(), strict=True)]
    running = client.compute(parts)  # futures of (features, quarantine, notes) per partition
    for done, _ in enumerate(as_completed(running), start=1):
        if on_progress:
            on_progress(done, len(running))
    features = dd.from_delayed([client.submit(getitem, f, 0) for f in running], meta=meta.iloc[:0], verify_meta=False)
    quarantine.rows.extend(client.gather([client.submit(getitem, f, 1) for f in running]))
    notes = client.gather([client.submit(getitem, f, 2) for f in running])
    for note in _merge_notes([n for group in notes for n in group]):
        quarantine.note(note)
    cleaned, cut = np.sum(client.gather([client.submit(getitem, f, 3) for f in running]), axis=0)
    if as_of is not None:
        quarantine.note(as_of_note(as_of, len(leads) - len(seen_leads), int(cut), reopened))
    del running
    built = time.perf_counter()

    assignment = split.assignment.to_numpy()
    train_ids = np.flatnonzero(assignment == "train")
    rng = np.random.default_rng(params.split.seed)
    sampled = np.sort(rng.choice(train_ids, size=min(tuning_rows, len(train_ids)), replace=False))
    wanted = np.sort(np.concatenate([sampled, np.flatnonzero(np.isin(assignment, ["valid", "test"]))]))
    local = features[features[EXAMPLE].isin(wanted.tolist())].compute().sort_values(EXAMPLE)
    ids = local[EXAMPLE].to_numpy()
    truth = None
    if (directory / TRUTH_FILE).is_file():
        table = pd.read_csv(directory / TRUTH_FILE, parse_dates=["as_of"])
        truth = examples.iloc[ids][["lead_id", "as_of"]].merge(table, on=["lead_id", "as_of"], how="left")
        truth = truth["probability"]
    sample_note = (
        f"tuned on {len(sampled):,} of {len(train_ids):,} training examples (a uniform sample)"
        if len(sampled) < len(train_ids)
        else f"tuned on all {len(train_ids):,} training examples (fewer than --tuning-rows)"
    )
    tuning_split = type(split)(
        assignment=pd.Series(assignment[ids]),
        description=f"{split.description}; {sample_note}",
        windows=split.windows,
        left_out=split.left_out,
        by_time=True,
    )
    feature_frame = local.drop(columns=[EXAMPLE, LABEL, PART]).reset_index(drop=True)
    run_features = params.features.model_dump(mode="json")

    def features_for(feature_settings: dict[str, Any], technologies: list[str], chosen: np.ndarray) -> None:
        """The activities live on the cluster: other feature settings are not rebuilt here."""
        if feature_settings != run_features or list(technologies) != list(vocabulary):
            raise NotImplementedError("the Dask engine does not rebuild features with another model's settings")

    tuning = Dataset(
        kind="crm",
        features=feature_frame,
        label=pd.Series(local[LABEL].to_numpy(), name="label"),
        keys=examples.iloc[ids][["lead_id", "as_of"]].reset_index(drop=True),
        split=tuning_split,
        groups=crm_feature_groups(list(feature_frame.columns)),
        settings={
            "tech_vocabulary": vocabulary,
            "tech_spellings": learn_tech_spellings(train_leads, vocabulary),
            "features": run_features,
            "missing_tokens": list(params.flat.missing_tokens),
            "day_first": day_first,
            "lead_columns": list(lead_columns),
            "number_formats": {name: f.as_json() for name, f in formats.items()},
            "sep": raw_leads.attrs.get("sep"),
        },
        features_for=features_for,
        quarantine=quarantine,
        data_hash=hash_files(paths.values()),
        source=str(directory) if as_of is None else f"{directory} as of {as_of:%Y-%m-%d}",  # as `as_of_view` says
        truth=truth,
        timings={"load_seconds": 0.0, "features_seconds": built - started},
        export_end=export_end,
        has_activities=bool(cleaned > cut),
    )
    engine = {
        "engine": "dask",
        "workers": workers,
        "partitions": buckets,
        "dashboard": client.dashboard_link,
        "examples": len(assignment),  # every example, those the split leaves out too (as local training counts)
        "train_examples": len(train_ids),
        "tuning_examples": len(sampled),
        "tuning_note": sample_note,
    }
    return DaskDataset(tuning=tuning, features=features, engine=engine)


def quiet_lightgbm(dask_worker=None) -> None:
    """Send LightGBM's log lines to a logger that shows warnings only. Its distributed fit logs
    the network set-up ("Trying to bind port ...") on every worker and the client despite
    `verbose: -1`; a failed set-up still raises. Takes `dask_worker` to run as a worker hook."""
    import logging

    import lightgbm

    logger = logging.getLogger("lightgbm")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _NJobsIgnored) for f in logger.filters):
        logger.addFilter(_NJobsIgnored())
    lightgbm.register_logger(logger)


class _NJobsIgnored:
    """Drops "Parameter n_jobs will be ignored.", which the Dask estimator says on every fit
    (its scikit-learn parameters always hold n_jobs; each worker uses its own threads, as meant)."""

    def filter(self, record) -> bool:
        return "n_jobs will be ignored" not in record.getMessage()


def dask_final_fit(client, data: DaskDataset, seed: int):
    """A `final_fit` for `train_and_register`: LightGBM's Dask estimator on every training
    (and, when asked, validation) example, returning the fitted booster."""
    from lightgbm.dask import DaskLGBMClassifier

    def fit(hyperparams: dict[str, Any], n_estimators: int, with_valid: bool, spec: FeatureSpec):
        quiet_lightgbm()
        client.run(quiet_lightgbm)
        chosen = data.features[data.features[PART].isin(["train", "valid"] if with_valid else ["train"])]
        sizes = chosen.map_partitions(len).compute().to_numpy()
        # LightGBM's Dask estimator refuses an empty part: keep the partitions holding examples.
        chosen = chosen.partitions[np.flatnonzero(sizes).tolist()]
        x = chosen.map_partitions(to_model_frame, spec, meta=to_model_frame(data.tuning.features.head(0), spec))
        y = chosen[LABEL]
        settings = model_params(hyperparams, seed=seed)
        settings.pop("n_jobs", None)  # one LightGBM process per worker, with the worker's threads
        settings["random_state"] = settings.pop("seed")
        model = DaskLGBMClassifier(client=client, n_estimators=n_estimators, **settings)
        model.fit(x, y)
        data.engine["final_fit_examples"] = int(sizes.sum())
        return model.to_local().booster_

    return fit
