"""Scoring snapshots: what each batch scoring of the pipeline produced, kept so the pages can
rank leads, open one, and say what changed since the scoring before.

A snapshot is a folder under the scores directory (`LEADSCORE_SCORES_DIR`, default
`models/scores/`) named by when it was written, holding `scores.parquet` (the batch
columns plus owner, name and company), the leads' and activities' rows as the export had
them (`leads.parquet`, `activities.parquet`, text cells) and `meta.json` (as of, model,
source).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.tracking import MODELS_DIR, project_path

SCORES_DIR_ENV = "LEADSCORE_SCORES_DIR"
KEEP = 12  # snapshots kept; older ones are removed when a new one is written
DISPLAY_COLUMNS = ("owner", "first_name", "last_name", "company")


def scores_dir() -> Path:
    chosen = os.environ.get(SCORES_DIR_ENV)
    return project_path(chosen) if chosen else MODELS_DIR / "scores"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    scores: pd.DataFrame
    leads: pd.DataFrame
    activities: pd.DataFrame
    meta: dict

    @property
    def as_of(self) -> pd.Timestamp:
        return pd.Timestamp(self.meta["as_of"])

    def lead(self, lead_id: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The lead's export row and its activity rows, or None when it was not scored."""
        rows = self.leads[self.leads["lead_id"].str.strip() == lead_id]
        if rows.empty:
            return None
        acts = self.activities[self.activities["lead_id"].str.strip() == lead_id]
        return rows.head(1).reset_index(drop=True), acts.reset_index(drop=True)


def write_snapshot(
    scored: pd.DataFrame,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    meta: dict,
    directory: Path | None = None,
) -> Path:
    """Write a snapshot of a batch scoring (written to a temporary folder, then renamed, so a
    reader never sees half of one). Returns its folder."""
    directory = directory or scores_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
    partial = directory / f".{stamp}.partial"
    partial.mkdir()
    try:
        _write_tables(partial, scored, leads, activities, {**meta, "written_at": stamp})
        final = directory / stamp
        partial.rename(final)
    except BaseException:  # a full disk: not a half left behind on it at every try
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # Counted per model: a flat CSV model's scorings must not push the service model's out.
    for old in list_snapshots(directory, meta.get("model_name", ""))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    # Halves left by runs killed while writing (a few MB each, never read); one a run is writing
    # now was touched minutes ago, far within ABANDONED_AFTER_SECONDS.
    for left in directory.glob(".*.partial"):
        with contextlib.suppress(OSError):
            if time.time() - left.stat().st_mtime > ABANDONED_AFTER_SECONDS:
                shutil.rmtree(left, ignore_errors=True)
    return final


ABANDONED_AFTER_SECONDS = 6 * 3600


def _write_tables(folder: Path, scored: pd.DataFrame, leads: pd.DataFrame, activities: pd.DataFrame,
                  meta: dict) -> None:  # fmt: skip
    # Ids as scoring reads them (spaces around them aside) in every table of the snapshot: the
    # pages look a lead up by the id in its link.
    ids = leads["lead_id"].astype(str).str.strip()
    extra = leads.assign(lead_id=ids).drop_duplicates("lead_id").set_index("lead_id")
    scores = scored.assign(lead_id=scored["lead_id"].astype(str).str.strip())
    for column in DISPLAY_COLUMNS:
        scores[column] = scores["lead_id"].map(extra[column]) if column in extra else ""
    scores.to_parquet(folder / "scores.parquet", index=False)
    scored_ids = set(scores["lead_id"])
    leads.assign(lead_id=ids)[ids.isin(scored_ids)].astype(str).to_parquet(folder / "leads.parquet", index=False)
    if len(activities):
        act_ids = activities["lead_id"].astype(str).str.strip()
        activities = activities.assign(lead_id=act_ids)[act_ids.isin(scored_ids)]
    activities.astype(str).to_parquet(folder / "activities.parquet", index=False)
    (folder / "meta.json").write_text(json.dumps(meta, default=str, indent=2))


def list_snapshots(directory: Path | None = None, model_name: str | None = None) -> list[Path]:
    """Complete snapshots, oldest first; with `model_name`, only that model's scorings."""
    directory = directory or scores_dir()
    if not directory.is_dir():
        return []
    found = sorted(
        p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file()
    )
    return found if model_name is None else [p for p in found if _model_of(p) == model_name]


