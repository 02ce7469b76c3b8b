"""Batch scoring: a file (or CRM export folder) of leads in, the service's columns out."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import glob
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.clean import (
    blank_to_missing,
    format_conflict,
    numbers_as_text,
    order_from_votes,
    parse_timestamps,
    stored_formats,
)
from features.flat import DUPLICATE_ROW, clean_flat_columns, flat_header_renames, model_column_name, near_headers
from features.ingest import (
    CountedNote,
    DataError,
    column_name_notes,
    encoding_note,
    export_date_votes,
    header_separator,
    merge_counted,
    near_ids,
    outcome_statuses,
    read_text_csv,
    require_columns,
)
from features.schema import (
    ACTIVITY_REQUIRED,
    LEAD_COUNTS,
    LEAD_NUMERIC,
    LEAD_REQUIRED,
    OUTCOME_REQUIRED,
    TABLE_FILES,
    contract_clash,
    contract_names,
)
from serving.scoring import LoadedModel, model_date_order, prepare_crm_leads, prepare_flat_rows, score_features

OUTPUT_COLUMNS = [
    "lead_id", "probability", "score", "grade", "fit", "engagement", "stage", "stage_reason",
    "next_action", "recycle_on", "reasons", "model_version", "activities_not_read",
]  # fmt: skip
CHUNK_LEADS = 50_000


@dataclass
class BatchResult:
    scored: pd.DataFrame
    quarantine: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # values read otherwise than written, say where
    counted: list[CountedNote] = field(default_factory=list)  # a CRM model's notes as counts, to add up


def read_table(
    path: Path, sep: str = ",", notes: list[str] | None = None, numeric: Callable[[str], bool] = lambda name: False
) -> pd.DataFrame:
    """A CSV or parquet table as text cells (missing as empty), like an export; a CSV in
    `sep`, or in the separator its header has when it has no `sep`. `notes` gets how it was
    read when that is not the plain way (another separator, another encoding), as training says."""
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: an empty file, not even a header row (a table with no rows has its header)")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            # A typed number of a numeric column stays that number (1.532, not "1.532" read as 1532).
            frame = frame.apply(lambda values: numbers_as_text(values) if numeric(str(values.name)) else values)
            return frame.astype(object).where(frame.notna(), "").astype(str)
        # Training's reader: the same encodings, header spaces and checks, so a file that trains scores.
        found = header_separator(path, sep)
        frame, encoding = read_text_csv(path, sep=found)
        frame.attrs["sep"] = found  # its decimal mark where no number says (`number_format_note`)
        if notes is not None:
            notes.extend([f"{path.name}: fields separated by {found!r}"] if found != sep else [])
            notes.extend(filter(None, [encoding_note(path.name, encoding)]))
        return frame
    except DataError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from exc


def file_date_order(model: LoadedModel, leads: pd.DataFrame, activities: pd.DataFrame) -> bool | None:
    """Whether to read a batch's numeric dates (03/04/2025) day first: `run_date_order` with
    the votes of the file's date columns together."""
    return run_date_order(model, lambda: export_date_votes(leads, activities))


def run_date_order(model: LoadedModel, count_votes: Callable[[], tuple[int, int]]) -> bool | None:
    """The order of a scoring run's numeric dates: the model's, else the one the run's files
    say together (`count_votes`, called only then), else month first; None for a flat model.

    One order for the whole run: `created_at` and the activities read apart (or a chunk, a
    Dask partition, or one lead's rows on its page) could each say another, and a lead would
    score differently in the digest and on its page."""
    if model.kind != "crm":
        return None
    stored = model_date_order(model.scorer)
    return stored if stored is not None else bool(order_from_votes(count_votes()))


def refuse_without_model_columns(model: LoadedModel, columns: Iterable[str]) -> None:
    """DataError when a file holds none of a flat model's columns: every lead would get the same
    score from missing values alone."""
    if model.kind != "flat":
        return
    expected, given = list(model_schema(model)["columns"]), set(columns)
    if expected and not any(c in given for c in expected):
        shown = ", ".join(expected[:5]) + (f" and {len(expected) - 5} more" if len(expected) > 5 else "")
        raise DataError(
            f"none of the model's columns are in this file: v{model.version} was trained on a flat "
            f"export with {shown}; is this the right file, or the right model (--model-name)?"
        )


