"""Read and validate a CRM export (leads, activities, outcomes); quarantine bad rows."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.clean import (
    FALSE_TOKENS,
    GROUPED_THOUSANDS,
    TRUE_TOKENS,
    NumberFormat,
    against_date_order,
    blank_to_missing,
    canonical_spelling,
    date_order_votes,
    dot_grouped,
    has_value,
    map_distinct,
    number_formats,
    order_from_votes,
    other_currencies,
    parse_bool,
    parse_number,
    parse_timestamps,
    snake_case,
    utc_now,
)
from features.schema import (
    ACTIVITY_REQUIRED,
    ACTIVITY_TYPES,
    BANT_FIELDS,
    BANT_VALUES,
    LEAD_CATEGORICAL,
    LEAD_COUNTS,
    LEAD_FEATURE_INPUTS,
    LEAD_NUMERIC,
    LEAD_REQUIRED,
    OTHER_ACTIVITY,
    OUTCOME_REQUIRED,
    OUTCOME_STATUSES,
    TABLE_FILES,
    contract_clash,
    contract_names,
)

# Outcome spellings of CRMs, keyed as `outcome_status` reads them (case, spacing, dashes,
# underscores and slashes aside: "Closed - Won", "closed/won" and "CLOSED_WON" are all
# "closed won"; "won?" is not read).
STATUS_SYNONYMS = {
    "converted": "converted",
    "won": "converted",
    "closed won": "converted",
    "closed converted": "converted",
    "customer": "converted",
    "lost": "lost",
    "closed lost": "lost",
    "closed not converted": "lost",
    "disqualified": "lost",
    "unqualified": "lost",
    "open": "open",
    "in progress": "open",
    "working": "open",
    "working contacted": "open",
    "open not contacted": "open",
    "new": "open",
    # Common CRM lead statuses of leads still being worked (HubSpot's, Salesforce's, Dynamics').
    "attempted to contact": "open",
    "attempting to contact": "open",
    "contacted": "open",
    "connected": "open",
    "open deal": "open",
    "bad timing": "open",
    "nurture": "open",
    "nurturing": "open",
    "reopened": "open",
    "re opened": "open",
    "recycled": "open",
}


def status_key(value: object) -> str:
    """A status as outcomes are matched: case, spaces and - _ / alike."""
    return re.sub(r"[\s\-_/]+", " ", str(value).casefold()).strip()


def outcome_status(value: object, own: Mapping[str, str] | None = None) -> str | None:
    """converted, lost or open for a CRM's spelling of an outcome; None when it is none of them.

    Args:
        own: the CRM's own statuses (`data.outcome_statuses`), read before the known spellings.
    """
    key = status_key(value)
    if own:
        mine = {status_key(status): meaning for status, meaning in own.items()}
        if key in mine:
            return mine[key]
    return STATUS_SYNONYMS.get(key)


def outcome_statuses(values: pd.Series, own: Mapping[str, str] | None = None) -> pd.Series:
    """`outcome_status` of each value, worked out once per distinct spelling."""
    return map_distinct(values, lambda value: outcome_status(value, own))


def near_ids(ids: pd.Series, known: pd.Series) -> pd.Series:
    """The known id each of `ids` matches apart from case, spaces and leading zeros ("l0100001"
    or "123" for "L0100001" or "00123"), where exactly one does; indexed like `ids`."""

    def key(values: pd.Series) -> pd.Series:
        return values.astype(str).str.strip().str.casefold().str.lstrip("0")

    keys = pd.Series(known.to_numpy(), index=key(known).to_numpy())
    unique = keys[~keys.index.duplicated(keep=False)]
    return key(ids).map(unique).dropna()


# A BANT answer written as a yes/no flag (`Yes`, `TRUE`, `1`, `y`) reads as confirmed or not.
BANT_SYNONYMS = {
    **dict.fromkeys(TRUE_TOKENS, "confirmed"),
    **dict.fromkeys(FALSE_TOKENS, "not"),
    "none": "unknown",
}
QUARANTINE_COLUMNS = ["table", "row", "lead_id", "reason"]


class DataError(ValueError):
    """Input that cannot be used at all (missing file or column, unreadable file).

    `quarantine`: the rows set aside before the input was found unusable, so that the user
    gets the file naming them even though the run stopped."""

    def __init__(self, message: str, quarantine: Quarantine | None = None):
        super().__init__(message)
        self.quarantine = quarantine


@dataclass(frozen=True)
class CountedNote:
    """Values of a column cleaned one way (`what`), how many, and a few of them."""

    where: str
    what: str
    count: int
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        shown = f" ({', '.join(map(repr, self.examples))})" if self.examples else ""
        return f"{self.where}: {self.count:,} {self.what}{shown}"


def merge_counted(notes: Iterable[CountedNote], examples: int = 5) -> list[CountedNote]:
    """The notes of a file cleaned in parts (chunks, partitions) as one file's: counts added,
    examples pooled (the first few in sorting order), sorted by column: the same notes however
    the file was cut."""
    merged: dict[tuple[str, str], CountedNote] = {}
    for note in notes:
        key = (note.where, note.what)
        before = merged.get(key, CountedNote(note.where, note.what, 0))
        shown = tuple(sorted(set(before.examples) | set(note.examples)))[:examples]
        merged[key] = CountedNote(note.where, note.what, before.count + note.count, shown)
    return [merged[key] for key in sorted(merged)]


UNKNOWN_LEAD = "unknown lead_id (no row in leads)"
LEAD_SET_ASIDE = "its lead's row in leads was quarantined (see that row's reason)"


def unknown_lead_reasons(lead_ids: pd.Series, set_aside_leads: Collection[str]) -> pd.Series:
    """Why rows of ids not among the usable leads are set aside: no such lead, or a lead whose
    own row was quarantined (798 activities of 40 leads with bad dates read as of unknown leads)."""
    set_aside = lead_ids.astype(str).isin(set_aside_leads)
    return pd.Series(np.where(set_aside, LEAD_SET_ASIDE, UNKNOWN_LEAD), index=lead_ids.index, dtype=object)


@dataclass
class Quarantine:
    """Rows set aside with their reasons, and notes on values that were cleaned."""

    rows: list[pd.DataFrame] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counted: list[CountedNote] = field(default_factory=list)  # the notes that count values, also as text in `notes`

    def add(
        self,
        table: str,
        frame: pd.DataFrame,
        mask: pd.Series,
        reason: str | pd.Series | Callable[[pd.DataFrame], pd.Series],
    ) -> None:
        """Quarantine the rows of `frame` selected by `mask`, with a reason each (or a function
        giving the reasons of the rows picked: for reasons that quote a value, so that millions of
        good rows are not formatted for the few set aside)."""
        if not mask.any():
            return
        picked = frame.loc[mask]
        reasons = reason
        if isinstance(reason, pd.Series):
            reasons = reason[mask]
        elif callable(reason):
            reasons = reason(picked)
        self.rows.append(
            pd.DataFrame(
                {
                    "table": table,
                    "row": picked["_row"].to_numpy(),
                    "lead_id": picked["lead_id"].to_numpy() if "lead_id" in picked else None,
                    "reason": reasons,
                }
            )
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def count(self, where: str, what: str, values: pd.Series) -> None:
        """Note that `values` of `where` were cleaned so (`what`), with the commonest of them (in
        sorting order, as `merge_counted` pools them)."""
        if len(values):
            shown = tuple(sorted(values.astype(str).str.strip().value_counts().index[:5]))
            note = CountedNote(where, what, len(values), shown)
            self.counted.append(note)
            self.notes.append(str(note))

    def lead_ids_set_aside(self) -> set[str]:
        """The ids of lead rows quarantined so far: their activities and outcomes name a lead of
        leads.csv, set aside for its own reason, not an unknown one."""
        ids = [rows["lead_id"] for rows in self.rows if (rows["table"] == "leads").all()]
        return set(pd.concat(ids).dropna().astype(str)) if ids else set()

    def frame(self) -> pd.DataFrame:
        if not self.rows:
            return pd.DataFrame(columns=QUARANTINE_COLUMNS)
        return pd.concat(self.rows, ignore_index=True)

    def summary(self) -> str:
        """The reasons counted per table, without each row's value: "leads: created_at not a
        date (3,000 rows); ..."."""
        rows = self.frame()
        parts = rows["reason"].astype(str).str.split(": ", n=1)
        kinds, values = parts.str[0], parts.str[1]
        counts = rows.groupby([rows["table"], kinds], sort=False).size().sort_values(ascending=False, kind="stable")
        said = []
        for (table, reason), count in counts.items():
            # The values behind a reason that quotes one ("status not one of ...: Yes"), commonest
            # first; a reason whose tail is the same on every row explains itself instead.
            quoted = values[(rows["table"] == table) & (kinds == reason)].dropna()
            common = quoted.value_counts().index[:3] if quoted.nunique() > 1 else []
            such = ", such as " + ", ".join(repr(value[:40]) for value in common) if len(common) else ""
            said.append(f"{table}: {reason} ({count:,} rows{such})")
        return "; ".join(said)


