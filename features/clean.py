"""General cleaning rules for CRM exports: blanks, spellings, numbers, timestamps."""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import ACTIVITY_TYPES

_NUMBER_JUNK = re.compile(r"[\s,$€£¥%]|^\+")
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "bn": 1e9}
_SUFFIXED = re.compile(r"^(-?\d+(?:\.\d+)?)(k|m|bn|b)$", re.IGNORECASE)
TRUE_TOKENS = frozenset({"true", "yes", "y", "1", "1.0", "t"})
FALSE_TOKENS = frozenset({"false", "no", "n", "0", "0.0", "f"})
# The years a moment is read in: others are typos (0025, 9999), and pandas' nanosecond times
# end in 2262, past which a comparison silently overflows.
FIRST_YEAR, LAST_YEAR = 1900, 2200


# How far a CRM's clock may run ahead of this one: a lead stamped a few seconds "in the future"
# by the CRM that just created it is scored, not refused with its whole batch.
CLOCK_SKEW = dt.timedelta(minutes=5)


# The first address in an e-mail cell: `jane@acme.com`, `Jane <jane@acme.com>`, `mailto:...`,
# or the first of `a@x.com; b@y.com`.
_EMAIL_ADDRESS = re.compile(r"[^\s<>;,\"'()]+@([^\s<>;,\"'()]+)")
_BRACKETED = re.compile(r"<\s*(?:mailto:)?([^<>]*)>")


def email_domain(value: object) -> str | None:
    """The domain of the first address in an e-mail cell, case folded, without a trailing dot;
    None without one. The free-mail feature reads it; a display name around it cannot hide the
    address (the competitor rule reads every address, `email_domains`)."""
    if not isinstance(value, str):
        return None
    # The address in angle brackets is the address; a display name may look like one ("a@x" <b@y>).
    bracketed = _BRACKETED.search(value)
    found = _EMAIL_ADDRESS.search(bracketed.group(1) if bracketed and "@" in bracketed.group(1) else value)
    if found:
        domain = found.group(1)
    else:  # a quoted or commented local part (`"jane doe"@gmail.com`): what follows the @
        domain = re.split(r"[\s<>;,\"'()]", value.rsplit("@", 1)[1].strip())[0] if "@" in value else ""
    domain = domain.strip(".").casefold()
    return domain or None


def email_domains(value: object) -> list[str]:
    """The domains of every address in an e-mail cell (`a@x.com; b@y.com`), case folded, in
    order: the competitor rule reads them all, so a competitor's address listed second is seen.
    The first is `email_domain`'s."""
    first = email_domain(value)
    if first is None or value.count("@") < 2:  # type: ignore[union-attr]  # one address: the usual cell
        return [] if first is None else [first]
    # A display name or a comment is no address, even when it looks like one: `"a@rival.com"
    # <a@x.com>`, `b@rival.com <a@x.com>`, `a@x.com (ex b@rival.com)`. Addresses in brackets are
    # the addresses when there are any.
    bracketed = [inner for inner in _BRACKETED.findall(value) if "@" in inner]  # type: ignore[arg-type]
    unnamed = re.sub(r'"[^"]*"|\([^()]*\)', " ", value)  # type: ignore[arg-type]
    others = [d.strip(".").casefold() for d in _EMAIL_ADDRESS.findall(" ".join(bracketed) if bracketed else unnamed)]
    return list(dict.fromkeys([first, *(d for d in others if d)]))