def latest_count(model_name: str, directory: Path | None = None) -> int | None:
    """How many leads the model's latest kept scoring holds (read from the file's footer, not
    the file), or None when it has none."""
    import pyarrow.parquet as pq

    found = list_snapshots(directory, model_name)
    try:
        return pq.ParquetFile(found[-1] / "scores.parquet").metadata.num_rows if found else None
    except (OSError, ValueError):  # removed meanwhile, or not readable: nothing to compare with
        return None


def latest_as_of(model_name: str, directory: Path | None = None) -> pd.Timestamp | None:
    """The moment the model's latest kept scoring was scored as of (from its meta.json; UTC, without
    a zone, as scoring's moments are), or None when it has none that says. At most the moment it
    was written: one kept as of a future day (`--snapshot`) must not hold every later run off."""
    found = list_snapshots(directory, model_name)
    try:
        meta = json.loads((found[-1] / "meta.json").read_text()) if found else None
        moment = None if meta is None else pd.Timestamp(meta["as_of"])
        written = pd.to_datetime(meta.get("written_at"), format="%Y%m%dT%H%M%S%fZ", errors="coerce") if meta else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # removed meanwhile, or not readable
        return None
    if moment is None or pd.isna(moment):
        return None
    moment = moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo else moment
    return moment if written is None or pd.isna(written) else min(moment, written)


def _model_of(path: Path) -> str | None:
    try:
        return json.loads((path / "meta.json").read_text()).get("model_name", "")
    except (OSError, ValueError, AttributeError):
        return None  # removed meanwhile or not a snapshot's: belongs to no model


def load_snapshot(path: Path) -> Snapshot:
    """The snapshot in `path`. A snapshot never changes once written (its folder appears whole,
    by a rename), so the last two read are kept: the pages read the latest two on every request,
    and reading 11,000 leads' scores and activities took about half a second each time. Treat
    the frames as read-only."""
    return _load_snapshot(path, (path / "meta.json").stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_snapshot(path: Path, written: int) -> Snapshot:
    scores = pd.read_parquet(path / "scores.parquet")
    scores["reasons"] = scores["reasons"].map(lambda r: json.loads(r) if isinstance(r, str) else r)
    return Snapshot(
        path=path,
        scores=scores,
        leads=pd.read_parquet(path / "leads.parquet"),
        activities=pd.read_parquet(path / "activities.parquet"),
        meta=json.loads((path / "meta.json").read_text()),
    )


def latest_two(directory: Path | None = None, model_name: str | None = None) -> tuple[Snapshot | None, Snapshot | None]:
    """The newest snapshot and the one before it (either may be None), of `model_name` if given:
    the pages explain the scorings of the model the service serves, not another table's."""
    paths = list_snapshots(directory, model_name)
    latest = load_snapshot(paths[-1]) if paths else None
    previous = load_snapshot(paths[-2]) if len(paths) > 1 else None
    return latest, previous


def best_first(scores: pd.DataFrame, *before: str) -> pd.DataFrame:
    """Leads by probability, best first, ties by id (the score's one decimal ties hundreds of
    leads, which an unstable sort put in another order each time); `before`: columns that rank
    first, ascending."""
    keys = [*before, *(c for c in ("probability", "score") if c in scores), "lead_id"]
    ascending = [True] * len(before) + [c == "lead_id" for c in keys[len(before) :]]
    return scores.sort_values(keys, ascending=ascending, kind="stable")


def grade_changes(latest: Snapshot, previous: Snapshot | None) -> pd.DataFrame:
    """Leads scored in both snapshots whose grade changed: `lead_id`, grades, scores, stages
    (an SQL lead fallen to nurture is the one to look at), rose."""
    columns = ["lead_id", "grade_before", "grade", "score_before", "score", "stage_before", "stage", "rose"]
    if previous is None:
        return pd.DataFrame(columns=columns)
    before = previous.scores[["lead_id", "grade", "score", "stage"]].rename(
        columns={"grade": "grade_before", "score": "score_before", "stage": "stage_before"}
    )
    both = latest.scores[["lead_id", "grade", "score", "stage"]].merge(before, on="lead_id")
    changed = both[both["grade"] != both["grade_before"]].copy()
    changed["rose"] = changed["grade"] < changed["grade_before"]  # "A" < "B": a better grade
    return best_first(changed)[columns].reset_index(drop=True)