@dataclass
class CrmData:
    """A cleaned CRM export, ready for feature building."""

    leads: pd.DataFrame
    activities: pd.DataFrame
    outcomes: pd.DataFrame
    export_end: pd.Timestamp
    quarantine: Quarantine
    data_hash: str
    source: str
    day_first: bool | None = None  # the order of its numeric dates (None: none were decisive)
    lead_columns: tuple[str, ...] = ()  # the feature inputs leads.csv gives a value in (`lead_columns_with_values`)
    number_formats: dict[str, NumberFormat] | None = None  # how its numeric lead columns write numbers
    sep: str | None = None  # leads.csv's field separator (`number_format_note` compares a scored file's)


DATE_COLUMNS = ("created_at", "occurred_at", "closed_at")


def lead_columns_with_values(raw_leads: pd.DataFrame, missing_tokens: Iterable[str]) -> tuple[str, ...]:
    """The lead columns that become features (`LEAD_FEATURE_INPUTS`) that a leads table has a
    value in: a model learns nothing from the others, and must not replace one that did."""
    given = [c for c in LEAD_FEATURE_INPUTS if c in raw_leads]
    return tuple(c for c in given if has_value(raw_leads[c], missing_tokens))


def note_lead_columns(quarantine: Quarantine, file: str, present: tuple[str, ...]) -> None:
    """Note the feature inputs a leads file has no value in (absent, or blank in every row)."""
    lacking = [c for c in LEAD_FEATURE_INPUTS if c not in present]
    if lacking:
        quarantine.note(
            f"{file}: no value in column(s) {', '.join(lacking)} (absent, or blank in every row): the model learns "
            "without them"
        )


def export_date_order(*tables: pd.DataFrame) -> bool | None:
    """The order of numeric dates across an export's date columns (see `numeric_date_order`)."""
    return order_from_votes(export_date_votes(*tables))


def refuse_mixed_date_orders(
    tables: dict[str, pd.DataFrame], counted: dict[str, tuple[int, int]] | None = None
) -> None:
    """Refuse an export whose files each write numeric dates in their own order, one day first
    and another month first: read in the order most of the export's dates say, the other
    file's dates with a day of 12 or less would be read the other way without a word (a
    day-first `outcomes.csv` beside a US `activities.csv`: 06/09/2024 read as 9 June). A file's
    order is its own when at least 10 of its dates say it and at most a tenth as many the other
    (a stray date in the other order is set aside as such, not refused). `counted`: the votes
    (`date_order_votes`) of files read elsewhere (in blocks, on a Dask cluster)."""
    orders: dict[str, tuple[bool, str]] = {}
    for file, table in tables.items():
        for column in (c for c in DATE_COLUMNS if c in table):
            day_first = _decisive_order(date_order_votes(table[column]))
            if day_first is not None and file not in orders:
                against, _ = against_date_order(table[column], not day_first)
                example = str(table[column][against.to_numpy()].iloc[0]) if against.any() else ""
                orders[file] = (day_first, f" ({column} {example})" if example else "")
    for file, votes in (counted or {}).items():
        day_first = _decisive_order(votes)
        if day_first is not None:
            orders.setdefault(file, (day_first, ""))
    if len({day_first for day_first, _ in orders.values()}) > 1:
        said = "; ".join(
            f"{file} {'day' if first else 'month'} first{example}" for file, (first, example) in orders.items()
        )
        raise DataError(
            f"the export's files write numeric dates in different orders: {said}. One order is read for the whole "
            "export, so some dates would be read the wrong way round; export every file in one order (or ISO "
            "8601, 2025-09-19)"
        )


def _decisive_order(votes: tuple[int, int]) -> bool | None:
    """Day first or month first when at least 10 dates say so and at most a tenth as many the other."""
    day_votes, month_votes = votes
    if max(votes) >= 10 and min(votes) * 10 <= max(votes):
        return day_votes > month_votes
    return None


def export_date_votes(*tables: pd.DataFrame) -> tuple[int, int]:
    """The votes for each order (`date_order_votes`) of the date columns of `tables`."""
    votes = [date_order_votes(t[c]) for t in tables for c in DATE_COLUMNS if c in t]
    return sum(v[0] for v in votes), sum(v[1] for v in votes)