def utc_now() -> pd.Timestamp:
    """The clock as the exports' moments are kept: naive UTC."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def latest_moment(now: pd.Timestamp | None = None) -> pd.Timestamp:
    """The latest moment a score may be as of (naive UTC): the end of today in UTC, so that a
    date sent from a time zone ahead of UTC (today there) is taken, or `CLOCK_SKEW` past the
    clock when that is later. A later moment would read every lead as gone quiet for days."""
    now = utc_now() if now is None else now
    return max(now.ceil("D"), now + CLOCK_SKEW)


def future_moment(what: str, now: pd.Timestamp | None = None) -> str:
    """Why a moment after `latest_moment` is refused, `what` naming it."""
    now = utc_now() if now is None else now
    return (f"{what} is after today (UTC; the clock here reads {now.isoformat(timespec='seconds')}): a score "
            "reads the past only, and as of a later moment every lead would read as gone quiet")  # fmt: skip


def idle_until_note(moment: pd.Timestamp, what: str) -> str | None:
    """What scoring as of a later moment than now means (allowed, but more often a mistyped
    year), `what` naming the moment; None when it is not later."""
    if moment <= utc_now():
        return None
    return f"{what} {moment} is in the future: every lead is scored as if idle from its newest activity until then"


def map_distinct(values: pd.Series, func) -> pd.Series:
    """Apply `func` once per distinct present value (exports repeat few values over many
    rows); missing stays None in an object column."""
    # A text column as read is factorized as it is: three times as fast as its object copy.
    text = values if isinstance(values.dtype, pd.StringDtype) else values.astype("object")
    codes, uniques = pd.factorize(text, use_na_sentinel=True)
    mapped = np.array([func(v) for v in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype="object")


# Characters that show as nothing (zero-width spaces and joiners, direction marks, the soft
# hyphen, Hangul fillers and Khmer inherent vowels, the Braille blank, the byte-order mark): a
# cell holding only them looks blank to whoever typed it, and one at the end of an id makes it
# another id.
INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063"
    "\u2064\u2800\u3164\uffa0\ufeff"
)


# Control characters, and the direction controls that reorder what a terminal shows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def control_escaped(text: str) -> str:
    """`text` with control characters written as escapes (`\\x1b`), for a terminal or a log
    line: a line break or an escape code sent by a client must not forge a line or run."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def tidy_text(value: object) -> str:
    """The text of a cell: runs of spaces made one, spaces and invisible characters stripped
    at the ends."""
    # str.split() splits at what the regex `\s` matches (str.isspace), four times as fast.
    return " ".join(str(value).split()).strip(" " + INVISIBLE)


def blank_to_missing(values: pd.Series, missing_tokens: Iterable[str]) -> pd.Series:
    """Tidy text (`tidy_text`) and turn placeholder values ("", "N/A", "Select", ...) into missing.

    Args:
        values: a text column.
        missing_tokens: placeholders, compared case-insensitively after stripping.

    Returns:
        An object column of stripped strings, with missing values as None.
    """
    return map_distinct(values, _placeholder_reader(missing_tokens))


def has_value(values: pd.Series, missing_tokens: Iterable[str]) -> bool:
    """Whether a text column holds anything but blanks and placeholders (`blank_to_missing`),
    stopping at the first distinct value that is one."""
    read = _placeholder_reader(missing_tokens)
    return any(read(value) is not None for value in values.dropna().unique())


# What a spreadsheet writes in a cell whose formula failed (Excel's, LibreOffice's and Google
# Sheets' spellings), compared case-insensitively.
SPREADSHEET_ERRORS = frozenset(
    {"#n/a", "#div/0!", "#value!", "#ref!", "#name?", "#num!", "#null!", "#spill!", "#calc!", "#error!"}
)


def spreadsheet_errors(values: pd.Series) -> pd.Series:
    """Which cells hold a spreadsheet's formula error (`SPREADSHEET_ERRORS`)."""
    return map_distinct(values, lambda v: tidy_text(v).casefold() in SPREADSHEET_ERRORS).astype(bool)


def _placeholder_reader(missing_tokens: Iterable[str]) -> Callable[[object], str | None]:
    """A cell's tidy text, or None for a placeholder."""
    tokens = {token.casefold() for token in missing_tokens}

    def read(value: object) -> str | None:
        text = tidy_text(value)
        return None if text.casefold() in tokens else text

    return read


def canonical_spelling(values: pd.Series) -> pd.Series:
    """Merge values that differ only by case or spacing into their most frequent spelling."""
    present = values.dropna().astype(str)
    if present.empty:
        return values.astype("object")
    folded = present.str.casefold()
    if folded.nunique() == present.nunique():
        return values.astype("object")  # every spelling is already the only one of its kind
    counts = present.groupby([folded, present]).size().sort_values(ascending=False, kind="stable")
    best: dict[str, str] = {}
    for (fold, spelling), _ in counts.items():
        best.setdefault(fold, spelling)
    return map_distinct(values, lambda v: best[str(v).casefold()])