def absent_columns_note(model: LoadedModel, columns: Iterable[str]) -> str | None:
    """A warning when a leads file lacks columns the model learned from: each reads as missing
    (a BANT field as unknown) for every lead, which moves scores and stages alike. DataError when
    it holds none of a flat model's (`refuse_without_model_columns`)."""
    refuse_without_model_columns(model, columns)
    if model.kind == "flat":
        columns = list(columns)
        schema = model_schema(model)
        absent = [c for c in schema["columns"] if c not in set(columns)]
        # A header the model reads as one of its own columns (or its id) is no typo of another.
        taken = {*model.scorer.spec.settings["flat"]["columns"], schema.get("id")}
        near = near_headers(absent, [c for c in columns if c not in taken])
        shown = ", ".join(f"{c} ({near[c]!r} in this file?)" if c in near else c for c in absent)
        return f"{len(absent)} of the model's columns not in this file, read as missing: {shown}" if absent else None
    learned_from = model.scorer.spec.settings.get("lead_columns")
    absent = [c for c in learned_from or () if c not in set(columns)]
    if not absent:
        return None
    return (
        f"the leads file has no column {', '.join(absent)}, which {model.name} v{model.version} learned from: "
        "each is read as missing (a BANT field as unknown) for every lead, so scores and stages rest on the rest; "
        "add the column(s) to the export unless the CRM really stopped filling them"
    )


def _contract_table(frame: pd.DataFrame, table: str, rename: bool, path: Path, notes: list[str] | None) -> pd.DataFrame:
    """The contract's names for a CRM model's table, whatever the headers' case, with what was
    renamed or left unused said in `notes`, as training says it."""
    if not rename:
        return frame
    if clash := contract_clash(frame.columns, table):
        raise DataError(f"{path.name}: {clash}")
    renames, unused = contract_names(frame.columns, table)
    if notes is not None:
        notes.extend(column_name_notes(path.name, renames, unused))
    return frame.rename(columns=renames)


def _flat_headers(
    frame: pd.DataFrame, schema: dict[str, Any] | None, path: Path, notes: list[str] | None
) -> pd.DataFrame:
    """A flat model's columns under the names it learned, for headers spelt otherwise by case,
    spaces or punctuation alone (`lead source`), said in `notes` as CRM headers are."""
    if schema is None:
        return frame
    renames = flat_header_renames(frame.columns, schema)
    if renames and notes is not None:
        notes.append(f"{path.name}: " + ", ".join(f"{old!r} read as {new!r}" for old, new in renames.items()))
    return frame.rename(columns=renames)


# Scoring an export this long after its newest activity (as of now) reads its engagement as gone
# quiet: every lead looks colder than it did when the export was taken.
STALE_EXPORT_DAYS = 30


def stale_export_note(activities: pd.DataFrame, as_of: pd.Timestamp, day_first: bool | None = None) -> str | None:
    """A warning when the newest activity of an export is long before the scoring moment
    (`day_first`: the run's order of numeric dates, `file_date_order`)."""
    if activities.empty or "occurred_at" not in activities:
        return None
    return stale_note(parse_timestamps(activities["occurred_at"], day_first)[0].max(), as_of)


def no_activity_note(
    scorer: Any,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp | None = None,
    day_first: bool | None = None,
) -> str | None:
    """A warning when a model that learned from engagement is given no activity of the leads
    it scores: none at all, only other leads' (another export's file, ids written otherwise),
    or, with `as_of`, none before that moment (features read the rows before it only)."""
    state, first = activity_state(scorer, leads, activities, as_of, day_first)
    if state == "after":
        return activity_after_note(as_of, first)
    return {"none": NO_ACTIVITY_NOTE, "undated": UNDATED_NOTE}.get(state)