def leads_as_of(
    leads: pd.DataFrame, outcomes: pd.DataFrame, moment: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Clean leads created before `moment`, their outcomes as of then (later closes read as
    open), and how many outcomes were reopened so."""
    kept = leads[leads["created_at"] < moment].reset_index(drop=True)
    if kept.empty:
        first = leads["created_at"].min()
        raise DataError(f"no lead was created before {moment:%Y-%m-%d}: the export starts {first:%Y-%m-%d}")
    outcomes = outcomes[outcomes["lead_id"].isin(kept["lead_id"])].copy()
    later = outcomes["closed_at"].notna() & (outcomes["closed_at"] >= moment)
    outcomes.loc[later, "status"] = "open"
    outcomes.loc[later, "closed_at"] = pd.NaT
    return kept, outcomes.reset_index(drop=True), int(later.sum())


def activities_as_of(activities: pd.DataFrame, lead_ids: pd.Series, moment: pd.Timestamp) -> pd.DataFrame:
    """Clean activities of the given leads that happened before `moment`."""
    kept = activities["lead_id"].isin(lead_ids) & (activities["occurred_at"] < moment)
    return activities[kept].reset_index(drop=True)


def as_of_note(moment: pd.Timestamp, leads_out: int, activities_out: int, reopened: int) -> str:
    """What an export seen as of `moment` leaves out. Said, not silent: booked-ahead meetings
    or late closes a user cut off on purpose are still rows of the export the run does not use."""
    shown = moment.date() if moment == moment.normalize() else moment
    return (
        f"the export as of {shown} (rows before it): {leads_out:,} lead(s) created on or after it and "
        f"{activities_out:,} activity row(s) on or after it, or of those leads, left out; "
        f"{reopened:,} outcome(s) closed on or after it read as still open then"
    )


def as_of_view(crm: CrmData, moment: pd.Timestamp) -> CrmData:
    """The export as it would have looked at `moment`: leads created and activities that
    happened before it, and outcomes closed before it (later closes are still open then).

    Lets a recalibration run "as of" a past date on a later export without seeing the future.
    """
    moment = pd.Timestamp(moment)
    leads, outcomes, reopened = leads_as_of(crm.leads, crm.outcomes, moment)
    activities = activities_as_of(crm.activities, leads["lead_id"], moment)
    left_out = len(crm.leads) - len(leads), len(crm.activities) - len(activities)
    crm.quarantine.note(as_of_note(moment, *left_out, reopened))
    return CrmData(
        leads=leads,
        activities=activities,
        outcomes=outcomes,
        export_end=min(moment, crm.export_end),
        quarantine=crm.quarantine,
        data_hash=crm.data_hash,
        source=f"{crm.source} as of {moment:%Y-%m-%d}",
        day_first=crm.day_first,
        lead_columns=crm.lead_columns,
        number_formats=crm.number_formats,
    )


MAX_HEADER_BYTES = 1 << 20  # a header line longer than this is not an export's
MAX_COLUMNS = 5_000
MAX_CELL_CHARS = 100_000


def _decode(data: bytes) -> tuple[str, str]:
    """Text of a file that is not all UTF-8: lines that are not (a legacy export pasted into a
    new one) are read as Windows-1252/Latin-1, each on its own, and counted in the description.
    A file whose other lines are plain ASCII (the same in both) is a Windows-1252 file, not mixed."""
    lines, legacy, utf8_text = [], [], False
    for number, line in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
            utf8_text |= not line.isascii()
        except UnicodeDecodeError:
            legacy.append(number)
            try:
                lines.append(line.decode("cp1252"))
            except UnicodeDecodeError:
                lines.append(line.decode("latin-1"))
    if not utf8_text:
        return "\n".join(lines), "Windows-1252"
    shown = ", ".join(map(str, legacy[:5])) + (" ..." if len(legacy) > 5 else "")
    return "\n".join(lines), f"mixed encodings: {len(legacy)} line(s) not UTF-8, read as Windows-1252 (line {shown})"


def encoding_note(file: str, encoding: str) -> str | None:
    """What to tell a user about how a file was decoded (nothing for UTF-8)."""
    if encoding.startswith("mixed"):
        return f"{file}: {encoding}"
    return None if encoding == "utf-8-sig" else f"{file}: not UTF-8, read as {encoding}"


SEPARATORS = (",", ";", "\t", "|")


def header_separator(path: Path, preferred: str = ",") -> str:
    """`preferred` when the file's header holds it, else the first of `SEPARATORS` the header
    holds (a spreadsheet saved in a locale whose decimal mark is a comma writes ';')."""
    try:
        with path.open("rb") as handle:
            header = handle.readline(MAX_HEADER_BYTES)
    except OSError:
        return preferred  # reported by the reader
    for sep in (preferred, *SEPARATORS):
        if sep.encode() in header:
            return sep
    return preferred


# The first bytes of files a spreadsheet saves that are not text: read as CSV they fail somewhere
# in their binary content, with a message about fields.
SPREADSHEET_MAGIC = {
    b"PK\x03\x04": "a zip archive (an Excel .xlsx or OpenDocument .ods workbook?)",
    b"\xd0\xcf\x11\xe0": "an old Office file (an Excel .xls workbook?)",
}
# Compressed files (an export downloaded as .csv.gz and renamed): read as CSV they fail on NUL bytes.
COMPRESSED_MAGIC = {
    re.compile(rb"\x1f\x8b"): ("gzip", "gunzip"),
    re.compile(rb"BZh[1-9]1AY&SY"): ("bzip2", "bunzip2"),
    re.compile(rb"\xfd7zXZ\x00"): ("xz", "unxz"),
    re.compile(re.escape(b"\x28\xb5\x2f\xfd")): ("zstd", "unzstd"),
}


# Bytes no text CSV holds (tab, line feed, vertical tab, form feed and carriage return aside):
# over 1 in 100 of a file's first bytes, and it is binary data.
CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
TEXT_PROBE_BYTES = 4096


def check_header(path: Path, sep: str) -> list[str]:
    """The header's names, once the header line is known to be a text CSV's with names that
    differ (else a DataError naming the file)."""
    with path.open("rb") as handle:
        header = handle.readline(MAX_HEADER_BYTES + 1)
    if not header:
        raise DataError(f"{path}: the file is empty (not even a header line)")
    for magic, what in SPREADSHEET_MAGIC.items():
        if header.startswith(magic):
            raise DataError(f'{path}: {what}, not a CSV file; save the sheet as "CSV UTF-8" and give that file')
    for magic, (kind, tool) in COMPRESSED_MAGIC.items():
        if magic.match(header):
            raise DataError(f"{path}: {kind}-compressed, not a CSV file: decompress it ({tool}) and give the CSV")
    if header.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in header:
        text = header.rstrip(b"\r\n")
        halves = (text[0::2].strip(b"\x00"), text[1::2].strip(b"\x00"))  # ASCII in UTF-16: every other byte NUL
        utf16 = header.startswith((b"\xff\xfe", b"\xfe\xff")) or (min(map(len, halves)) == 0 < max(map(len, halves)))
        raise DataError(
            f"{path}: "
            + ("UTF-16 text (a spreadsheet's \"Unicode text\"); save it as \"CSV UTF-8\"" if utf16 else
               "the header holds NUL bytes; not a text CSV file")
        )  # fmt: skip
    with path.open("rb") as handle:
        start = handle.read(TEXT_PROBE_BYTES)
    controls = len(start) - len(start.translate(None, CONTROL_BYTES))
    if controls > max(4, len(start) // 100):  # a stray NUL in a value is cleaned later, as other controls are
        # Binary data read as text gave whatever its bytes looked like: "cut short", "classic
        # Mac OS line ends", "a separator inside a value".
        raise DataError(
            f"{path}: not a text CSV file: its first {len(start):,} bytes hold {controls:,} control characters"
            + (" and NUL bytes" if b"\x00" in start else "")
            + " (binary data: an image, an archive, a database file?)"
        )
    if b"\r" in header.rstrip(b"\r\n"):  # one "line" holding carriage returns: they end its lines
        raise DataError(
            f"{path}: its lines end with a carriage return alone (classic Mac OS text), which is not read; "
            "save it again as CSV (Windows or Unix line ends)"
        )
    if len(header) > MAX_HEADER_BYTES:
        raise DataError(f"{path}: the header line is longer than {MAX_HEADER_BYTES:,} bytes; not a CRM export")
    columns = header.count(sep.encode()) + 1
    if columns > MAX_COLUMNS:
        raise DataError(f"{path}: {columns:,} columns in the header; at most {MAX_COLUMNS:,} are read")
    line = header.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")
    names = next(csv.reader([line], delimiter=sep), [])
    _check_names(path, names)
    return names


def read_text_csv(path: Path, *, sep: str = ",", sep_option: bool = False) -> tuple[pd.DataFrame, str]:
    """Read every cell as text (UTF-8, with legacy Latin-1 lines decoded on their own).

    `sep_option`: the command takes `--sep` (a flat CSV to train on), so a file of one column
    is told to use it; other files are read in the separator their header shows.

    Returns:
        The frame and the encoding that worked (or a description of mixed encodings).

    Raises:
        DataError: the file is missing, empty, not a CSV with this separator (broken quoting
            included), has an absurd header (over `MAX_COLUMNS` columns or `MAX_HEADER_BYTES`),
            or a cell over `MAX_CELL_CHARS` characters (named by row and column).
    """
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        names = check_header(path, sep)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    try:
        try:
            encoding = "utf-8-sig"  # the common case, read by pandas' C parser straight from the file
            frame = _parse(lambda: path, sep, path, encoding=encoding)
        except UnicodeDecodeError:
            text, encoding = _decode(path.read_bytes())
            frame = _parse(lambda: io.StringIO(text), sep, path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        if isinstance(exc, pd.errors.EmptyDataError):  # "No columns to parse from file"
            raise DataError(f"{path}: no header: the file holds only spaces and blank lines") from exc
        why = " ".join(str(exc).split())  # pandas ends its messages with a newline
        # Only a header without the separator hints at another one: a broken row is just that.
        one_column = sep == "," and len(names) == 1
        if one_column and sep_option:  # pandas' "Expected 3 fields in line 3, saw 5" would only puzzle
            raise DataError(
                f"{path}: its header holds no {sep!r}, so it reads as one column, and rows do not; if fields are "
                "separated by ';' or a tab, say so (--sep ';' or --sep tab)"
            ) from exc
        if (found := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", why)) and not one_column:
            expected, line, saw = found.groups()
            raise DataError(
                f"{path}: line {line} holds {saw} fields where the rows before it hold {expected}: a separator "
                f"({sep!r}) inside a value that is not quoted? Quote that value, or remove the extra separator"
            ) from exc
        hint = (
            ("; if fields are separated by ';' or a tab, say so (--sep ';' or --sep tab)" if sep_option else
             "; is it a CSV file? Its header shows none of the separators read (, ; tab |)")
            if one_column else ""
        )  # fmt: skip
        raise DataError(f"{path}: cannot read as CSV with separator {sep!r} ({why}){hint}") from exc
    # A name of spaces only is no name: called as pandas calls an empty one.
    frame.columns = [str(c).strip() or f"Unnamed: {i}" for i, c in enumerate(frame.columns)]
    for column in frame.columns:
        lengths = frame[column].str.len()
        if len(lengths) and lengths.max() > MAX_CELL_CHARS:
            row = int(lengths.to_numpy().argmax())
            raise DataError(
                f"{path}: row {row + 1}, column {column!r} holds {int(lengths.iloc[row]):,} characters "
                f"(at most {MAX_CELL_CHARS:,}); a broken quote or a pasted document?"
            )
    check_swallowed_rows(frame, sep, path)
    refuse_short_rows(frame, path, sep)
    return frame, encoding


def refuse_short_rows(frame: pd.DataFrame, path: Path, sep: str) -> None:
    """A DataError naming the rows that hold fewer fields than the header: a row cut short, or
    split in two by a line break in a value that is not quoted, whose second half would read
    as a row of its own. pandas reads the missing fields as blank, so the file is read again
    for its field counts, when its last column has a blank cell at all (a short row's is)."""
    if frame.empty or not (frame.iloc[:, -1] == "").any():
        return
    # Blank names at the header's end (a trailing separator: `Unnamed: 3`) need no field.
    names = [str(c) for c in frame.columns]
    header = len(names)
    while header and (names[header - 1].startswith("Unnamed: ") or not names[header - 1].strip()):
        header -= 1
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        lines = np.fromiter(map(len, csv.reader(handle, delimiter=sep)), dtype=np.int64)
    if header > 1 and (lines == 1).any():
        # A line of spaces alone is no row either (pandas skips it): one blank field. Looked for
        # in a second pass, only when one-field lines are there, so that most files skip a
        # Python test of every line.
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            blank = np.fromiter((len(r) == 1 and not r[0].strip() for r in csv.reader(handle, delimiter=sep)), bool)
        if len(blank) != len(lines):
            raise DataError(f"{path}: the file changed while it was read; read it again once it is written")
        lines[blank] = 0
    at = np.flatnonzero(lines > 0)[1:]  # blank lines are no rows, as pandas skips them; then the header
    counts = lines[at]
    short = np.flatnonzero(counts < header)
    if not len(short):
        return
    shown = ", ".join(f"row {row + 1:,} ({counts[row]} of them)" for row in short[:3])
    more = f", and {len(short) - 3:,} more rows" if len(short) > 3 else ""
    last_rows = short[0] == len(counts) - len(short) and len(short) <= FOOTER_ROWS
    if last_rows and counts[short].max() <= 2 and lines[at[short[0]] - 1] == 0:  # after a blank line
        # A report export's footer ("Confidential Information - Do Not Distribute", a copyright).
        ending = _last_line(path).strip().strip('"')[:60]
        raise DataError(f"{path}: its last {len(short)} row(s) hold 1 or 2 fields ({shown}; the last {ending!r}): a "
                        "report's footer? Export the data alone, or remove those lines")  # fmt: skip
    if short[-1] == len(counts) - 1:
        refuse_cut_short(path, len(counts))  # the last row short, without its line break: said so
    raise DataError(
        f"{path}: fewer fields than the header's {header} in {shown}{more}: a row cut short, or a line break "
        "inside a value that is not quoted? Fix those rows (a field meant blank still needs its separator)"
    )


def _last_line(path: Path) -> str:
    """The file's last line that is not blank (read from its end)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)  # from its end
        handle.seek(max(0, handle.tell() - 4096))
        tail = handle.read().decode("utf-8", errors="replace")
    lines = [line for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


FOOTER_ROWS = 5


def number_rows(frame: pd.DataFrame, path: Path) -> None:
    """Give each row its 1-based data row in the file, as `_row` (which names it in the quarantine)."""
    if "_row" in frame.columns:
        raise DataError(f"{path.name}: a column is named '_row', the name rows are numbered by here: rename it")
    frame.insert(0, "_row", np.arange(1, len(frame) + 1))


def _parse(source: Callable[[], Any], sep: str, path: Path, **options: Any) -> pd.DataFrame:
    """Every cell as text. Rows that end with a separator the header lacks (one more field on
    every row) are read as their header says when those fields are blank; pandas would
    otherwise take the first column for an index and shift every column by one."""
    frame = pd.read_csv(source(), dtype=str, keep_default_na=False, sep=sep, **options)
    if not extra_fields(frame, path):
        return frame
    with warnings.catch_warnings():  # "loss of data": only the blank fields checked above
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(source(), dtype=str, keep_default_na=False, sep=sep, index_col=False, **options)


def extra_fields(frame: pd.DataFrame, path: Path) -> int:
    """How many fields the rows of `frame` (as pandas read it) have beyond its header's names:
    pandas takes them for an index. Blank ones are a trailing separator; ones with values
    are a DataError (a header name is missing)."""
    if isinstance(frame.index, pd.RangeIndex):
        return 0
    extra = frame.index.nlevels
    trailing = frame.iloc[:, len(frame.columns) - extra :]
    if trailing.apply(lambda cells: cells.str.strip().ne("")).any().any():
        raise DataError(
            f"{path}: its rows have {extra} more field(s) than its header has names ({len(frame.columns)}): "
            "name every column in the header"
        )
    return extra


def _check_names(path: Path, names: list[str]) -> None:
    """Two header names that are the same (spaces around them aside) would be read as one
    column by some steps and as two by others: refused, named, before anything is read."""
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        key = name.strip()
        if key and key in seen:
            raise DataError(
                f"{path}: columns {seen[key]} and {number} of the header are both named {key!r} "
                "(spaces around a name do not count): rename or remove one"
            )
        seen.setdefault(key, number)


def check_swallowed_rows(
    frame: pd.DataFrame,
    sep: str,
    path: Path,
    cells_checked: int = 1000,
    name_row: Callable[[int], str] | None = None,
) -> None:
    """A quote opened in a cell and closed only rows later turns those rows into the cell's
    text: a cell whose later lines look like rows of the file is refused, named by row and
    column (`name_row` of its 0-based place, by default "row N"), rather than read with the
    rows it swallowed lost.

    A later line looks like a row when it holds as many separators as a row, or, for the last
    line (where a quote in the swallowed row closed the cell, part way along it), when its
    fields fit the columns they would be in, value or shape (`L0100907` for an id like
    `L0100338`): a note written over several lines, commas and all, does not."""
    if len(frame.columns) < 3:
        return  # a line with one or two separators is ordinary text
    fits = _ColumnFit(frame)
    for column in frame.columns:
        broken = frame[column].str.contains("\n", regex=False).to_numpy()
        for row in np.flatnonzero(broken)[:cells_checked]:
            lines = frame[column].iloc[row].split("\n")
            whole = any(line.count(sep) >= len(frame.columns) - 1 for line in lines[1:])
            if whole or fits.starts_a_row(lines[-1], sep):
                where = name_row(row) if name_row else f"row {row + 1}"
                raise DataError(
                    f"{path}: {where}, column {column!r}: a quoted cell runs over {len(lines)} lines that "
                    f'look like rows of the file: a quote (") opened in that row and closed only later? The rows '
                    "inside it would be lost; fix or remove that quote"
                )


class _ColumnFit:
    """Whether text split at the separator reads as the first fields of a row: each field a
    value its column holds, or of the same shape (letters as `a`, digits as `9`) as one."""

    SAMPLE = 10_000  # rows whose values and shapes a column is known by
    SHAPES = str.maketrans("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "a" * 52 + "9" * 10)

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.known: dict[int, tuple[set[str], set[str]]] = {}

    def _column(self, place: int) -> tuple[set[str], set[str]]:
        if place not in self.known:
            values = {v.strip() for v in self.frame.iloc[: self.SAMPLE, place] if "\n" not in v} - {""}
            self.known[place] = values, {v.translate(self.SHAPES) for v in values}
        return self.known[place]

    def starts_a_row(self, line: str, sep: str) -> bool:
        fields = [f.strip() for f in next(csv.reader([line], delimiter=sep), [])[:-1]]  # the last is cut short
        if len(fields) < 2 or len(fields) >= len(self.frame.columns):
            return False
        fitting = 0
        for place, text in enumerate(fields):
            values, shapes = self._column(place)
            fitting += bool(text) and (text in values or text.translate(self.SHAPES) in shapes)
        return fitting >= 2 and fitting >= 2 * len(fields) / 3


def read_csv_table(
    path: Path,
    required: Iterable[str],
    *,
    sep: str = ",",
    table: str | None = None,
    quarantine: Quarantine | None = None,
) -> pd.DataFrame:
    """Read a table of the export as text columns, with a 1-based `_row` number each.

    Args:
        table: the contract table it is (leads, activities, outcomes): headers are matched
            to the contract's names regardless of case and spacing, with notes in
            `quarantine` on the renamed headers and the ones left unused.

    Raises:
        DataError: the file is missing or unreadable, or lacks a required column.
    """
    if table is not None and sep == ",":
        sep = header_separator(path)
        if sep != "," and quarantine is not None:
            quarantine.note(f"{path.name}: fields separated by {sep!r}")
    frame, encoding = read_text_csv(path, sep=sep)
    if quarantine is not None and (said := encoding_note(path.name, encoding)):
        quarantine.note(said)
    if table is not None:
        if clash := contract_clash(frame.columns, table):
            raise DataError(f"{path}: {clash}")
        renames, unused = contract_names(frame.columns, table)
        frame = frame.rename(columns=renames)
        if quarantine is not None:
            note_column_names(quarantine, path.name, renames, unused)
    require_columns(frame.columns, required, path.name)
    number_rows(frame, path)
    if table is not None and len(frame):
        refuse_cut_short(path, int(frame["_row"].iloc[-1]))
    frame.attrs["sep"] = sep  # its decimal mark where no number says (`lead_number_formats`)
    return frame


def refuse_cut_short(path: Path, last_row: int | None = None) -> None:
    """A DataError for an export file that ends part way through a row: a job still writing
    it, or a copy cut short. What is left reads as a smaller export, and a model trained on a
    half one passed every gate and replaced the champion."""
    if ends_with_line_break(path):
        return
    row = f", row {last_row:,}" if last_row is not None else ""
    raise DataError(
        f"{path.name} ends part way through a line (no line break after its last row{row}): the export looks "
        "cut short or still being written; if the file is complete, end it with a line break"
    )


def refuse_short_last_row(path: Path, sep: str, header: list[str]) -> None:
    """`refuse_cut_short` when the file's last row, without its line break, holds fewer fields
    than the header, as `refuse_short_rows` finds it, from the file's end alone (a reader in
    blocks does not count every row). A complete last row without a line break is read."""
    if ends_with_line_break(path):
        return
    fields = len(header)
    while fields and (header[fields - 1].startswith("Unnamed: ") or not header[fields - 1].strip()):
        fields -= 1  # blank names at the header's end (a trailing separator) need no field
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - _TAIL_BYTES))
        tail = handle.read()
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    if len(next(csv.reader([last], delimiter=sep), [])) < fields:
        refuse_cut_short(path)


_TAIL_BYTES = 1_000_000  # enough for any row but one of pasted documents, which is refused then


def ends_with_line_break(path: Path) -> bool:
    """Whether the file's last byte ends a line (an empty file does)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) in (b"\n", b"\r")


def history_end(leads: pd.DataFrame, outcomes: pd.DataFrame) -> pd.Timestamp:
    """The end of what a training export has seen: the day after its newest lead or close.

    Activities do not move it: a CRM exports meetings booked ahead with the history, and an end
    moved past the export's day would label the newest snapshots "not converted" over days
    whose closes the export cannot hold (one meeting three weeks ahead gave half a test period
    no converted lead). A close or a lead's creation is never booked ahead.
    """
    moments = [leads["created_at"].max(), outcomes["closed_at"].max()]
    # The next midnight, also after a date written without a time (a close on 2025-02-28 is a
    # close of that day, inside the history).
    return max(m for m in moments if pd.notna(m)).floor("D") + pd.Timedelta(days=1)


def booked_ahead_note(export_end: pd.Timestamp, newest: pd.Timestamp, rows: int | None = None) -> str:
    """The note of activities dated on or after a history's end (`rows` of them, when counted)."""
    counted = "activities" if rows is None else f"{rows:,} activit{'y' if rows == 1 else 'ies'}"
    return (
        f"{TABLE_FILES['activities']}: {counted} dated on or after {export_end:%Y-%m-%d} (up to {newest:%Y-%m-%d}), "
        "after the newest lead and outcome, read as booked ahead: the export's history is taken to end on "
        f"{export_end:%Y-%m-%d}, and no snapshot's horizon runs past it"
    )


def created_days(leads: pd.DataFrame) -> pd.Series:
    """The day each lead was created, by lead id: an activity before it is early."""
    return leads.set_index("lead_id")["created_at"].dt.normalize()


def before_creation(activities: pd.DataFrame, created: pd.Series) -> pd.Series:
    """Which activities are dated before the day their lead was created (`created_days`)."""
    return activities["occurred_at"] < activities["lead_id"].map(created)


def before_creation_note(rows: int) -> str | None:
    """The note of `rows` activities dated before the day their lead was created, or None. They
    are read as the lead's engagement, as a visitor's tracked visits before a form fill should
    be; many of them can also mean leads created after their history (an import)."""
    if not rows:
        return None
    return (
        f"{TABLE_FILES['activities']}: {rows:,} activit{'y' if rows == 1 else 'ies'} dated before the day their "
        "lead was created, counted as its engagement (as visits tracked before a form fill are); if leads were "
        "created after their history (an import), their created_at is not when they arrived"
    )


def no_usable_activity(rows: int) -> str:
    """The note of an export whose activities.csv (`rows` rows) gives no lead any activity."""
    return (
        f"{TABLE_FILES['activities']}: no usable activity ({rows:,} rows): every lead reads as never engaged, so "
        "the model learns from fit attributes alone"
    )


def require_columns(columns: Iterable[Any], required: Iterable[str], name: str) -> None:
    """A DataError naming the file, the required columns it lacks and the ones it has."""
    columns = [str(c) for c in columns]
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(columns[:20])
        found = found if len(found) <= 400 else found[:400] + " ..."
        raise DataError(f"{name}: missing required column(s) {', '.join(missing)}; found {found}")


def note_column_names(quarantine: Quarantine, file: str, renames: dict[str, str], unused: list[str]) -> None:
    """Say which headers were read under a contract name and which the contract does not use."""
    for note in column_name_notes(file, renames, unused):
        quarantine.note(note)


def column_name_notes(file: str, renames: dict[str, str], unused: list[str]) -> list[str]:
    """The notes of `note_column_names`, for a caller that keeps its own."""
    notes = []
    if renames:
        notes.append(f"{file}: " + ", ".join(f"{old!r} read as {new}" for old, new in renames.items()))
    if unused:
        shown = ", ".join(repr(c) for c in unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
        notes.append(f"{file}: column(s) not in the data contract, not used: {shown}")
    return notes


def hash_files(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of the input files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _placeholders_to_missing(
    values: pd.Series, missing_tokens: Iterable[str], quarantine: Quarantine | None
) -> pd.Series:
    """`blank_to_missing` on a lead column, with a note on the placeholders it read as blank."""
    cleaned = blank_to_missing(values, missing_tokens)
    if quarantine is None:
        return cleaned
    text = values[cleaned.isna() & values.notna()].astype(str).str.strip()
    quarantine.count(f"leads.{values.name}", "placeholder value(s) read as blank", text[text != ""])
    return cleaned


def missing_id_reasons(rows: pd.DataFrame) -> pd.Series:
    """Why rows without a lead id are set aside: a row of empty fields (what a spreadsheet
    leaves below its data) is said to be one, not a lead that lacks its id."""
    content = rows[[c for c in rows.columns if c != "_row"]]
    blank = content.apply(lambda cells: cells.isna() | cells.astype(str).str.strip().eq("")).all(axis=1)
    return pd.Series(np.where(blank, "blank row (every field empty)", "missing lead_id"), index=rows.index)


def date_problem(column: str, text: pd.Series, day_first: bool | None, failed: pd.Series) -> pd.Series:
    """Why each value of a date column is not read (for the `failed` ones): a numeric date that
    only reads in the other order than the export's is said to be so, not just "not a date"."""
    reasons = f"{column} missing or not a date: " + text.astype(str)
    positions = np.flatnonzero(failed.to_numpy())
    if len(positions):
        # A spreadsheet's day number (45597.47 is 2024-11-01 11:22): the cell kept Excel's number
        # format instead of a date's.
        serial = text.iloc[positions].astype(str).str.strip().str.fullmatch(r"[2-7]\d{4}(?:[.,]\d+)?")
        hit = positions[serial.to_numpy()]
        reasons.iloc[hit] = (
            f"{column} is a spreadsheet's day number, not a date (format the column as dates before saving the "
            "CSV): " + text.iloc[hit].astype(str)
        )
        against, order = against_date_order(text.iloc[positions], day_first)
        hit = positions[against.to_numpy()]
        written, read = ("month", "day") if order else ("day", "month")
        reasons.iloc[hit] = (
            f"{column} is written {written} first (" + text.iloc[hit].astype(str) + f"), but numeric dates are "
            f"read {read} first here: the order of the export's dates (or of the model's training export)"
        )
    return reasons


def after_today(moments: pd.Series) -> pd.Series:
    """Moments after the end of today (UTC, a day's grace for time zones).

    A history cannot hold them (a mistyped year, a meeting booked ahead), and one of them
    would stretch the export's end past its data, leaving the newest leads unlabelled.
    """
    end_of_today = utc_now().normalize() + pd.Timedelta(days=2)
    return moments.notna() & (moments >= end_of_today)


def lead_number_formats(raw_leads: pd.DataFrame, missing_tokens: Iterable[str]) -> dict[str, NumberFormat]:
    """How a training export's numeric lead columns write numbers (`number_formats`; a head
    count's dots group thousands but in an export of decimal points), kept with the model so
    that every batch and request reads its numbers alike."""
    given = {c: blank_to_missing(raw_leads[c], missing_tokens) for c in LEAD_NUMERIC if c in raw_leads}
    return number_formats(given, counts=LEAD_COUNTS, sep=raw_leads.attrs.get("sep"))


def clean_leads(
    raw: pd.DataFrame,
    quarantine: Quarantine,
    missing_tokens: Iterable[str],
    *,
    history: bool = False,
    day_first: bool | None = None,
    formats: dict[str, NumberFormat] | None = None,
) -> pd.DataFrame:
    """Clean lead rows of the contract (text cells, a `_row` number each); unusable rows go
    to the quarantine. Used for exports and for leads sent to the service alike.

    `history`: the rows are a training history, so a lead created after today is quarantined.
    `day_first`: the order of numeric dates (the export's; None: decided by the column).
    `formats`: how the training export wrote each numeric column (`lead_number_formats`,
    kept with the model); None: each column's own values decide, as older models read them.
    """
    leads = raw.copy()
    leads["lead_id"] = blank_to_missing(leads["lead_id"], ("",))  # a blank id is no lead, not the lead ""
    quarantine.add("leads", leads, leads["lead_id"].isna(), missing_id_reasons)
    leads = leads[leads["lead_id"].notna()]

    created, failed = parse_timestamps(leads["created_at"], day_first)
    # Rows are compared by the moment they give, not how they write it: "22/07/2025 13:35" and
    # "Jul 22, 2025 01:35 PM" in two rows of one lead are the row repeated, not a conflict.
    content = [c for c in leads.columns if c != "_row"]
    moment = created.astype("string").where(created.notna(), leads["created_at"].astype("string"))
    identical_repeat = leads[content].assign(created_at=moment).duplicated(keep="first")
    quarantine.add("leads", leads, identical_repeat, DUPLICATE_LEAD)
    conflicting = leads["lead_id"].where(~identical_repeat).duplicated(keep=False) & ~identical_repeat
    quarantine.add("leads", leads, conflicting, "conflicting duplicate lead_id: rows disagree, none is used")
    kept = ~identical_repeat & ~conflicting
    leads, created, failed = leads[kept], created[kept], failed[kept]

    quarantine.add(
        "leads",
        leads,
        failed | created.isna(),
        date_problem("created_at", leads["created_at"], day_first, failed),
    )
    leads = leads.assign(created_at=created)[created.notna()]
    if history:
        late = after_today(leads["created_at"])
        quarantine.add("leads", leads, late, _quoting("created_at is after today: ", "created_at"))
        leads = leads[~late]
        # The dates systems write for "no date": such a lead would be open at every snapshot
        # since 1970 and outnumber the real examples.
        unset = leads["created_at"].isin(NO_DATE_PLACEHOLDERS)
        placeholder = _quoting("created_at is a placeholder for no date: ", "created_at", "%Y-%m-%d %H:%M:%S")
        quarantine.add("leads", leads, unset, placeholder)
        leads = leads[~unset]

    for column in LEAD_CATEGORICAL:
        if column in leads:
            # A blank BANT field means "unknown", one of its values: not worth a note.
            note = None if column in BANT_FIELDS else quarantine
            leads[column] = canonical_spelling(_placeholders_to_missing(leads[column], missing_tokens, note))
    for column in BANT_FIELDS:
        if column not in leads:  # a field the export leaves out is unknown, as a blank one or a request's
            leads[column] = "unknown"
        else:
            spelt = leads[column].dropna().unique()  # each spelling once: four fields of every lead
            folded = leads[column].map({v: BANT_SYNONYMS.get(v.casefold(), v.casefold()) for v in spelt})
            folded = folded.where(folded.notna(), "unknown")
            odd = ~folded.isin(BANT_VALUES)
            quarantine.count(
                f"leads.{column}", f"value(s) not in {BANT_VALUES} read as unknown", leads.loc[odd, column]
            )
            leads[column] = folded.where(~odd, "unknown")
    for column in LEAD_NUMERIC:
        if column in leads:
            written = _placeholders_to_missing(leads[column], missing_tokens, quarantine)
            number_format = None if formats is None else formats.get(column, NumberFormat())
            values, failed = parse_number(written, number_format)
            grouped = dot_grouped(written, number_format)
            quarantine.count(f"leads.{column}", f"value(s) {GROUPED_THOUSANDS}", leads.loc[grouped, column])
            quarantine.count(f"leads.{column}", "value(s) not a number read as missing", leads.loc[failed, column])
            commonest, other = other_currencies(written)
            quarantine.count(
                f"leads.{column}",
                f"amount(s) in another currency than the commonest ({commonest}) read as the same unit; convert "
                "them to one currency for amounts that compare",
                leads.loc[other & ~failed, column],
            )
            # A head count or a revenue below zero is a typo or a sentinel, not an amount (the
            # service refuses one in a request).
            negative = values < 0
            quarantine.count(f"leads.{column}", "value(s) below zero read as missing", leads.loc[negative, column])
            leads[column] = values.mask(negative)
    for column in ("do_not_contact", "sales_accepted"):
        if column in leads:
            values, failed = parse_bool(blank_to_missing(leads[column], missing_tokens))
            quarantine.count(f"leads.{column}", "value(s) not yes/no read as missing", leads.loc[failed, column])
            leads[column] = values
    for column in ("tech_stack", "email"):
        if column in leads:
            leads[column] = blank_to_missing(leads[column], missing_tokens)
    return leads.reset_index(drop=True)


# Midnight of the Unix epoch and of spreadsheets' day zero (Excel's and Lotus's).
NO_DATE_PLACEHOLDERS = pd.to_datetime(["1970-01-01", "1900-01-01", "1899-12-30", "1899-12-31"])
DUPLICATE_ACTIVITY = "duplicate row: same lead, moment, type and value as an earlier row"
DUPLICATE_LEAD = "duplicate row: same lead_id and values as an earlier row"
ACTIVITY_FIELDS = ("lead_id", "occurred_at", "activity_type", "value")


def _quoting(prefix: str, column: str, moment_format: str | None = None) -> Callable[[pd.DataFrame], pd.Series]:
    """Reasons that quote each set-aside row's value of `column` after `prefix` (a moment in
    `moment_format`; by default as pandas writes those rows: the time left out when all are
    at midnight)."""
    if moment_format:
        return lambda rows: prefix + rows[column].dt.strftime(moment_format)
    return lambda rows: prefix + rows[column].astype(str)


def clean_activities(
    raw: pd.DataFrame,
    known_leads: pd.Index,
    quarantine: Quarantine,
    left_out: pd.Index | None = None,
    *,
    history: bool = False,
    day_first: bool | None = None,
    set_aside_leads: Collection[str] | None = None,
) -> pd.DataFrame:
    """Clean activity rows (text cells, a `_row` number each) of the given leads.

    `set_aside_leads`: ids of lead rows quarantined (default: those in `quarantine`), whose
    activities are set aside for their lead's reason, not as of an unknown lead.

    `left_out`: leads dropped for an unknown outcome, whose activities get that reason.
    `history`: the rows are a training history, so an activity after today is quarantined.
    `day_first`: the order of numeric dates (the export's; None: decided by the column).
    """
    acts = raw.copy()
    acts["lead_id"] = blank_to_missing(acts["lead_id"], ("",))
    quarantine.add("activities", acts, acts["lead_id"].isna(), missing_id_reasons)
    acts = acts[acts["lead_id"].notna()]
    if left_out is not None and len(left_out):
        dropped = acts["lead_id"].isin(left_out)
        quarantine.add("activities", acts, dropped, "its lead was left out: outcome unknown")
        acts = acts[~dropped]
    unknown = ~acts["lead_id"].isin(known_leads)
    if set_aside_leads is None:
        set_aside_leads = quarantine.lead_ids_set_aside()
    # Reasons for the rows set aside only: an export holds millions of activities of known leads.
    quarantine.add("activities", acts, unknown, lambda picked: unknown_lead_reasons(picked["lead_id"], set_aside_leads))
    acts = acts[~unknown]
    occurred, failed = parse_timestamps(acts["occurred_at"], day_first)
    quarantine.add(
        "activities",
        acts,
        failed | occurred.isna(),
        date_problem("occurred_at", acts["occurred_at"], day_first, failed),
    )
    acts = acts.assign(occurred_at=occurred)[occurred.notna()]
    if history:
        late = after_today(acts["occurred_at"])
        quarantine.add("activities", acts, late, _quoting("occurred_at is after today: ", "occurred_at"))
        acts = acts[~late]
    kind = snake_case(acts["activity_type"])
    quarantine.add("activities", acts, kind.isna(), "missing activity_type")
    acts = acts.assign(activity_type=kind)[kind.notna()]
    if "value" in acts:
        acts["value"], _ = parse_number(blank_to_missing(acts["value"], ("",)))
    else:
        acts["value"] = np.nan
    # A row repeated to the second (an export run twice into one file, a sync that replays) is
    # one event: counted each time it would inflate every engagement feature. Compared as read,
    # so the service (`serving.direct`) finds the same repeats in a request; by the type as
    # spelt, before types outside the contract become one: a call and a chat at one moment
    # (touches of one day in a date-only export) are two events.
    repeat = acts.duplicated(list(ACTIVITY_FIELDS), keep="first")
    quarantine.add("activities", acts, repeat, DUPLICATE_ACTIVITY)
    if repeat.any() and (acts["occurred_at"] == acts["occurred_at"].dt.normalize()).all():
        quarantine.note(
            f"{TABLE_FILES['activities']}: occurred_at holds dates without a time of day, so the "
            f"{int(repeat.sum()):,} repeats above may be touches of one type on one day (two email opens) counted "
            "once; an export with times counts each"
        )
    acts = acts[~repeat]
    other = ~acts["activity_type"].isin(ACTIVITY_TYPES)
    quarantine.count(
        "activities", f"row(s) of types outside the contract counted as '{OTHER_ACTIVITY}'",
        acts.loc[other, "activity_type"],
    )  # fmt: skip
    acts.loc[other, "activity_type"] = OTHER_ACTIVITY
    return acts[["_row", "lead_id", "occurred_at", "activity_type", "value"]].reset_index(drop=True)


def clean_outcomes(
    raw: pd.DataFrame,
    leads: pd.DataFrame,
    quarantine: Quarantine,
    *,
    day_first: bool | None = None,
    statuses: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One outcome row per lead; leads the export gives no outcome row are open.

    A lead whose every outcome row was quarantined has an unknown outcome, not an open one:
    taking it as open would teach the model that a known converter never converted. It is
    left out of the result; `drop_unknown_outcomes` then quarantines its lead row.
    """
    out = raw.copy()
    out["lead_id"] = blank_to_missing(out["lead_id"], ("",))
    quarantine.add("outcomes", out, out["lead_id"].isna(), missing_id_reasons)
    out = out[out["lead_id"].notna()]
    unknown = ~out["lead_id"].isin(leads["lead_id"])
    # An id spelt another way than in leads.csv names a lead whose outcome is then unknown: taken
    # as open (no outcome row), a known converter would be learnt as one that never converted.
    near = near_ids(out.loc[unknown, "lead_id"], leads["lead_id"])
    reasons = unknown_lead_reasons(out["lead_id"], quarantine.lead_ids_set_aside())
    reasons[near.index] = "lead_id differs from one in leads.csv only by case, spaces or leading zeros: " + near
    quarantine.add("outcomes", out, unknown, reasons)
    out = out[~unknown]
    with_rows = leads["lead_id"].isin(out["lead_id"]) | leads["lead_id"].isin(near)
    status = outcome_statuses(out["status"], statuses)
    quarantine.add(
        "outcomes",
        out,
        status.isna(),
        f"status not one of {'/'.join(OUTCOME_STATUSES)} (or params.yaml data.outcome_statuses): "
        + out["status"].astype(str),
    )
    out = out.assign(status=status)[status.notna()]
    closed = out["status"] != "open"
    if "closed_at" not in out:
        if closed.any():  # else every closed row would be quarantined one by one, and "too few examples" said
            columns = ", ".join(c for c in raw.columns if c != "_row")
            raise DataError(
                f"{TABLE_FILES['outcomes']}: no closed_at column, which converted and lost rows need (the moment "
                f"each closed; {int(closed.sum()):,} such rows); columns are {columns}"
            )
        out["closed_at"] = ""
    closed_at, _ = parse_timestamps(out["closed_at"], day_first)
    bad = closed & closed_at.isna()
    text = out["closed_at"].astype(str)
    reasons = date_problem("closed_at", text, day_first, bad)  # a date in the other order says so
    generic = reasons.str.startswith("closed_at missing")
    quarantine.add("outcomes", out, bad, reasons.mask(generic, "closed lead without a valid closed_at: " + text))
    out = out.assign(closed_at=closed_at.where(closed))[~bad]
    late = after_today(out["closed_at"])
    quarantine.add("outcomes", out, late, _quoting("closed_at is after today: ", "closed_at"))
    out = out[~late]
    same = out.duplicated(["lead_id", "status", "closed_at"], keep="first")
    quarantine.add("outcomes", out, same, "duplicate row: same lead_id, status and closed_at as an earlier row")
    out = out[~same]
    repeated = out.duplicated("lead_id", keep=False)
    quarantine.add("outcomes", out, repeated, "more than one outcome row for this lead_id")
    out = out[~repeated]
    created = out["lead_id"].map(leads.set_index("lead_id")["created_at"])
    # A date without a time of day (Salesforce's CloseDate) reads as midnight: on the day the
    # lead was created it means "closed that day", not before the lead existed. That day is the
    # CRM's local one while `created_at` is read in UTC (an evening lead west of Greenwich is
    # created the next UTC day): up to a day and 14 hours, the widest offset, after the date.
    gap = created - out["closed_at"]
    that_day = (out["closed_at"] == out["closed_at"].dt.normalize()) & (gap > pd.Timedelta(0))
    out["closed_at"] = out["closed_at"].mask(that_day & (gap < pd.Timedelta(hours=38)), created)
    before = out["closed_at"].notna() & (out["closed_at"] < created)
    quarantine.add("outcomes", out, before, "closed_at is before the lead's created_at")
    out = out[~before]
    missing = ~leads["lead_id"].isin(out["lead_id"]) & ~with_rows
    if missing.any():
        quarantine.note(f"outcomes: {int(missing.sum())} lead(s) without an outcome row taken as open")
        extra = pd.DataFrame({"lead_id": leads.loc[missing, "lead_id"], "status": "open", "closed_at": pd.NaT})
        out = pd.concat([out[["lead_id", "status", "closed_at"]], extra], ignore_index=True)
    return out[["lead_id", "status", "closed_at"]].reset_index(drop=True)


def drop_unknown_outcomes(
    leads: pd.DataFrame, outcomes: pd.DataFrame, quarantine: Quarantine
) -> tuple[pd.DataFrame, pd.Index]:
    """Quarantine and leave out the leads `clean_outcomes` found no usable outcome row for.

    Returns:
        The remaining leads, and the ids left out (their activities go with them).
    """
    unknown = ~leads["lead_id"].isin(outcomes["lead_id"])
    quarantine.add("leads", leads, unknown, "outcome unknown: every outcome row of this lead was quarantined")
    return leads[~unknown], pd.Index(leads.loc[unknown, "lead_id"])


def _refuse_without_leads(leads: pd.DataFrame, rows: int, directory: Path, quarantine: Quarantine) -> None:
    if leads.empty:
        why = quarantine.summary() or "the file has a header and no rows"
        raise DataError(f"{directory}: none of the {rows:,} lead rows can be used: {why}", quarantine)


def export_folder(directory: str | Path) -> Path:
    """The CRM export folder, or a DataError that says what the path is instead (a flat CSV
    with one row per lead is the usual mistake, and trains another way)."""
    directory = Path(directory)
    wanted = f"a CRM export folder with {', '.join(TABLE_FILES.values())}"
    if directory.is_dir():
        tables = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in FLAT_SUFFIXES and p.is_file())
        if tables and not (directory / TABLE_FILES["leads"]).exists():
            shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
            flat = directory / (tables[0] if len(tables) == 1 else "FILE")
            raise DataError(f"{directory} has no {TABLE_FILES['leads']}, so it is not {wanted}; it holds {shown}"
                            f"{_flat_hint(flat)}")  # fmt: skip
        return directory
    if not directory.exists():
        raise DataError(f"{directory}: no such folder; give {wanted}")
    hint = _flat_hint(directory) if directory.suffix.lower() in FLAT_SUFFIXES else ""
    raise DataError(f"{directory} is a file, not {wanted}{hint}")


FLAT_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})


def _flat_hint(path: Path) -> str:
    return f"; a flat CSV with one row per lead trains with `leadscore train --data {path} --label COLUMN`"


def load_crm(
    directory: str | Path, missing_tokens: Iterable[str] = ("",), statuses: Mapping[str, str] | None = None
) -> CrmData:
    """Load a CRM export directory holding leads.csv, activities.csv and outcomes.csv.

    Bad rows are quarantined with a reason each (see `CrmData.quarantine`), never
    dropped silently.

    Raises:
        DataError: a file is missing or unreadable, or lacks a required column.
    """
    directory = export_folder(directory)
    paths = {name: directory / file for name, file in TABLE_FILES.items()}
    quarantine = Quarantine()
    raw_leads = read_csv_table(paths["leads"], LEAD_REQUIRED, table="leads", quarantine=quarantine)
    raw_acts = read_csv_table(paths["activities"], ACTIVITY_REQUIRED, table="activities", quarantine=quarantine)
    raw_outcomes = read_csv_table(paths["outcomes"], OUTCOME_REQUIRED, table="outcomes", quarantine=quarantine)

    # One order of numeric dates for the whole export (a CRM writes every date alike).
    raw = {"leads": raw_leads, "activities": raw_acts, "outcomes": raw_outcomes}
    refuse_mixed_date_orders({paths[name].name: table for name, table in raw.items()})
    day_first = export_date_order(raw_leads, raw_outcomes, raw_acts)
    lead_columns = lead_columns_with_values(raw_leads, missing_tokens)
    note_lead_columns(quarantine, paths["leads"].name, lead_columns)
    formats = lead_number_formats(raw_leads, missing_tokens)
    leads = clean_leads(raw_leads, quarantine, missing_tokens, history=True, day_first=day_first, formats=formats)
    _refuse_without_leads(leads, len(raw_leads), directory, quarantine)
    outcomes = clean_outcomes(raw_outcomes, leads, quarantine, day_first=day_first, statuses=statuses)
    leads, left_out = drop_unknown_outcomes(leads, outcomes, quarantine)
    _refuse_without_leads(leads, len(raw_leads), directory, quarantine)
    activities = clean_activities(
        raw_acts, pd.Index(leads["lead_id"]), quarantine, left_out, history=True, day_first=day_first
    )
    if activities.empty:
        quarantine.note(no_usable_activity(len(raw_acts)))
    if early := before_creation_note(int(before_creation(activities, created_days(leads)).sum())):
        quarantine.note(early)
    export_end = history_end(leads, outcomes)
    ahead = activities["occurred_at"] >= export_end
    if ahead.any():
        quarantine.note(booked_ahead_note(export_end, activities.loc[ahead, "occurred_at"].max(), int(ahead.sum())))
    return CrmData(
        leads=leads.drop(columns="_row"),
        activities=activities.drop(columns="_row"),
        outcomes=outcomes,
        export_end=export_end,
        quarantine=quarantine,
        data_hash=hash_files(paths.values()),
        source=str(directory),
        day_first=day_first,
        lead_columns=lead_columns,
        number_formats=formats,
        sep=raw_leads.attrs.get("sep"),
    )