def parse_number(values: pd.Series, number_format: NumberFormat | None = None) -> tuple[pd.Series, pd.Series]:
    """Parse numbers written as CRM exports write them ("1,200", "$3.5M", "12%", "1.234,56").

    `number_format`: how this column's training export wrote its numbers (`ColumnFormat`, kept
    with the model): whether its dots group thousands ("1.532" is 1532) and whether its commas
    are decimal marks ("1,333" is 1.333). None: the column's own values decide its commas, and
    a dot is a decimal point, as models from before the setting read them.

    Returns:
        The parsed floats (missing where blank or unparseable) and a boolean mask of the
        values that were present but could not be parsed.
    """
    # Each distinct value once (an activity's `value` holds a dozen over millions of rows). The
    # reading of commas is decided per column, from which values occur, so it is the same on
    # the distinct values as on the rows.
    codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
    parsed, failed = _parse_distinct_numbers(pd.Series(uniques, dtype="object"), number_format)
    out = np.append(parsed.to_numpy(dtype="float64"), np.nan)[codes]
    failed = np.append(failed.to_numpy(dtype=bool), False)[codes]
    return pd.Series(out, index=values.index, dtype="float64"), pd.Series(failed, index=values.index)


def _parse_distinct_numbers(values: pd.Series, number_format: NumberFormat | None) -> tuple[pd.Series, pd.Series]:
    text = values.astype("object")
    present = text.notna()
    cleaned = _bare(text[present].astype(str))
    if number_format is not None and number_format.dots_group:
        grouped = _bare(cleaned).str.fullmatch(_WHOLE_DOT_GROUPS)
        cleaned[grouped] = _bare(cleaned[grouped]).str.replace(".", "", regex=False)
    commas = cleaned.str.contains(",", regex=False)
    if commas.any():
        cleaned[commas] = _decimal_commas(
            cleaned[commas], None if number_format is None else number_format.comma_decimal
        )
    cleaned = cleaned.str.replace(_NUMBER_JUNK, "", regex=True)
    parsed = pd.to_numeric(cleaned, errors="coerce")
    suffixed = parsed.isna() & cleaned.str.match(_SUFFIXED)
    if suffixed.any():
        parts = cleaned[suffixed].str.extract(_SUFFIXED)
        parsed[suffixed] = parts[0].astype(float) * parts[1].str.lower().map(_SUFFIX)
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    out[present] = parsed.astype("float64")
    out[np.isinf(out)] = np.nan  # "inf", "1e400": no amount a model can split on or a CRM holds
    failed = present & out.isna()
    return out, failed


# A comma that cannot be a thousands separator (not followed by three digits: "32639789,00",
# "3,5M"; or before an exponent: "9,83E-05"), or one after dots that group thousands
# ("1.234.567,89"), is a decimal mark, as spreadsheets in comma-decimal locales write numbers.
# "1,234" stays one thousand two hundred and thirty-four.
_COMMA_DECIMAL = re.compile(r"-?\d+,(?:\d{1,2}|\d{4,})(?:[kmb]|bn)?|-?\d+,\d+e[+-]?\d+", re.IGNORECASE)
_DOT_THOUSANDS = re.compile(r"-?\d{1,3}(?:\.\d{3})+,\d+(?:[kmb]|bn)?", re.IGNORECASE)
# Nor does one after a lone 0 or after four digits or more ("0,315", "1234,567").
_NEVER_THOUSANDS = re.compile(r"-?(?:0|\d{4,}),\d+(?:[kmb]|bn)?", re.IGNORECASE)
# "1,333" is either; "1,234,567" and "1,234.5" can only group thousands.
_EITHER = re.compile(r"-?\d{1,3},\d{3}(?:[kmb]|bn)?", re.IGNORECASE)
_ONLY_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:,\d{3}){2,}(?:\.\d+)?|(?:,\d{3})+\.\d+)", re.IGNORECASE)
# A whole number written with dots grouping thousands ("1.532", "186.279.912"), and values only a
# decimal point writes ("0.125", "2.5", "1234.5").
_WHOLE_DOT_GROUPS = re.compile(r"-?[1-9]\d{0,2}(?:\.\d{3})+")
_DOT_DECIMAL = re.compile(r"-?(?:0\.\d+|\d+\.(?:\d{1,2}|\d{4,})|\d{4,}\.\d+)(?:[kmb]|bn|%)?", re.IGNORECASE)
_NOT_DIGITS = re.compile(r"[\s$€£¥%]|^\+")
# A currency code before or after an amount, as multi-currency exports write them ("USD 53,00",
# "12.5 EUR"), and the currencies the signs name.
_CODES = "USD|EUR|GBP|JPY|CHF|CAD|AUD|NZD|SEK|NOK|DKK|PLN|CZK|HUF|INR|CNY|RMB|HKD|SGD|BRL|MXN|ZAR|KRW|TRY|ILS|AED"
_CURRENCY_CODE = re.compile(rf"^({_CODES})\s*(?=[-+($€£¥\d.])|(?<=[\d.)%])\s*({_CODES})$", re.IGNORECASE)
_SIGN_CURRENCY = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
# An accounting negative: "(5.00)" is -5.00.
_ACCOUNTING_NEGATIVE = re.compile(r"^\((-?[\d.,]+(?:[kmb]|bn)?)\)$", re.IGNORECASE)
# An export's decimal mark is decided on this much evidence only: distinct values that can only
# be written with it, at least this many and ten times those only the other mark writes. A
# stray "0,5" typed into a US export, or one "2.5M" in a European one, decides nothing.
MIN_MARK_VALUES = 2
GROUPED_THOUSANDS = "read as whole numbers, dots grouping thousands"