def activity_state(
    scorer: Any,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp | None = None,
    day_first: bool | None = None,
) -> tuple[str, pd.Timestamp | None]:
    """Whether the leads' activities can shape their engagement: "before" (some do, or the model
    needs none), "none" (no activity of these leads), "after" (dated ones, all at or after
    `as_of`; the first of them returned too), "undated" (only ones without a readable date,
    which scoring quarantines) or "empty" (no lead to score). With `as_of`, only leads
    created before it count: later ones are not scored. Partitions of one run combine in
    `ACTIVITY_STATES` order: the first state any partition has is the run's. `day_first`: the
    run's order of numeric dates when the model has none (`file_date_order`)."""
    if scorer.spec.kind != "crm" or "lead_id" not in leads or not scorer.uses_engagement():
        return "before", None
    day_first = model_date_order(scorer, day_first)
    if as_of is not None and "created_at" in leads:
        created = parse_timestamps(leads["created_at"], day_first)[0]
        leads = leads[~(created > as_of)]  # undated ones are quarantined when scored, not counted here
    if leads.empty:
        return "empty", None
    ids = leads["lead_id"].astype(str).str.strip()
    if activities.empty or not (theirs := activities["lead_id"].astype(str).str.strip().isin(ids)).any():
        return "none", None
    if "occurred_at" not in activities:
        return "undated", None
    when = parse_timestamps(activities.loc[theirs, "occurred_at"], day_first)[0]
    if when.isna().all():
        return "undated", None
    if as_of is None or (when < as_of).any():
        return "before", None
    return "after", when.min()


ACTIVITY_STATES = ("before", "after", "undated", "none", "empty")


def activity_after_note(as_of: pd.Timestamp, first: pd.Timestamp) -> str:
    """The warning when the scored leads' activities all come at or after the scoring moment."""
    return (
        f"no activity of these leads before {as_of:%Y-%m-%d %H:%M}, the scoring moment (their first is from "
        f"{first:%Y-%m-%d}): every lead is scored as if it had never engaged, so the scores rest on fit "
        "alone; score as of a later moment (--as-of) unless these leads really had none then"
    )


NO_ACTIVITY_NOTE = (
    "no activity of these leads given: every lead is scored as if it had never engaged, so the scores rest "
    "on fit alone; give the export's activities (a folder's activities.csv, or --activities FILE) unless "
    "these leads really have none"
)
UNDATED_NOTE = (
    "no activity of these leads has a date that can be read (each is quarantined with its reason): "
    "every lead is scored as if it had never engaged, so the scores rest on fit alone"
)


def stale_note(newest: pd.Timestamp | None, as_of: pd.Timestamp) -> str | None:
    """The stale-export warning given the export's newest activity (None or NaT: no warning)."""
    if newest is None or pd.isna(newest) or as_of - newest <= pd.Timedelta(days=STALE_EXPORT_DAYS):
        return None
    # Features read the rows before T: the next midnight keeps the newest day's activities.
    day_after = newest.normalize() + pd.Timedelta(days=1)
    return (
        f"the newest activity in this export is from {newest:%Y-%m-%d}, {(as_of - newest).days} days before "
        f"{as_of:%Y-%m-%d}: its engagement is read as that old, so every lead scores colder than when it was "
        f"exported; to score the leads as they stood then, add --as-of {day_after:%Y-%m-%d}"
    )


