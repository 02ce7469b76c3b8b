"""Flat CRM exports (one row per lead, aggregates already made): roles, types, cleaning."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.clean import (
    FALSE_TOKENS,
    GROUPED_THOUSANDS,
    TRUE_TOKENS,
    NumberFormat,
    against_date_order,
    blank_to_missing,
    canonical_spelling,
    dot_grouped,
    looks_boolean,
    number_formats,
    numbers_as_text,
    parse_bool,
    parse_number,
    parse_timestamps,
    spreadsheet_errors,
    stored_formats,
    value_currencies,
)
from features.ingest import (
    SEPARATORS,
    DataError,
    Quarantine,
    after_today,
    encoding_note,
    hash_files,
    number_rows,
    read_text_csv,
)
from features.params import FlatParams, UniqueKeyLoader
from features.spec import FeatureGroup

ColumnType = Literal["numeric", "boolean", "categorical"]
POSITIVE_WORDS = frozenset(TRUE_TOKENS | {"converted", "won", "closed won", "positive", "purchased"})
NEGATIVE_WORDS = frozenset(FALSE_TOKENS | {"lost", "not converted", "closed lost", "negative"})
# Names that suggest behaviour rather than who the lead is: they feed the engagement sub-score.
_ENGAGEMENT_WORDS = re.compile(
    r"visit|page|time|duration|activity|email|click|open|download|webinar|session|bounce|exit|view",
    re.IGNORECASE,
)
# LightGBM refuses feature names with JSON's special characters; exports use them freely. A
# backslash it takes, but writes into its model dump unescaped, which then cannot be read back
# (`$\alpha$`): it becomes the set-minus sign, which looks alike.
_NAME_SAFE = str.maketrans({"[": "(", "]": ")", "{": "(", "}": ")", '"': "'", ",": ";", ":": ";", "\\": "\u2216"})
_NUMERIC_FAILURE_SHARE = 0.02
_DATE_SHARE = 0.95
_MOSTLY = 0.5  # dates in two orders read half in one at least
# Digits led by a zero ("02134") in at least this share of a column's values: codes (postal,
# account), whose zeros a number would lose.
_LEADING_ZERO = r"0\d+"
_CODE_SHARE = 0.01
_TIME_COLUMN_SHARE = 0.5  # below it, --time names a column that is not dates


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


class FlatProfile(BaseModel):
    """How to read a flat export: column roles and CSV dialect (flags or a YAML file)."""

    model_config = ConfigDict(extra="forbid")

    label: str
    # The label value(s) that mean converted; a CRM may write two ("Won", "Closed Won").
    positive: list[str] | None = None
    # The value(s) that mean lost: rows of any other value (open deals) have no outcome yet.
    negative: list[str] | None = None
    id: str | None = None
    drop: list[str] = []
    sep: str = Field(",", min_length=1, max_length=1, description="one character, e.g. ';', or tab")
    time: str | None = None
    types: dict[str, ColumnType] = {}

    @field_validator("label", "id", "time", mode="before")
    @classmethod
    def _scalar_as_text(cls, value: Any) -> Any:
        # YAML reads `positive: 1` or `positive: TRUE` as a number or a boolean; a column name
        # or a label value is the text it was written as, as on the command line.
        return _as_text(value)

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # One value (`positive: Won`) or several (`positive: [Won, Closed Won]`), each as written.
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("expected at least one value, e.g. [Won, Closed Won]")
            return [_as_text(v) for v in value]
        return None if value is None else [_as_text(value)]

    @field_validator("drop", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:
        return [_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("types", mode="before")
    @classmethod
    def _type_keys_as_text(cls, value: Any) -> Any:
        return {_as_text(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("sep", mode="before")
    @classmethod
    def _spelled_tab(cls, value: Any) -> Any:
        # A tab is hard to type on a command line or in single-quoted YAML: accept its spellings.
        return "\t" if isinstance(value, str) and value.strip().casefold() in {"\\t", "tab"} else value

    @model_validator(mode="after")
    def _label_has_one_role(self) -> FlatProfile:
        if self.negative is not None:
            if self.positive is None:
                raise ValueError("negative: the lost value is given, so the converted one must be too (positive)")
            won = {_label_spelling(v) for v in self.positive}
            both = [v for v in self.negative if _label_spelling(v) in won]  # "1" and "1.0" too
            if both:
                raise ValueError(f"negative: {both[0]!r} is a positive value too")
        others = {"id": [self.id], "drop": self.drop, "time": [self.time], "types": list(self.types)}
        for role, columns in others.items():
            if self.label in columns:
                raise ValueError(f"the label column {self.label!r} cannot also be given as {role}")
        for role, column in (("id", self.id), ("time", self.time)):
            if column and column in self.drop:
                raise ValueError(f"the {role} column {column!r} cannot also be dropped")
        if self.id and self.id == self.time:
            raise ValueError(f"the id column {self.id!r} cannot also be the time column")
        roles = {self.id: "id", self.time: "time", **dict.fromkeys(self.drop, "drop")}
        for column in self.types:
            role = roles.get(column)
            if role:
                raise ValueError(f"types: {column!r} is given as {role} too, so it is not a feature to type")
        return self


def _problem(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key (the keys are {', '.join(FlatProfile.model_fields)})"
    if error["type"] == "list_type":
        return "expected a list, e.g. [Tags, Lead Quality]"
    return error["msg"].removeprefix("Value error, ")


def make_profile(settings: dict[str, Any], source: str = "the command line") -> FlatProfile:
    """Validate profile settings, with errors that name each bad key.

    Raises:
        DataError: an unknown key or a bad value.
    """
    try:
        return FlatProfile.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(".".join(map(str, e["loc"])) + ": " * bool(e["loc"]) + _problem(e) for e in exc.errors())
        raise DataError(f"invalid settings from {source}: {problems}") from exc


class _ProfileLoader(UniqueKeyLoader):
    """YAML as written (`UniqueKeyLoader`): only true/false are booleans (`positive: Yes` means
    the text Yes), and a key written twice is refused (the last `label:` was kept without a word)."""


def load_profile(path: str | Path, **flags: Any) -> tuple[FlatProfile, list[str]]:
    """Read a profile YAML; flags given on the command line override its keys.

    Returns:
        The profile and the keys a flag replaced (a flag's `drop` replaces the file's list).
    """
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_ProfileLoader) or {}
    except OSError as exc:
        raise DataError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read profile {path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, started = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and started:
            problem += f", {context} that starts on line {started.line + 1}"
        raise DataError(f"cannot read profile {where}: not valid YAML ({problem})") from exc
    if not isinstance(raw, dict):
        raise DataError(
            f"invalid profile {path}: expected keys such as label, positive, negative, id, drop, sep, time, types; "
            f"found a {type(raw).__name__}"
        )
    given = {k: v for k, v in flags.items() if v not in (None, [], "")}
    replaced = sorted(k for k in given if k in raw)
    raw.update(given)
    return make_profile(raw, f"profile {path}"), replaced


@dataclass
class FlatData:
    """A cleaned flat export: features, 0/1 label, ids, optional times."""

    features: pd.DataFrame
    label: pd.Series
    ids: pd.Series
    times: pd.Series | None
    schema: dict[str, Any]
    quarantine: Quarantine
    data_hash: str
    source: str
    id_leaks: dict[str, str] = field(default_factory=dict)  # identifier column -> how it leaks
    # The numeric columns' values as written (kept rows): another model reads them its own way.
    numbers_written: pd.DataFrame | None = None


def read_as_model(
    features: pd.DataFrame, written: pd.DataFrame, ours: dict[str, Any], theirs: dict[str, Any]
) -> pd.DataFrame | None:
    """These feature rows as a model of another flat schema (`theirs`, a champion's) reads them:
    each numeric column both read, parsed with that model's number format where this run's
    (`ours`) differs (a champion that reads "1.532" as 1.532, where this run reads 1532, is scored
    so in service); None when the two read every number alike. `written`: the numeric columns'
    values as written, row for row with `features`."""
    our_formats = stored_formats(ours.get("number_formats")) or {}
    their_formats = stored_formats(theirs.get("number_formats"))  # None: a model from before they were kept
    read: dict[str, np.ndarray] = {}
    for column, kind in theirs.get("columns", {}).items():
        if kind != "numeric" or ours["columns"].get(column) != "numeric" or column not in written:
            continue
        their_format = None if their_formats is None else their_formats.get(column, NumberFormat())
        if their_format == our_formats.get(column, NumberFormat()):
            continue
        values = blank_to_missing(written[column], theirs.get("missing_tokens", ours["missing_tokens"]))
        theirs_read = parse_number(values, their_format)[0].to_numpy(dtype=float)
        name = model_column_name(column)
        if not np.array_equal(theirs_read, features[name].to_numpy(dtype=float), equal_nan=True):
            read[name] = theirs_read
    return features.assign(**read) if read else None


def identifier_leak(values: pd.Series, label: pd.Series, threshold: float) -> str | None:
    """How an identifier gives the label away, or None: its letters (`W-17` for won,
    `L-18` for lost) or its number (ids handed out outcome by outcome)."""
    from sklearn.metrics import roc_auc_score

    y = label.to_numpy()
    if len(np.unique(y)) < 2:
        return None
    text = values.fillna("").astype(str)
    shape = text.str.replace(r"\d+", "#", regex=True)
    if 1 < shape.nunique() <= 50:
        rate = pd.Series(y, index=text.index).groupby(shape).transform("mean")
        auc = roc_auc_score(y, rate)
        if auc >= threshold:
            shown = ", ".join(repr(v) for v in shape.value_counts().index[:3])
            return f"its letters ({shown}) alone give ROC AUC {auc:.3f}"
    number = pd.to_numeric(text.str.extract(r"(\d+)", expand=False), errors="coerce")
    known = number.notna().to_numpy()
    if known.mean() > 0.9 and number.nunique() > 20 and len(np.unique(y[known])) == 2:
        auc = roc_auc_score(y[known], number[known])
        auc = max(auc, 1 - auc)
        if auc >= threshold:
            return f"its number, in order, alone gives ROC AUC {auc:.3f}"
    return None


_WHOLE_NUMBER = re.compile(r"\+?(-?\d+)(?:\.0*)?")


def _label_spelling(value: object) -> object:
    """A label value as compared: case folded, a whole number without its decimals ("1.0": "1")."""
    if not isinstance(value, str):
        return value
    whole = _WHOLE_NUMBER.fullmatch(value.strip())
    return str(int(whole.group(1))) if whole else value.casefold()


def label_values(values: list[str] | None) -> str:
    """Label values as a sentence names them: 'Won' or 'Won', 'Closed Won'."""
    return ", ".join(map(repr, values or []))


def _label(
    values: pd.Series,
    column: str,
    positive: list[str] | None,
    negative: list[str] | None = None,
    notes: list[str] | None = None,
) -> pd.Series:
    """1 for converted, 0 for lost, missing for a blank label or (with `negative`) any other
    value: no outcome yet. A spelling given among others that this file lacks (a month in which
    one pipeline closed nothing) is said in `notes`; one of each role must be found."""
    # "Yes" and "yes" are one class, as a category's spellings are one level, and "1" and "1.0"
    # (a column re-saved by a spreadsheet) are one too.
    values = values.map(_label_spelling)
    present = values.dropna()
    classes = sorted(present.unique().tolist(), key=str)
    if positive:
        named = {_label_spelling(str(value)) for value in [*positive, *(negative or [])]}
        unnamed = [str(c) for c in classes if c not in named]

        def classes_of(role: str, given: list[str]) -> list[Any]:
            found = [c for c in classes if c in {_label_spelling(str(value)) for value in given}]
            absent = [value for value in given if _label_spelling(str(value)) not in classes]
            for value in absent:
                # A typo or a renamed stage ("Closd Won" for "Closed Won") would set that value's rows
                # aside as open, unsaid but for a note: refused, as a single spelling not found is.
                near = difflib.get_close_matches(str(_label_spelling(str(value))), unnamed, n=1, cutoff=0.8)
                if near or not found:
                    meant = f" (is {near[0]!r} meant?)" if near else ""
                    raise DataError(
                        f"label column {column!r}: {role} value {value!r} not found{meant}; values are {classes[:10]}"
                    )
            if absent and notes is not None:
                notes.append(f"label column {column!r}: {role} value(s) {label_values(absent)} not in this file")
            return found

        won = classes_of("positive", positive)
        converted = values.isin(won).astype("float64")
        if negative:
            return converted.where(values.isin([*won, *classes_of("negative", negative)]))
        others = [c for c in classes if c not in won]
        if len(others) != 1:
            raise DataError(
                f"label column {column!r} has {len(classes)} classes {classes[:10]}, {len(others)} of them not "
                f"{label_values(positive)}; a binary label is needed, or --negative naming the lost value (rows of "
                "other values, such as open deals, are then set aside); each of several values that mean converted "
                "(or lost) is given with its own --positive (--negative)"
            )
        return converted.where(values.notna())
    if len(classes) != 2:
        blanks = int(values.isna().sum())
        blank_note = (f" ({blanks:,} rows have a blank label, read as no outcome yet: if a blank means lost, "
                      "export it as a value such as 0 or no)") if blanks and len(classes) == 1 else ""  # fmt: skip
        raise DataError(
            f"label column {column!r} has {len(classes)} class(es) {classes[:10]}{blank_note}; a binary label is "
            "needed: a column of two values, one of them the converted one (export it so; --positive names that value "
            "when it is not a word such as yes, won or converted; with more values, --positive and --negative "
            "name the converted and the lost one and rows of other values are set aside)"
        )
    folded = [str(c).casefold() for c in classes]
    positives = [c for c, f in zip(classes, folded, strict=True) if f in POSITIVE_WORDS]
    negatives = [c for c, f in zip(classes, folded, strict=True) if f in NEGATIVE_WORDS]
    if len(positives) == 1 and len(negatives) == 1:
        return (values == positives[0]).astype("float64").where(values.notna())
    raise DataError(f"label column {column!r} has classes {classes}: pass --positive to say which means converted")


def infer_column(values: pd.Series, params: FlatParams) -> tuple[str, str]:
    """Classify a cleaned text column: numeric, boolean, categorical, or why it is left out."""
    present = values.dropna()
    if present.empty:
        return "excluded", "empty (no values)"
    if present.nunique() == 1:
        if len(present) == len(values):
            return "excluded", f"constant ({present.iloc[0]!r})"
        # A flag an export writes as a value or nothing ("Yes" or blank): two states, not one.
        return "categorical", f"{present.iloc[0]!r} or blank, the rows with it told from those without"
    if looks_boolean(present):
        return "boolean", ""
    coded = present.str.fullmatch(_LEADING_ZERO)
    if coded.mean() >= _CODE_SHARE and present.str.fullmatch(r"\d+").all() and _code_like(present, coded):
        kind, why = _text_kind(present, values, params)
        example = present[coded.to_numpy()].iloc[0]
        codes = f"codes, not amounts: values such as {example!r} keep their leading zeros"
        return kind, f"{why}; {codes}" if why else codes
    _, failed = parse_number(present)
    if failed.mean() <= _NUMERIC_FAILURE_SHARE:
        named = value_currencies(present).dropna().unique()
        if len(named) > 1:  # "USD 5" and "EUR 5" read as 5 alike: said, as a spreadsheet would not
            return "numeric", (
                f"amounts in more than one currency ({', '.join(sorted(named))}) read as one unit; convert them to "
                "one currency for amounts that compare exactly"
            )
        return "numeric", ""
    dates = _date_share(present)
    if dates >= _DATE_SHARE:
        return "excluded", "a date (pass --time to split by it)"
    if dates >= _MOSTLY:  # dates written in two orders
        return "excluded", (
            f"dates, {dates:.0%} of them readable in one order (day and month in both orders?); "
            "pass --time to split by it"
        )
    kind, why = _text_kind(present, values, params)
    if kind == "excluded":
        return kind, why
    if failed.mean() <= 0.5:  # mostly numbers: say why it is not read as one
        examples = ", ".join(map(repr, present[failed.to_numpy()].unique()[:3]))
        return "categorical", (
            f"{1 - failed.mean():.0%} of its values are numbers, the others not (such as {examples}); "
            "give it the numeric type in a profile (`types:`) to read those as missing instead"
        )
    return "categorical", ""


def _text_kind(present: pd.Series, values: pd.Series, params: FlatParams) -> tuple[str, str]:
    """A text column is categorical unless it has too many distinct values to be one."""
    levels = present.str.casefold().nunique()
    if levels > params.max_category_levels or levels > params.max_category_share * len(values):
        return "excluded", f"free text or an identifier ({levels} distinct values)"
    return "categorical", ""


def _code_like(present: pd.Series, coded: pd.Series) -> bool:
    """Codes are written to one width (02134, 10001) or lead with zeros often (SKUs of 3 to 6
    digits); a count with a stray "05" among 5 and 123 is a number."""
    return present.str.len().value_counts(normalize=True).iloc[0] >= 0.9 or coded.mean() >= 0.1


def _date_share(values: pd.Series) -> float:
    """The share of a sample of the values that reads as dates; 0 when one holds no digit."""
    sample = values.head(2000)
    return float(parse_timestamps(sample)[0].notna().mean()) if sample.str.contains(r"\d").all() else 0.0


def _number_kind(values: pd.Series) -> str:
    """ "fractions" for numbers with fractions ("1534.27": a different one in every row is an
    amount, a duration or a rate, not an identifier), "whole" for whole numbers ("660737", an
    identifier or a count), "" for values that do not read as numbers."""
    parsed, failed = parse_number(values)
    if failed.mean() > _NUMERIC_FAILURE_SHARE:
        return ""
    return "fractions" if (parsed.dropna() % 1 != 0).mean() >= 0.1 else "whole"


def model_column_name(column: str) -> str:
    """The name a flat export's column has as a feature: LightGBM's forbidden characters
    (`[]{}":,` and the backslash) replaced by look-alikes."""
    return column.translate(_NAME_SAFE)


def flat_number_formats(
    rows: pd.DataFrame, columns: dict[str, str], missing_tokens: Iterable[str], sep: str | None = None
) -> dict[str, NumberFormat]:
    """How a flat training export's numeric columns write numbers (`number_formats`; `sep`, the
    file's field separator, where no value says)."""
    numeric = {c: blank_to_missing(rows[c], missing_tokens) for c, kind in columns.items() if kind == "numeric"}
    return number_formats(numeric, sep=sep)


def clean_flat_columns(frame: pd.DataFrame, schema: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Apply a learned flat schema to raw text rows: the training and serving path alike.

    Returns:
        The feature columns (floats and text, named by `model_column_name`) and notes on
        values that could not be read.
    """
    tokens = schema["missing_tokens"]
    out: dict[str, pd.Series] = {}
    notes = []
    # Numbers as the training export wrote them (a model from before the setting: as it read them).
    formats = stored_formats(schema.get("number_formats"))
    for column, kind in schema["columns"].items():
        raw = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        if kind == "numeric":
            raw = numbers_as_text(raw)  # a number sent as a number stays that number (1.532 as sent)
        values = blank_to_missing(raw, tokens)
        blank = raw[values.isna()]  # a formula error is a token of models trained since they were one
        errors = blank[spreadsheet_errors(blank)] if len(blank) else blank
        if len(errors):
            shown = ", ".join(repr(v) for v in errors.astype(str).str.strip().value_counts().index[:3])
            notes.append(f"{column}: {len(errors)} spreadsheet formula error(s) read as missing ({shown})")
        if kind == "boolean":
            out[column], failed = parse_bool(values)
        elif kind == "numeric":
            number_format = None if formats is None else formats.get(column, NumberFormat())
            out[column], failed = parse_number(values, number_format)
            grouped = dot_grouped(values, number_format)
            if grouped.any():
                example = values[grouped].iloc[0]
                shown = f"{int(grouped.sum())} value(s) such as {example!r}"
                notes.append(f"{column}: {shown} {GROUPED_THOUSANDS}")
        else:
            out[column], failed = canonical_spelling(values), pd.Series(False, index=frame.index)
        if failed.any():
            # The values themselves, as the CRM path quotes them: a count alone sends the user
            # searching the file.
            unread = values[failed].astype(str).str.strip()
            commonest = unread.value_counts(sort=False).sort_index(kind="stable").sort_values(ascending=False).index
            shown = ", ".join(repr(value) for value in commonest[:3])
            notes.append(f"{column}: {int(failed.sum())} value(s) not {kind} read as missing ({shown})")
    return pd.DataFrame(out, index=frame.index).rename(columns=model_column_name), notes


DUPLICATE_ROW = "duplicate row: same id and values as an earlier row, counted once"


def _folded_name(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


MAX_KEYS_MATCHED = 20


def flat_header_renames(header: Iterable[str], schema: dict[str, Any]) -> dict[str, str]:
    """A scored file's headers spelt otherwise than the model's columns (or its id column) by
    case, spaces or punctuation alone (`lead source`, `Total Visits` for `TotalVisits`), each
    to the name it means: one such header per column the file lacks, never over one it has."""
    header = [str(h) for h in header]
    wanted = [*schema.get("columns", {}), *([schema["id"]] if schema.get("id") else [])]
    missing = {_folded_name(c): c for c in wanted if c not in header}
    candidates: dict[str, list[str]] = {}
    for name in header:
        if name not in wanted and (meant := missing.get(_folded_name(name))):
            candidates.setdefault(meant, []).append(name)
    return {given[0]: meant for meant, given in candidates.items() if len(given) == 1}


def near_headers(absent: Iterable[str], header: Iterable[str]) -> dict[str, str]:
    """For each column a scored file lacks, a header of the file that looks like a typo of it
    (`Lead Sorce`), as the service names the key meant."""
    unused = [str(h) for h in header]
    near = {}
    for column in absent:
        # 0.8: a typo ("Lead Sorce", "Cty"), not a word that shares letters ("Colour", "Country").
        if match := difflib.get_close_matches(column, unused, n=1, cutoff=0.8):
            near[column] = match[0]
    return near


def _as_sent(value: Any) -> str:
    """A value of a request as JSON spells it (`true`, `null`, `1.5`), text quoted as the other
    messages quote names ('lots', accents as typed)."""
    return repr(value) if isinstance(value, str) else json.dumps(value)


def field_problems(schema: dict[str, Any], rows: list[dict[str, Any] | None]) -> list[tuple[int, str | None, str]]:
    """(row, key or None for the whole row, why) for flat rows sent one by one, as the service
    gets them in `fields`: a key spelt otherwise than one of the schema's columns ("lead source"
    for "Lead Source"), a row with none of them, a value its column cannot read. A file's
    reading notes these and reads such values as missing; a request is scored for the lead as
    sent or refused, so each is an error there. Keys of no column at all pass: the export's
    identifiers and left-out columns."""
    columns = schema["columns"]
    header = set(schema.get("header") or ())  # not kept by models trained before it was
    folded: dict[str, str] = {}
    for column in columns:
        folded.setdefault(_folded_name(column), column)
    shown = ", ".join(map(repr, list(columns)[:6])) + (f" and {len(columns) - 6} more" if len(columns) > 6 else "")
    problems: list[tuple[int, str | None, str]] = []
    for i, row in enumerate(rows):
        given = row or {}
        wrong = []
        unknown = [key for key in given if key not in columns and key not in header]
        # Case and spacing are matched for every key; the fuzzy match compares a key with every
        # column, so a body of thousands of made-up keys held a worker for minutes: it is tried
        # on the first few only (past them, a model that kept its export's header refuses the
        # rest as no column of it; an older one lets them pass, as keys of no column).
        fuzzy = 0
        for key in unknown:
            meant = folded.get(_folded_name(key))
            if meant is None and fuzzy < MAX_KEYS_MATCHED:
                fuzzy += 1
                # 0.8: a typo ("Lead Sorce", "Cty"), not a word that shares letters ("Colour", "Country").
                meant = next(iter(difflib.get_close_matches(key, columns, n=1, cutoff=0.8)), None)
            if meant is not None and meant not in given:
                wrong.append((i, key, f"not a column of the model, {meant!r} is (names are matched as written)"))
            elif header:
                wrong.append((i, key, "not a column of the export the model was trained on"))
        if len(wrong) > MAX_KEYS_MATCHED:
            wrong[MAX_KEYS_MATCHED:] = [
                (i, None, f"{len(wrong) - MAX_KEYS_MATCHED:,} more keys are not columns of the model")
            ]
        problems += wrong
        if not wrong and not any(key in columns for key in given):
            problems.append((i, None, f"none of the model's columns is here (it reads {shown}): it would score blanks"))
    read = [{key: value for key, value in (row or {}).items() if key in columns} for row in rows]
    frame = pd.DataFrame(read, index=range(len(rows)))
    for column, kind in columns.items():
        if kind not in ("numeric", "boolean") or column not in frame:
            continue
        _, failed = (parse_number if kind == "numeric" else parse_bool)(
            blank_to_missing(frame[column], schema["missing_tokens"])
        )
        wanted = "a number" if kind == "numeric" else "yes or no"
        problems += [(int(i), column, f"{_as_sent(rows[i][column])} is not {wanted}: the model reads this column as "
                      f"{kind}")
                     for i in np.flatnonzero(failed.to_numpy())]  # fmt: skip
    return sorted(problems, key=lambda problem: problem[0])


def load_flat(path: str | Path, profile: FlatProfile, params: FlatParams, *, leak_auc: float = 0.85) -> FlatData:
    """Read a flat CSV export, infer column types, quarantine unusable rows, and check that
    no identifier gives the label away (`leak_auc`: the ROC AUC that counts as a leak).

    Raises:
        DataError: unreadable file, unknown column names, or a label that is not binary.
    """
    path = Path(path)
    raw, encoding = read_text_csv(path, sep=profile.sep, sep_option=True)
    quarantine = Quarantine()
    if said := encoding_note(path.name, encoding):
        quarantine.note(said)
    if len(raw.columns) == 1:
        # A header with another separator in it: the --sep given (or the default) is not the file's.
        others = [sep for sep in SEPARATORS if sep != profile.sep and sep in raw.columns[0]]
        if others or profile.sep == ",":
            shown = {sep: "tab" if sep == "\t" else repr(sep) for sep in SEPARATORS}
            hint = f"its header is separated by {shown[others[0]]}: use --sep {shown[others[0]]}" if others else (
                "is the separator ';' or a tab? (use --sep)")  # fmt: skip
            given = shown.get(profile.sep, repr(profile.sep))
            raise DataError(f"{path.name}: only one column found with the separator {given}; {hint}")
    named = [
        ("label", profile.label),
        *([("id", profile.id)] if profile.id else []),
        *(("drop", c) for c in profile.drop),
        *([("time", profile.time)] if profile.time else []),
        *(("types", c) for c in profile.types),
    ]
    folded = {str(c).strip().casefold(): str(c) for c in raw.columns}

    def missing(column: str, role: str) -> str:
        near = folded.get(column.strip().casefold())  # `converted` for `Converted`: headers are exact
        return f"{column!r} (given as {role}" + (f"; did you mean {near!r}?)" if near else ")")

    unknown = [missing(column, role) for role, column in named if column not in raw.columns]
    if unknown:
        # `--drop 'Value, USD'` split a header holding a comma in two: say to quote it.
        pairs = zip(profile.drop, profile.drop[1:], strict=False)
        split = [f"{a}, {b}" for a, b in pairs if f"{a}, {b}" in raw.columns or f"{a},{b}" in raw.columns]
        quote_it = f"; a name holding a comma goes in double quotes: --drop '\"{split[0]}\"'" if split else ""
        raise DataError(
            f"{path.name}: no column(s) {', '.join(unknown)}; columns are {', '.join(map(repr, raw.columns))}{quote_it}"
        )
    if raw.empty:
        raise DataError(f"{path.name}: a header and no data rows")
    number_rows(raw, path)

    label_text = blank_to_missing(raw[profile.label], params.missing_tokens)
    try:
        label_notes: list[str] = []
        label = _label(label_text, profile.label, profile.positive, profile.negative, label_notes)
    except DataError as exc:
        raise DataError(f"{path.name}: {exc}") from exc
    for note in label_notes:
        quarantine.note(note)
    if "lead_id" in raw.columns and profile.id != "lead_id":
        named_by = f"the id column {profile.id!r}" if profile.id else "their row numbers (no --id)"
        quarantine.note(f"column lead_id not used: rows are named by {named_by}; give --id lead_id to name them by it")
    header = [c for c in raw.columns if c != "_row"]
    raw["lead_id"] = blank_to_missing(raw[profile.id], ("",)) if profile.id else raw["_row"].astype(str)
    quarantine.add("flat", raw, label_text.isna(), f"label {profile.label!r} missing")
    quarantine.add(
        "flat",
        raw,
        label_text.notna() & label.isna(),
        lambda rows: (
            f"label {profile.label!r} is "
            + label_text[rows.index].map(repr)
            + f", neither {label_values(profile.positive)} nor {label_values(profile.negative)}: no outcome yet"
        ),
    )
    keep = label.notna()
    if profile.id:
        quarantine.add("flat", raw, keep & raw["lead_id"].isna(), f"id {profile.id!r} missing")
        keep &= raw["lead_id"].notna()
        # A row exported twice is one lead, counted once (as in a CRM export); rows that share an
        # id and disagree are both doubtful.
        # The id as read (lead_id: spaces around it aside) is compared, not as written.
        unread = {"_row", profile.id} - {"lead_id"}
        identical = keep & raw.duplicated([c for c in raw.columns if c not in unread], keep="first")
        quarantine.add("flat", raw, identical, DUPLICATE_ROW)
        keep &= ~identical
        repeated = keep & raw["lead_id"].where(keep).duplicated(keep=False) & raw["lead_id"].notna()
        quarantine.add("flat", raw, repeated, f"id {profile.id!r} appears more than once")
        keep &= ~repeated
    else:
        # Without an id, a row exported twice cannot be told from two leads alike: said, not dropped
        # (a file run in twice trained with the same rows on both sides of the split, its test
        # AUC 0.03 higher, without a word).
        copies = int((keep & raw.duplicated([c for c in raw.columns if c not in ("_row", "lead_id")])).sum())
        if copies:
            quarantine.note(
                f"{copies:,} row(s) repeat an earlier row in every column: if they are leads exported twice, they "
                "sit on both sides of the split and flatter the test figures; give --id to set copies aside"
            )
    times = None
    if profile.time:
        times, _ = parse_timestamps(raw[profile.time])
        given = keep & blank_to_missing(raw[profile.time], params.missing_tokens).notna()
        if given.any() and times[given].notna().mean() < _TIME_COLUMN_SHARE:
            examples = ", ".join(map(repr, raw.loc[given & times.isna(), profile.time].unique()[:3]))
            raise DataError(
                f"{path.name}: time column {profile.time!r}: only {times[given].notna().mean():.0%} of its values "
                f"read as dates (values such as {examples}); is it the column of when each lead came in?"
            )
        shown = raw[profile.time].astype(str)
        # A date in the other order than the column's (03/13 where 13/03 set day first) is not
        # swapped: said as such, not as "not a date".
        against, day_first = against_date_order(raw[profile.time].astype("object"), None)  # as parsed above
        swapped = keep & times.isna() & against.reindex(raw.index, fill_value=False).to_numpy()
        order = "day first" if day_first else "month first"
        quarantine.add(
            "flat", raw, swapped,
            f"time column {profile.time!r} holds a date against its order ({order}, as most of its dates "
            "that can only be read one way say): " + shown,
        )  # fmt: skip
        keep &= ~swapped
        quarantine.add(
            "flat", raw, keep & times.isna(), f"time column {profile.time!r} missing or not a date: " + shown
        )
        keep &= times.notna()
        # A history cannot hold them, and they would become the test period on their own.
        late = keep & after_today(times)
        quarantine.add("flat", raw, late, f"time column {profile.time!r} after today: " + shown)
        keep &= ~late
    if not keep.any():
        reasons = quarantine.frame()["reason"].str.split(": ").str[0].value_counts()
        raise DataError(
            f"{path.name}: none of its {len(raw):,} rows can be used: "
            + "; ".join(f"{reason} ({count:,} rows)" for reason, count in reasons.items()),
            quarantine,
        )

    roles = {
        profile.label,
        *profile.drop,
        *([profile.time] if profile.time else []),
        "_row",
        "lead_id",
    }
    if profile.id:
        roles.add(profile.id)
    columns: dict[str, str] = {}
    excluded: dict[str, str] = {}
    for column in raw.columns:
        if column in roles:
            continue
        values = blank_to_missing(raw.loc[keep, column], params.missing_tokens)
        if column in profile.types:
            columns[column] = profile.types[column]
            levels = values.dropna().str.casefold().nunique()
            if profile.types[column] == "categorical" and levels > params.max_category_levels:
                quarantine.note(
                    f"column {column} read as categorical as the profile says, with {levels:,} distinct values "
                    f"(inferred columns stop at {params.max_category_levels}): slow to train, and rare levels overfit"
                )
            continue
        present = values.dropna()
        unique = len(present) == keep.sum() and present.is_unique and len(present) > 20
        numbers = _number_kind(present) if unique else ""
        if unique and numbers != "fractions" and _date_share(present) < _MOSTLY:
            excluded[column] = (
                "an identifier (unique per row)"
                + ("" if profile.id else f"; scores name rows by their row number, --id {column!r} names them by it")
                + ("; if it is a count or a measure, give it the numeric type in a profile (`types:`)"
                   if numbers == "whole" else "")
            )  # fmt: skip
            continue
        kind, why = infer_column(values, params)
        if kind == "excluded":
            excluded[column] = why
        else:
            columns[column] = kind
            if why:
                quarantine.note(f"column {column} read as {kind}: {why}")
    for column, why in excluded.items():
        shown = column if not column.startswith("Unnamed:") else f"{column} (no header)"
        quarantine.note(f"column {shown} not used: {why}")
    for column in [c for c in columns if c.startswith("Unnamed:")]:
        position = header.index(column) + 1
        quarantine.note(
            f"column {position} has no header: read as {columns[column]} under the name {column!r}, which its "
            "reasons show; name it in the export"
        )
    identifiers = [c for c, why in excluded.items() if why.startswith("an identifier")]
    id_leaks = {}
    for column in [*([profile.id] if profile.id else []), *identifiers]:
        leak = identifier_leak(raw.loc[keep, column], label[keep].astype(int), leak_auc)
        if leak:
            id_leaks[column] = leak
    if profile.drop:
        quarantine.note(f"columns dropped as asked: {', '.join(profile.drop)}")

    renamed = {c: model_column_name(c) for c in columns if model_column_name(c) != c}
    if renamed:
        quarantine.note(
            "feature names without LightGBM's forbidden characters []{}\":,: "
            + ", ".join(f"{old!r} -> {new!r}" for old, new in renamed.items())
        )
    by_name = pd.Series(list(columns)).groupby([model_column_name(c) for c in columns])
    for name, originals in by_name:
        if len(originals) > 1:
            raise DataError(
                f"{path.name}: columns {', '.join(map(repr, originals))} would share the feature name {name!r}; "
                "rename one"
            )
    schema = {
        "columns": columns,
        "missing_tokens": list(params.missing_tokens),
        "label": profile.label,
        "id": profile.id,  # what names a row when its export is scored
        "sep": profile.sep,  # the same export, scored, has the same dialect
        # Left out by the user (--drop): a champion that read one is compared otherwise.
        "dropped": list(profile.drop),
        # Every column of the file: a name sent to the service that is none of them is a mistake.
        "header": header,
        # How this export writes each numeric column, for every file and request scored later:
        # a batch with no "2,5" in it cannot tell that "1.532" is 1532.
        "number_formats": {
            name: number_format.as_json()
            for name, number_format in flat_number_formats(
                raw.loc[keep], columns, params.missing_tokens, profile.sep
            ).items()
        },
    }
    kept = raw.loc[keep]
    features, notes = clean_flat_columns(kept, schema)
    for column, kind in profile.types.items():
        if column not in columns:
            continue
        present = blank_to_missing(kept[column], params.missing_tokens).dropna()
        if len(present) and features[model_column_name(column)].isna().all():
            examples = ", ".join(map(repr, present.unique()[:3]))
            raise DataError(f"{path.name}: types: column {column!r} has no {kind} value (values such as {examples})")
    for note in notes:
        quarantine.note(note)
    return FlatData(
        features=features.reset_index(drop=True),
        label=label[keep].astype(int).reset_index(drop=True),
        ids=kept["lead_id"].astype(str).reset_index(drop=True),
        times=None if times is None else times[keep].reset_index(drop=True),
        schema=schema,
        quarantine=quarantine,
        data_hash=hash_files([path]),
        source=str(path),
        id_leaks=id_leaks,
        numbers_written=kept[[c for c, kind in columns.items() if kind == "numeric"]].reset_index(drop=True),
    )


def flat_feature_groups(columns: list[str]) -> dict[str, FeatureGroup]:
    """Engagement for behaviour-like column names, fit for the rest."""
    return {c: "engagement" if _ENGAGEMENT_WORDS.search(c) else "fit" for c in columns}