def _bare(text: pd.Series) -> pd.Series:
    """The values without spaces, currency signs and codes, and percent signs, an accounting
    negative with a minus: what is left is a number, if any."""
    bare = text.str.replace(_CURRENCY_CODE, "", regex=True).str.replace(_NOT_DIGITS, "", regex=True)
    return bare.str.replace(_ACCOUNTING_NEGATIVE, r"-\1", regex=True)


def value_currencies(text: pd.Series) -> pd.Series:
    """The currency each value names by a code or a sign (USD for "$"), or None."""
    codes = text.str.extract(_CURRENCY_CODE).bfill(axis=1).iloc[:, 0].str.upper()
    signs = text.str.extract(f"([{''.join(_SIGN_CURRENCY)}])", expand=False).map(_SIGN_CURRENCY)
    return codes.fillna(signs).astype(object).where(lambda named: named.notna(), None)


_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")


def other_currencies(text: pd.Series) -> tuple[str | None, pd.Series]:
    """The commonest currency an amount column names, and which values name another: "USD 5"
    and "EUR 5" both read as 5, so a mix is said. Only values with a letter or a sign are read
    for one (a plain number names none), which keeps a column of plain numbers cheap."""
    text = text.astype("string")
    marked = text.str.contains(r"[^\d\s.,+\-()]", regex=True).fillna(False).astype(bool)
    if not marked.any():
        return None, pd.Series(False, index=text.index)
    # Read once per shape of value ("$00,000,000"): amounts are unique, their shapes are few.
    shapes = text[marked].astype(object).str.translate(_DIGITS_AS_ZERO)
    named = map_distinct(shapes, lambda shape: value_currencies(pd.Series([shape], dtype=object)).iloc[0])
    named = named.reindex(text.index)
    counts = named.dropna().value_counts()
    if counts.empty:
        return None, pd.Series(False, index=text.index)
    commonest = str(counts.index[0])
    return commonest, (named.notna() & named.ne(commonest)).astype(bool)


@dataclass(frozen=True)
class NumberFormat:
    """How a numeric column of a training export writes numbers, kept with the model so every
    later file and request is read alike (a batch with no "2,5" in it cannot tell that its
    "250.000" is a quarter of a million)."""

    dots_group: bool = False  # "1.532" is 1532
    comma_decimal: bool = False  # "1,333" is 1.333

    def as_json(self) -> dict[str, bool]:
        return {"dots_group": self.dots_group, "comma_decimal": self.comma_decimal}


def _evidence(values: pd.Series) -> tuple[int, int]:
    """Distinct text values of a column that only a decimal comma writes, and that only a
    decimal point writes (typed numbers, from parquet or JSON, say nothing of how a file writes)."""
    text = values.dropna()
    text = pd.Series([v for v in text.unique() if isinstance(v, str)], dtype="object")
    if text.empty:
        return 0, 0
    bare = _bare(text)
    commas = bare[bare.str.contains(",", regex=False)]
    comma = (commas.str.fullmatch(_COMMA_DECIMAL) | commas.str.fullmatch(_DOT_THOUSANDS)
             | commas.str.fullmatch(_NEVER_THOUSANDS)).sum()  # fmt: skip
    dot = commas.str.fullmatch(_ONLY_THOUSANDS).sum() + bare.str.fullmatch(_DOT_DECIMAL).sum()
    return int(comma), int(dot)