def read_leads(
    source: Path,
    activities: Path | None,
    *,
    flat_schema: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    statuses: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Leads and activities from a CRM export folder (its open leads only, when it has
    outcomes), or a leads file plus an optional activities file.

    Args:
        flat_schema: a flat model's schema: a file without `lead_id` is then identified by the
            id column it was trained with, or by row number (1, 2, ...) as in training.
        notes: gets what the user should hear: outcome rows that could not be read, whose
            leads are scored as open.
        statuses: the CRM's own outcome statuses (`data.outcome_statuses`).

    Returns:
        Leads, activities, and how many closed leads were left out.
    """
    closed, all_ids = 0, None
    # A CRM model reads the contract's names whatever their case, as training does; a flat
    # model's columns are its own.
    as_contract = flat_schema is None

    def numeric(name: str) -> bool:
        """A lead column the model reads as a number (a parquet file's typed floats keep their value)."""
        if as_contract:
            return contract_names([name], "leads")[0].get(name, name) in LEAD_NUMERIC
        return flat_schema["columns"].get(name) == "numeric"

    sep = (flat_schema or {}).get("sep", ",")  # a flat export is scored in the dialect it was trained in
    if source.is_dir():
        if not (source / TABLE_FILES["leads"]).exists():
            raise DataError(
                f"{source}: a folder without {TABLE_FILES['leads']}: give a file of leads, or a CRM export folder "
                f"({', '.join(TABLE_FILES.values())})"
            )
        leads_path = source / TABLE_FILES["leads"]
        raw = read_table(leads_path, sep, notes, numeric)
        leads = _contract_table(raw, "leads", as_contract, leads_path, notes)
        leads = _flat_headers(leads, flat_schema, leads_path, notes)
        acts_path = activities or source / TABLE_FILES["activities"]
        outcomes_path = outcomes_file(source, notes)
        if outcomes_path is not None and "lead_id" in leads:
            closed_ids = closed_lead_ids(
                outcomes_path, leads["lead_id"], notes, as_contract=as_contract, statuses=statuses
            )
            all_ids = leads["lead_id"]
            is_closed = leads["lead_id"].astype(str).str.strip().isin(closed_ids)
            closed = int(is_closed.sum())
            leads = leads[~is_closed.to_numpy()]  # the index keeps each lead's row in the file
    else:
        raw = read_table(source, sep, notes, numeric)
        leads = _contract_table(raw, "leads", as_contract, source, notes)
        leads = _flat_headers(leads, flat_schema, source, notes)
        acts_path = activities
    if activities is not None and activities.is_dir():
        raise DataError(
            f"{activities}: a folder; --activities takes the activities file (a CRM export folder is given as the "
            "source, without --activities)"
        )
    if activities is not None and not activities.is_file():
        raise DataError(f"{activities}: file not found (--activities)")
    if acts_path is not None and acts_path.exists():
        acts = _contract_table(read_table(acts_path, notes=notes), "activities", as_contract, acts_path, notes)
        require_columns(acts.columns, ACTIVITY_REQUIRED if as_contract else ("lead_id",), str(acts_path))
    else:
        acts = pd.DataFrame(columns=["lead_id", "occurred_at", "activity_type", "value"])
    if flat_schema is not None:
        # Rows are named as in training: by the id column, or by row number; a data column that
        # happens to be called lead_id does not name them (training did not read it either).
        id_column = flat_schema.get("id")
        if id_column in leads:
            # As training reads them: spaces around an id are not part of it (a CRM matches on it).
            leads = leads.assign(lead_id=blank_to_missing(leads[id_column], ("",)).fillna(""))
        elif not id_column and (not source.is_dir() or "lead_id" not in leads):
            leads = leads.assign(lead_id=(leads.index + 1).astype(str))
    if "lead_id" not in leads:
        trained = (
            f" (the model was trained with --id {flat_schema['id']!r})"
            if flat_schema
            else " (a model trained on a flat CSV has a name of its own: pass it as --model-name)"
        )
        # The file's own headers, not the contract's names some were read as.
        raise DataError(f"{source}: no lead_id column{trained}; columns are {', '.join(map(str, raw.columns[:20]))}")
    if as_contract:
        require_columns(leads.columns, LEAD_REQUIRED, str(source / TABLE_FILES["leads"] if source.is_dir() else source))
    if leads.empty and not closed:
        raise DataError(f"{source}: no rows to score (a header only)")
    if notes is not None and flat_schema is None and len(acts):
        notes.extend(_activities_of_no_lead(acts, leads["lead_id"] if all_ids is None else all_ids))
    return leads, acts, closed


def outcomes_file(folder: Path, notes: list[str] | None) -> Path | None:
    """An export folder's outcomes file, or None when it has none (said in `notes`: every lead
    is then scored as open, converted and lost ones too, and kept for the pages so)."""
    path = folder / TABLE_FILES["outcomes"]
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: a folder, not a file; the export's outcomes say which leads are closed")
    if path.exists():
        return path
    if notes is not None:
        notes.append(
            f"{folder}: no {TABLE_FILES['outcomes']}, so every lead of {TABLE_FILES['leads']} is scored as open, "
            f"converted and lost ones too; add the export's {TABLE_FILES['outcomes']} to score only the open ones"
        )
    return None


def closed_lead_ids(
    outcomes_path: Path,
    lead_ids: pd.Series | None,
    notes: list[str] | None,
    *,
    as_contract: bool = True,
    statuses: Mapping[str, str] | None = None,
) -> frozenset[str]:
    """The ids (stripped) of the leads an export's outcomes file closes, as converted or lost, in
    the spellings training accepts ("Won", "Closed Lost", ...); a lead with any closed row is
    closed, so repeated rows cannot make it look open. `notes` gets the rows not read, and those
    naming no lead of `lead_ids` (not checked when None)."""
    outcomes = _contract_table(read_table(outcomes_path, notes=notes), "outcomes", as_contract, outcomes_path, notes)
    require_columns(outcomes.columns, OUTCOME_REQUIRED, str(outcomes_path))
    status = outcome_statuses(outcomes["status"], statuses)
    if notes is not None:
        if outcomes.empty:
            notes.append(f"{outcomes_path.name}: a header and no rows, so every lead is scored as open")
        notes.extend(_unread_outcomes(outcomes, status, lead_ids))
    return frozenset(outcomes.loc[status.isin(["converted", "lost"]), "lead_id"].astype(str).str.strip())


def model_schema(model: LoadedModel) -> dict[str, Any]:
    """A flat model's schema with only the columns the model uses (the leakage audit and the
    spec leave some of the export's columns out)."""
    schema = model.scorer.spec.settings["flat"]
    used = set(model.scorer.spec.columns)
    return {**schema, "columns": {c: k for c, k in schema["columns"].items() if model_column_name(c) in used}}


def _clean_flat_file(leads: pd.DataFrame, model: LoadedModel) -> tuple[pd.DataFrame, list[str]]:
    """A flat file cleaned once for all its chunks, and the values the model will read as
    missing in it because they do not parse (as training notes them)."""
    schema = model.scorer.spec.settings["flat"]
    used = schema["columns"]
    cleaned, notes = clean_flat_columns(leads, schema)
    notes = [note for note in notes if any(note.startswith(f"{column}: ") for column in used)]
    return cleaned, notes  # the columns it lacks are `absent_columns_note`'s


def number_format_note(
    model: LoadedModel, leads: pd.DataFrame | Mapping[str, pd.Series], sep: str | None = None
) -> str | None:
    """A warning when a file's numbers show another decimal mark than the model's training
    export (`format_conflict`): it is read as the training export was, as every file and request
    is, so its numbers are misread (`leadscore score` keeps such a scoring from the pages).
    `leads`: the file's rows, or its numeric columns' distinct values (a file read on Dask);
    `sep`: its field separator (else the one `read_table` noted), which tells its decimal mark where
    no number does, when it is not the training export's (a model that does not know its export's
    separator is not told: it read such a file alike)."""
    settings = model.scorer.spec.settings
    if model.kind == "flat":
        schema = settings["flat"]
        numeric = [c for c, kind in schema["columns"].items() if kind == "numeric" and c in leads]
        tokens, stored, counts = schema["missing_tokens"], schema.get("number_formats"), ()
        trained_sep = schema.get("sep")
    else:
        numeric = [c for c in LEAD_NUMERIC if c in leads]
        tokens, stored, counts = settings.get("missing_tokens", ("",)), settings.get("number_formats"), LEAD_COUNTS
        trained_sep = settings.get("sep")
    columns = {c: blank_to_missing(leads[c], tokens) for c in numeric}
    sep = sep or getattr(leads, "attrs", {}).get("sep")
    told = sep if trained_sep is not None and sep != trained_sep else None
    return format_conflict(stored_formats(stored), columns, counts, told)


def _flat_rows(model: LoadedModel, chunk: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Positions of the flat rows to score, and a quarantine of the rest: a blank or repeated
    id, or no value in any of the model's columns (a blank line)."""
    schema = model_schema(model)
    ids = chunk["lead_id"].astype(str).str.strip()
    present = [blank_to_missing(chunk[c], schema["missing_tokens"]).notna() for c in schema["columns"] if c in chunk]
    empty = ~pd.concat(present, axis=1).any(axis=1) if present else pd.Series(True, index=chunk.index)
    reason = pd.Series("", index=chunk.index, dtype=object)
    reason[empty] = "no value in any of the model's columns"
    # The id as read (lead_id: spaces around it aside) is compared, not as written.
    unread = {"_row", schema.get("id")} - {"lead_id"}
    identical = chunk.duplicated([c for c in chunk.columns if c not in unread], keep="first")
    reason[ids.where(~identical).duplicated(keep=False) & ~identical] = "lead_id appears more than once"
    reason[identical] = DUPLICATE_ROW  # a row exported twice: one lead, scored once
    # What a report export or two files run together write among the leads: scored, they got pages.
    reason[_repeats_the_header(chunk)] = "the header again (two exports run together?), not a lead"
    # By its id, or by the file's first cell where rows are numbered (no id column).
    own = [c for c in chunk.columns if c not in ("_row", "lead_id")]
    first = chunk[own[0]] if schema.get("id") is None and own else ids
    totals = ids.str.fullmatch(TOTALS_ID) | first.astype(str).str.strip().str.fullmatch(TOTALS_ID)
    reason[totals] = "a totals row of a report export, not a lead"
    reason[ids.eq("")] = "lead_id blank"
    bad = reason.ne("")
    issue = pd.DataFrame(
        {
            "table": "leads",
            "row": np.flatnonzero(bad),
            "lead_id": chunk.loc[bad, "lead_id"].to_numpy(),
            "reason": reason[bad].to_numpy(),
        }
    )
    return np.flatnonzero(~bad), issue


# "Grand Totals (2000 records)", "Total", "Totals:": the last rows of a CRM's report export.
TOTALS_ID = re.compile(r"(?:grand\s+|sub)?totals?\s*(?:\(\s*\d[\d,.]*\s+records?\s*\)|:)?", re.IGNORECASE)


def _repeats_the_header(chunk: pd.DataFrame) -> pd.Series:
    """Rows whose cells are mostly their columns' names (two or more, and four in five of the
    file's columns): a header within the data."""
    columns = [c for c in chunk.columns if c != "_row"]
    found = pd.Series(False, index=chunk.index)
    first = [c for c in columns if c != "lead_id"][:2]  # the file's own columns (lead_id may be made)
    if len(first) < 2 or chunk.empty:
        return found

    def named(column: str, rows: pd.DataFrame) -> pd.Series:
        return rows[column].astype(str).str.strip().str.casefold().eq(str(column).strip().casefold())

    # Read whole only where one of the first two columns holds its own name (a header does).
    maybe = chunk[named(first[0], chunk) | named(first[1], chunk)]
    if maybe.empty:
        return found
    # Most of the file's columns hold their own names: a sparse lead whose two checkbox columns
    # hold their labels ("Webinar", "Newsletter") is a lead.
    names = sum(named(c, maybe).astype(int) for c in columns)
    found[maybe.index] = names >= max(2, 0.8 * len([c for c in columns if c != "lead_id"]))
    return found


def _rows_in_file(table: pd.DataFrame) -> np.ndarray:
    """Each row's 0-based data row in its file: the integer index a reader kept, else its position."""
    if pd.api.types.is_integer_dtype(table.index) and table.index.is_unique:
        return table.index.to_numpy()
    return np.arange(len(table))


def _activities_of_no_lead(activities: pd.DataFrame, lead_ids: pd.Series) -> list[str]:
    """Activity rows whose id names no lead of the leads file, counted (training sets them
    aside as of unknown leads; scoring left them out unsaid), and those that match one apart
    from case, spaces or leading zeros named apart: those ids should agree."""
    known = lead_ids.astype(str).str.strip()
    ids = activities["lead_id"].astype(str).str.strip()
    strangers = ids[~ids.isin(known) & ids.ne("")]
    if strangers.empty:
        return []
    near = near_ids(strangers, known)
    said = f"activities: {len(strangers):,} row(s) name no lead of the leads file and are not read"
    if not near.empty:
        said += (
            f"; {len(near):,} of them match one but for case, spaces or leading zeros (e.g. "
            f"{strangers[near.index[0]]!r} for {near.iloc[0]!r}): make the ids agree"
        )
    return [said]


def _unread_outcomes(outcomes: pd.DataFrame, status: pd.Series, lead_ids: pd.Series | None) -> list[str]:
    """Outcome rows that leave a lead scored as open though the export may have closed it: a
    status that is not read, or an id that names no lead of leads.csv."""
    said = []
    unread = status.isna()
    if unread.any():
        spellings = outcomes.loc[unread, "status"].astype(str).value_counts().head(3)
        shown = ", ".join(f"{value!r} {n:,}" for value, n in spellings.items())
        said.append(
            f"outcomes.csv: {int(unread.sum()):,} row(s) with a status not read as converted, lost or open ({shown}): "
            "their leads are scored as open (a CRM's own statuses can be named in params.yaml data.outcome_statuses)"
        )
    if lead_ids is None:
        return said
    ids = outcomes["lead_id"].astype(str).str.strip()
    strangers = ~ids.isin(lead_ids.astype(str).str.strip()) & ids.ne("")
    if strangers.any():
        near = near_ids(ids[strangers], lead_ids.astype(str).str.strip())
        spelt = (
            f"; {len(near):,} match a lead but for case, spaces or leading zeros (e.g. {ids[near.index[0]]!r} "
            f"for {near.iloc[0]!r}), so those leads are scored as open: make the ids agree"
            if len(near)
            else ""
        )
        said.append(f"outcomes.csv: {int(strangers.sum()):,} row(s) name no lead of leads.csv{spelt}")
    return said


def score_batch(
    model: LoadedModel,
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    *,
    on_progress: Callable[[int], None] | None = None,
    day_first: bool | None = None,
) -> BatchResult:
    """Score every usable lead, in chunks; unusable rows come back as a quarantine. Numeric
    dates are read in one order, `day_first` (default: `file_date_order` of these rows).

    Rows that share a lead id are always scored in the same chunk (duplicates are caught
    however far apart they are in the file); the output keeps the file's order. The
    quarantine numbers rows as the files do (1-based data rows), from the frames' integer
    index: `read_leads` keeps it when it leaves the closed leads out.
    """
    refuse_without_model_columns(model, leads.columns)
    if day_first is None:
        day_first = file_date_order(model, leads, activities)
    parts, problems, counted = [], [], []
    lead_rows_in_file, act_rows_in_file = _rows_in_file(leads), _rows_in_file(activities)
    cleaned, notes = _clean_flat_file(leads, model) if model.kind == "flat" else (None, [])
    # Ids as training reads them (spaces around them aside), in both tables.
    groups = activities.groupby(activities["lead_id"].astype(str).str.strip()).indices if len(activities) else {}
    key = leads["lead_id"].astype(str).str.strip() if len(leads) else pd.Series(dtype=str)
    group = pd.factorize(key)[0]
    order = np.argsort(group, kind="stable")  # rows of one lead next to each other, else file order
    ordered = leads.iloc[order].reset_index(drop=True)
    start = 0
    while start < len(ordered):
        end = min(start + CHUNK_LEADS, len(ordered))
        while end < len(ordered) and group[order[end]] == group[order[end - 1]]:
            end += 1  # never split one lead's rows between chunks
        chunk = ordered.iloc[start:end].reset_index(drop=True)
        file_rows = order[start:end]
        moments = pd.Series([as_of] * len(chunk))
        if model.kind == "flat":
            positions, issue = _flat_rows(model, chunk)
            features, context, _ = prepare_flat_rows(model, chunk.iloc[positions], cleaned.iloc[file_rows[positions]])
        else:
            # Each lead's activities once, though the lead has several rows (quarantined below).
            rows = [groups[i] for i in pd.unique(chunk["lead_id"].str.strip()) if i in groups]
            act_positions = np.concatenate(rows) if rows else np.array([], dtype=int)
            acts = activities.iloc[act_positions]
            features, context, positions, issue = prepare_crm_leads(
                model, chunk, acts, moments, strict=False, day_first=day_first, notes=counted
            )
        scored = score_features(model, features, context, moments.iloc[positions])
        scored.insert(0, "lead_id", chunk["lead_id"].to_numpy()[positions])
        scored["activities_not_read"] = np.asarray(context.get("activities_not_read", 0))  # a flat model: none
        scored["reasons"] = [json.dumps(r, default=str) for r in scored["reasons"]]
        scored["_file_row"] = file_rows[positions]
        parts.append(scored[[*OUTPUT_COLUMNS, "_file_row"]])
        if not issue.empty:
            issue = issue.astype({"row": int})
            of_leads, of_acts = issue["table"] == "leads", issue["table"] == "activities"
            issue.loc[of_leads, "row"] = lead_rows_in_file[file_rows[issue.loc[of_leads, "row"]]] + 1
            if model.kind == "crm":
                issue.loc[of_acts, "row"] = act_rows_in_file[act_positions[issue.loc[of_acts, "row"]]] + 1
            problems.append(issue)
        if on_progress:
            on_progress(len(chunk))
        start = end
    if parts:
        scored = pd.concat(parts, ignore_index=True).sort_values("_file_row", kind="stable")
        scored = scored.drop(columns="_file_row").reset_index(drop=True)
    else:
        scored = pd.DataFrame(columns=OUTPUT_COLUMNS)
    quarantine = (
        pd.concat(problems, ignore_index=True)
        if problems
        else pd.DataFrame(columns=["table", "row", "lead_id", "reason"])
    )
    counted = merge_counted(counted)
    return BatchResult(scored, quarantine, notes + [str(note) for note in counted], counted)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_for_spreadsheets(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (`=cmd|...`, `+`, `-`, `@`) get a
    leading apostrophe, so an exported CSV opened in Excel shows them as text."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            values = out[column]
            risky = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_START))
            if risky.any():
                out[column] = values.where(~risky, "'" + values.astype(str))
    return out


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """CSV or parquet by the file's suffix (CSV cells neutralised for spreadsheets), written
    whole (`whole_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with whole_file(path) as partial:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(partial, index=False)
        else:
            safe_for_spreadsheets(frame).to_csv(partial, index=False)


@contextlib.contextmanager
def whole_file(path: Path, sweep: bool = True) -> Iterator[Path]:
    """A file beside `path` to write, renamed over `path` when the block ends without an error
    (with `path`'s permissions, through a link to it), removed otherwise: a run stopped part way
    (or a CRM job reading meanwhile) never sees a file cut short that looks complete, and the
    last good file stays until the new one is whole. Then what killed runs left beside it goes
    (`remove_abandoned`; `sweep=False` for a caller writing many files, which sweeps once)."""
    path = path.resolve() if path.is_symlink() else path  # a link a CRM job reads keeps pointing at the scores
    partial = _beside(path, "partial")
    try:
        yield partial
        if path.is_file():  # the file's permissions (a group's write bit) as they were
            shutil.copymode(path, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if sweep:
        remove_abandoned(path.parent, glob.escape(path.name))


@contextlib.contextmanager
def whole_folder(path: Path) -> Iterator[Path]:
    """A folder beside `path` to write (a dataset of parts), put in `path`'s place when the block
    ends without an error, removed otherwise: as `whole_file`, a run stopped part way leaves the
    last good folder, not some of the new parts beside none of the old."""
    path = path.resolve() if path.is_symlink() else path
    partial = _beside(path, "partial")
    _remove(partial)
    try:
        yield partial
        # A folder cannot be renamed over another: the old one steps aside first, and comes back
        # if anything (a signal, a full disk) stops the new one taking its place. Two runs writing
        # the same folder take turns.
        old = _beside(path, "old")
        with _held(path.with_name(f".{path.name}.lock")):
            try:
                if path.exists():
                    os.replace(path, old)
                os.replace(partial, path)
            except BaseException:
                if old.exists() and not path.exists():
                    os.replace(old, path)  # the last good folder back in its place
                raise
        _remove(old)
    finally:
        _remove(partial)
    remove_abandoned(path.parent, glob.escape(path.name))


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive lock on `lock` (a file beside the output, kept) for the block; none where the
    file system has no locks (NFS without its lock daemon): the folder is still written whole."""
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _beside(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def remove_abandoned(folder: Path, *names: str) -> None:
    """What `whole_file` and `whole_folder` left in `folder` beside the outputs `names` (glob
    patterns: `lead-*.html`) when their run was killed outright (SIGKILL, a lost machine; a run
    stopped otherwise removes its own): `.NAME.PID.partial` halves and `.NAME.PID.old` folders of
    a process no longer running here, untouched for ABANDONED_WRITE_SECONDS (a process writing
    keeps its file's time fresh; one on another machine sharing the folder is not seen running).
    Nothing else in the folder is touched."""
    for pattern in names:
        for left in folder.glob(f".{pattern}.*"):
            found = _LEFT_BEHIND.fullmatch(left.name)
            if not found or not fnmatch.fnmatchcase(found["name"], pattern) or _running(int(found["pid"])):
                continue
            with contextlib.suppress(OSError):
                if time.time() - left.lstat().st_mtime > ABANDONED_WRITE_SECONDS:
                    _remove(left)


_LEFT_BEHIND = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?:partial|old)")
ABANDONED_WRITE_SECONDS = 600


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