def _mark(comma: int, dot: int) -> str | None:
    if comma >= MIN_MARK_VALUES and comma >= 10 * dot:
        return "comma"
    if dot >= MIN_MARK_VALUES and dot >= 10 * comma:
        return "dot"
    return None


# The decimal mark a file's field separator tells when its numbers do not: a file separated by
# ";" is the spreadsheet export of a locale writing decimal commas (its "1.532" seconds are 1532,
# where no "2,5" says so), one separated by "," writes decimal points.
SEPARATOR_MARKS = {";": "comma", ",": "dot"}


def decimal_mark(columns: Iterable[pd.Series], sep: str | None = None) -> str | None:
    """The decimal mark an export's numeric columns show in their text: "comma", "dot", or,
    when they do not say (`MIN_MARK_VALUES`), the one its separator `sep` tells, else None."""
    counts = [_evidence(values) for values in columns]
    return _mark(sum(c for c, _ in counts), sum(d for _, d in counts)) or SEPARATOR_MARKS.get(sep or "")


def number_formats(
    columns: dict[str, pd.Series], counts: Iterable[str] = (), sep: str | None = None
) -> dict[str, NumberFormat]:
    """How each numeric column of a training export writes numbers. In an export with decimal
    commas, dots group thousands and commas are decimal marks, unless a column's own values say
    otherwise; a head count (`counts`) has no decimals, so its dots group thousands but in an
    export of decimal points. Elsewhere a column's commas are read by its own values. Where no
    value says, a file separated by ";" (`sep`) writes decimal commas."""
    evidence = {name: _evidence(values) for name, values in columns.items()}
    mark = _mark(sum(c for c, _ in evidence.values()), sum(d for _, d in evidence.values()))
    if mark is None and SEPARATOR_MARKS.get(sep or "") == "comma":
        mark = "comma"
    formats = {}
    for name, (comma, dot) in evidence.items():
        own = _mark(comma, dot)
        column_mark = own or mark
        count = name in set(counts)
        whole = count and column_mark != "dot" and dot < MIN_MARK_VALUES
        # A head count's comma groups thousands in any export ("1,149" employees are 1149).
        formats[name] = NumberFormat(
            dots_group=column_mark == "comma" or whole, comma_decimal=column_mark == "comma" and not count
        )
    return formats


def stored_formats(stored: dict[str, dict[str, bool]] | None) -> dict[str, NumberFormat] | None:
    """The number formats a model keeps (`NumberFormat.as_json` per column), or None for a
    model from before they were kept."""
    return None if stored is None else {name: NumberFormat(**value) for name, value in stored.items()}


def format_conflict(
    formats: dict[str, NumberFormat] | None,
    columns: dict[str, pd.Series],
    counts: Iterable[str] = (),
    sep: str | None = None,
) -> str | None:
    """A note when a scored file's numbers show another decimal mark than the model's training
    export (a European copy of a US export) and some of them read otherwise than the file
    meant: it is still read as the training export was, so each lead is read alike in every
    file and request; the note names what is misread and how to avoid it. A copy whose every
    value reads the same either way ("2,5" can only be two and a half) is no conflict.
    `counts`: head-count columns, read as `number_formats` reads them; `sep`: the file's field
    separator, which tells its decimal mark where no value does (`SEPARATOR_MARKS`)."""
    mark = decimal_mark(columns.values(), sep)
    trained = "comma" if formats and any(f.comma_decimal for f in formats.values()) else "dot"
    if mark is None or mark == trained:
        return None
    own = number_formats(columns, counts, sep)
    misread: dict[str, tuple[int, str, float, float]] = {}
    for name, values in columns.items():
        distinct = pd.Series(values.dropna().unique(), dtype="object")
        as_trained, _ = parse_number(distinct, (formats or {}).get(name))
        as_written, _ = parse_number(distinct, own[name])
        differ = (as_trained != as_written) & as_trained.notna() & as_written.notna()
        if differ.any():
            first = distinct[differ].astype(str).sort_values().index[0]  # the same example however read
            misread[name] = (int(differ.sum()), str(distinct[first]), as_trained[first], as_written[first])
    if not misread:
        return None
    written = {"comma": "decimal commas", "dot": "decimal points"}
    shown = "; ".join(
        f"{name}: {count:,} distinct value(s), e.g. {text!r} read as {trained_value:g}, not {meant:g}"
        for name, (count, text, trained_value, meant) in list(misread.items())[:3]
    )
    return (
        f"this file writes {written[mark]}, unlike the model's training export ({written[trained]}): its numbers "
        f"are read as the training export's were, so some are misread ({shown}); export it as the training "
        "export was, or train a model on exports like this one"
    )


def numbers_as_text(values: pd.Series) -> pd.Series:
    """Typed floats (from JSON or parquet) as the text `str` gives, but for the values a reading
    of dots as thousands would misread: 1.532 is "1.532e0", never 1532. Text is left as it is."""
    if pd.api.types.is_float_dtype(values):
        return values.map(_float_text, na_action="ignore")
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        # A request's column can hold numbers and text side by side (a file's holds text only).
        return values.map(lambda v: _float_text(v) if isinstance(v, float) and v == v else v)
    return values


def _float_text(value: float) -> str:
    text = repr(float(value))
    return text + "e0" if _WHOLE_DOT_GROUPS.fullmatch(text) else text


def dot_grouped(values: pd.Series, number_format: NumberFormat | None) -> pd.Series:
    """Which values are whole numbers written with dots grouping thousands ("1.532"), in a
    column whose format says its dots do; none in another column."""
    if number_format is None or not number_format.dots_group:
        return pd.Series(False, index=values.index)
    codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
    bare = _bare(pd.Series(uniques, dtype="object").astype(str))
    grouped = bare.str.fullmatch(_WHOLE_DOT_GROUPS).fillna(False).to_numpy(dtype=bool)
    return pd.Series(np.append(grouped, False)[codes], index=values.index)


def _decimal_commas(text: pd.Series, comma_decimal: bool | None = None) -> pd.Series:
    """The values of one column with a comma, decimal commas made dots. A comma that can only
    be a decimal mark always is one; "1,333" is 1.333 where the column's format says its commas
    are decimal marks (`comma_decimal`), else 1333; without a format, where some of the column's
    values can only have a decimal comma and none can only group thousands (hours on site
    written 0,315, 1,333 and 2,5)."""
    bare = _bare(text)
    dotted = bare.str.fullmatch(_DOT_THOUSANDS)
    bare[dotted] = bare[dotted].str.replace(".", "", regex=False)
    decimal = dotted | bare.str.fullmatch(_COMMA_DECIMAL) | bare.str.fullmatch(_NEVER_THOUSANDS)
    if comma_decimal is None:
        comma_decimal = bool(decimal.any()) and not bare.str.fullmatch(_ONLY_THOUSANDS).any()
    if comma_decimal:
        decimal |= bare.str.fullmatch(_EITHER)
    return text.where(~decimal, bare.str.replace(",", ".", regex=False))


def parse_bool(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse yes/no, true/false, 1/0 into 1.0/0.0; returns values and a failure mask."""
    folded = map_distinct(values, lambda v: str(v).strip().casefold())
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    out[folded.isin(TRUE_TOKENS)] = 1.0
    out[folded.isin(FALSE_TOKENS)] = 0.0
    failed = folded.notna() & out.isna()
    return out, failed


def looks_boolean(values: pd.Series) -> bool:
    """True when every present value is a yes/no style token."""
    present = values.dropna().map(lambda v: str(v).strip().casefold())
    return not present.empty and present.isin(TRUE_TOKENS | FALSE_TOKENS).all()


# A numeric date such as 03/04/2025 or 03.04.2025 (day and month in either order).
_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}(?:\D|$)")
_DATE_SEPARATORS = ["/", ".", "-"]


def _date_parts(text: pd.Series) -> pd.DataFrame:
    """The first two numbers of each numeric date (NaN elsewhere). A cheap look at the 2nd and
    3rd characters first: an export's ISO dates (most of a million rows) skip the regex."""
    text = text.astype(str)
    maybe = text.str[1].isin(_DATE_SEPARATORS) | text.str[2].isin(_DATE_SEPARATORS)
    parts = pd.DataFrame(np.nan, index=text.index, columns=[0, 1])
    if maybe.any():
        parts[maybe] = text[maybe].str.extract(_NUMERIC_DATE).astype("float64").to_numpy()
    return parts


def _order(parts: pd.DataFrame) -> bool | None:
    return order_from_votes(_votes(parts))


def _votes(parts: pd.DataFrame) -> tuple[int, int]:
    """How many values can only be read day first, and how many only month first: a value
    that is impossible either way (31/31/2025, junk) says nothing."""
    return int(((parts[0] > 12) & (parts[1] <= 12)).sum()), int(((parts[1] > 12) & (parts[0] <= 12)).sum())


def order_from_votes(votes: tuple[int, int]) -> bool | None:
    """Day first, month first, or None when no value says or as many say each."""
    day_first, month_first = votes
    return None if day_first == month_first else day_first > month_first


def date_order_votes(text: pd.Series) -> tuple[int, int]:
    """The votes of `numeric_date_order`, to add up over the parts of a table read in pieces."""
    return _votes(_date_parts(text))


def against_date_order(text: pd.Series, day_first: bool | None) -> tuple[pd.Series, bool]:
    """Which values are numeric dates that can only be read in the other order than the one
    `parse_timestamps` reads them in (`day_first`, else the values' own), and that order."""
    parts = _date_parts(text)
    order = bool(_order(parts)) if day_first is None else day_first
    against = (parts[1] > 12) & (parts[0] <= 12) if order else (parts[0] > 12) & (parts[1] <= 12)
    return against, order


def numeric_date_order(text: pd.Series) -> bool | None:
    """Whether numeric dates (03/04/2025) put the day first: True, False, or None when no
    value says (every day and month is 12 or less).

    Decided by the values that can only be read one way (13/03/2025 is day first, 03/13/2025
    month first), once for a whole export: a parser deciding value by value would read 01/03
    as January and 13/03 as March in the same column.
    """
    return _order(_date_parts(text))


def parse_timestamps(values: pd.Series, day_first: bool | None = None) -> tuple[pd.Series, pd.Series]:
    """Parse timestamps: ISO 8601 fast, any other common format as a fallback.

    Numeric dates (03/04/2025) are read in one order: `day_first` (an export's order, see
    `numeric_date_order`), else the column's own (day first when values such as 13/04/2025
    say so, else month first). A value against the order fails rather than being swapped.
    Digits alone, 9 to 13 of them, are Unix time (seconds; milliseconds above 2e10), as the
    service reads them. Time zones are converted to UTC and dropped, so all moments compare
    as naive UTC.

    Returns:
        The parsed timestamps (NaT where blank or unparseable) and a mask of the values
        that were present but could not be parsed.
    """
    text = values.astype("object")
    present = text.notna() & (text.astype(str).str.strip() != "")
    parsed = pd.to_datetime(text.where(present), format="ISO8601", errors="coerce", utc=True)
    retry = present & parsed.isna()
    if retry.any():
        parsed, retry = _unix_times(text, retry, parsed)
    if retry.any():
        fallback = iso_offsets(text[retry].astype(str))
        parts = _date_parts(fallback)
        if day_first is None:
            day_first = bool(_order(parts))
        # A value that cannot be read in the order (13/03 when month first) is not swapped.
        contradicting = parts[1] > 12 if day_first else parts[0] > 12
        # Left out of the parse, not only of its result: pandas takes one format from the first
        # value, and 20/08/2026 first would read every other date of a month-first column day first.
        fallback = fallback.where(~contradicting)
        # A date that starts with its year (2024-11-01 10:31:59 UTC) is year, month, day in any
        # export; read day first, pandas would take it for 2024-01-11.
        year_first = fallback.str.match(_YEAR_FIRST).fillna(False).to_numpy(dtype=bool)
        groups = [(rows, order) for rows, order in ((year_first, False), (~year_first, day_first)) if rows.any()]
        # Each group in the unit pandas picks (year 9999 does not fit in nanoseconds: NaT below),
        # then put back in the rows' order by position.
        reparsed = pd.concat([_parse_in_order(fallback[rows], order) for rows, order in groups])
        reparsed = reparsed.iloc[np.argsort(np.concatenate([np.flatnonzero(rows) for rows, _ in groups]))]
        reparsed.index = fallback.index
        parsed[retry] = reparsed.where(~contradicting)
    plausible = parsed.notna() & parsed.dt.year.between(FIRST_YEAR, LAST_YEAR)
    # To the microsecond, as the service reads a moment: .NET writes seven digits of a second, and
    # an activity 0.5 microseconds before `as_of` was read by a batch and not by the service.
    parsed = parsed.where(plausible).dt.tz_localize(None).dt.as_unit("ns")
    nanos = parsed.to_numpy(dtype="datetime64[ns]").view("i8")
    if ((nanos % 1000 != 0) & plausible.to_numpy()).any():  # rare: flooring every column cost a fifth more
        parsed = parsed.dt.floor("us")
    failed = present & parsed.isna()
    return parsed, failed


# An offset written after UTC or GMT (`UTC+09:00`, `GMT+9`, `UTC-0530`): dateutil, pandas'
# fallback for a column of mixed formats, reads it the POSIX way, `GMT+9` as nine hours *behind*.
_NAMED_OFFSET = re.compile(r"(?:UTC|GMT)\s*([+-])(\d{1,2})(?::?(\d{2}))?\s*$", re.IGNORECASE)
_HAS_NAMED_OFFSET = re.compile(r"(?:UTC|GMT)\s*[+-]\d", re.IGNORECASE)


def iso_offsets(text: pd.Series) -> pd.Series:
    """Offsets written after UTC or GMT as ISO 8601 writes them (`UTC+9` → `+09:00`), which every
    reader takes the right way round: a moment in Tokyo read 18 hours off, or not, with the rows
    around it."""
    named = text.str.contains(_HAS_NAMED_OFFSET, na=False)
    if not named.any():  # the common case: a test, not a rewrite of every value
        return text
    rewritten = text[named].str.replace(
        _NAMED_OFFSET, lambda m: f"{m.group(1)}{int(m.group(2)):02d}:{m.group(3) or '00'}", regex=True
    )
    return text.where(~named, rewritten)


_YEAR_FIRST = r"\s*\d{4}[-/.]\d"
# Unix time written as digits, in seconds or (above 2e10) milliseconds, as the service reads a
# moment: 1767095580, 1767095580123. Eight digits stay a date (20250304), as ISO 8601 has it.
_UNIX_TIME = r"\s*\d{9,13}(?:\.\d+)?\s*"
_LAST_NANOSECOND_SECOND = 9.2e9  # past 2261 a moment does not fit in nanoseconds (and is no CRM's)


def _unix_times(text: pd.Series, retry: pd.Series, parsed: pd.Series) -> tuple[pd.Series, pd.Series]:
    """`parsed` with the values of `retry` written as Unix time read (by position), and
    `retry` without them."""
    candidates = np.flatnonzero(retry.to_numpy())
    unix = text.iloc[candidates].astype(str).str.fullmatch(_UNIX_TIME).to_numpy()
    if not unix.any():
        return parsed, retry
    number = pd.to_numeric(text.iloc[candidates[unix]].astype(str).str.strip()).to_numpy(dtype=float)
    micros = np.round(np.where(number > 2e10, number * 1e3, number * 1e6))
    micros = np.where(micros < _LAST_NANOSECOND_SECOND * 1e6, micros, np.nan)
    parsed = parsed.dt.as_unit("us")
    parsed.iloc[candidates[unix]] = pd.to_datetime(micros, unit="us", utc=True).as_unit("us")
    left = retry.copy()
    left.iloc[candidates[unix]] = False
    return parsed, left


def _parse_in_order(text: pd.Series, day_first: bool) -> pd.Series:
    with warnings.catch_warnings():  # "could not infer format": it then parses value by value
        warnings.simplefilter("ignore", UserWarning)
        # One format inferred for the values is fast; the rest are parsed value by value.
        parsed = pd.to_datetime(text, dayfirst=day_first, errors="coerce", utc=True)
    left = parsed.isna()
    if left.any():
        parsed[left] = pd.to_datetime(text[left], format="mixed", dayfirst=day_first, errors="coerce", utc=True)
    return parsed


def snake_case(values: pd.Series) -> pd.Series:
    """ "Email Open", "email-open" and " EMAIL_OPEN" all become "email_open"."""
    return map_distinct(values, lambda v: snake_name(v) or None)


def snake_name(text: str) -> str:
    """An activity type as `snake_case` reads it: runs of spaces, dashes, slashes and
    underscores are one underscore ("Email _Open" is email_open), none at either end; a type
    of the contract written without them, in any case, is that type ("EmailOpen",
    "TrialSignUp")."""
    name = re.sub(r"[\s\-/_]+", "_", tidy_text(text).casefold()).strip("_")
    return _CONTRACT_TYPE_BY_KEY.get(NOT_ALPHANUMERIC.sub("", name), name)


NOT_ALPHANUMERIC = re.compile(r"[\W_]+")  # what a key without case, spaces and punctuation drops
_CONTRACT_TYPE_BY_KEY = {NOT_ALPHANUMERIC.sub("", kind): kind for kind in ACTIVITY_TYPES}
