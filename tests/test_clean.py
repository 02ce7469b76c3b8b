import pandas as pd
import pytest

from features.clean import (
    NumberFormat,
    blank_to_missing,
    canonical_spelling,
    decimal_mark,
    dot_grouped,
    number_formats,
    numbers_as_text,
    numeric_date_order,
    parse_bool,
    parse_number,
    parse_timestamps,
    snake_case,
    value_currencies,
)


def test_placeholders_become_missing_and_text_is_stripped():
    values = pd.Series(["  Software ", "Select", "N/A", "", None, "-", "Retail"])
    out = blank_to_missing(values, ["", "select", "n/a", "-"])
    assert out.tolist() == ["Software", None, None, None, None, None, "Retail"]


def test_the_placeholders_of_common_crms_are_blank_and_values_of_punctuation_are_kept(params):
    """Salesforce's empty picklist `--None--` stayed a category level; ratings such as `+` or
    `***` are values, not blanks."""
    values = pd.Series(["--None--", "#N/A", "<NA>", "(none)", "+", "***", "$", "C++", ".NET", "-1"])
    out = blank_to_missing(values, params.flat.missing_tokens)
    assert out.tolist() == [None, None, None, None, "+", "***", "$", "C++", ".NET", "-1"]


def test_invisible_characters_at_the_ends_are_stripped_and_alone_are_blank():
    """A zero-width space or byte-order mark pasted with a value: the value as it looks."""
    values = pd.Series(["\u200b", " \ufeff ", "L1\u200b", "\u2060Software", "So\u200bft"])
    assert blank_to_missing(values, [""]).tolist() == [None, None, "L1", "Software", "So\u200bft"]
    assert snake_case(pd.Series(["\u200bEmail Open\u200d"])).tolist() == ["email_open"]
    # The soft hyphen, direction marks and fillers show as nothing too.
    others = pd.Series(["\u00ad", "\u200e\u200f", "\u3164", "L1\u00ad", "\u2061L2"])
    assert blank_to_missing(others, [""]).tolist() == [None, None, None, "L1", "L2"]


def test_spellings_differing_by_case_or_space_merge_into_the_most_frequent():
    values = pd.Series(["Software", "Software", "software", "SOFTWARE", "Retail", None])
    assert canonical_spelling(values).tolist() == ["Software"] * 4 + ["Retail", None]


def test_numbers_as_exports_write_them():
    values, failed = parse_number(pd.Series(["1,200", "$3.5M", "12%", "2k", "abc", None, "-7"]))
    assert values.tolist()[:4] == [1200.0, 3_500_000.0, 12.0, 2000.0]
    assert pd.isna(values[4]) and pd.isna(values[5]) and values[6] == -7.0
    assert failed.tolist() == [False, False, False, False, True, False, False]


def test_accounting_negatives_and_currency_codes_are_numbers():
    """Money as accounting and multi-currency exports write it read as free text."""
    values, failed = parse_number(pd.Series(["(5.00)", "44.39", "$(1,200.50)", "USD 1,250.00", "12.5USD", "(none)"]))
    assert values.tolist()[:5] == [-5.0, 44.39, -1200.5, 1250.0, 12.5] and pd.isna(values[5])
    assert failed.tolist() == [False] * 5 + [True]
    european, _ = parse_number(pd.Series(["EUR 53,00", "EUR 1.234,50", "EUR (7,25)"]))
    assert european.tolist() == [53.0, 1234.5, -7.25]
    # Each amount as written, whatever its currency (flat inference says when a column mixes them).
    assert parse_number(pd.Series(["USD 53.00", "jpy 5300", "$5", "€7"]))[0].tolist() == [53.0, 5300.0, 5.0, 7.0]
    assert value_currencies(pd.Series(["USD 53", "$5", "5 eur", "7"])).tolist() == ["USD", "USD", "EUR", None]
    assert parse_number(pd.Series(["EURO", "USD", "ABC123"]))[1].all()  # a code alone, or letters, is no number


def test_booleans():
    values, failed = parse_bool(pd.Series(["Yes", "no", "TRUE", "0", "maybe", None]))
    assert values.tolist()[:4] == [1.0, 0.0, 1.0, 0.0]
    assert failed.tolist() == [False, False, False, False, True, False]


def test_timestamps_iso_other_formats_and_garbage():
    values, failed = parse_timestamps(
        pd.Series(
            [
                "2025-03-04T10:22:00",
                "2025-03-04 10:22",
                "March 5, 2025",
                "0000-00-00",
                "",
                "not a date",
            ]
        )
    )
    assert values[0] == pd.Timestamp("2025-03-04 10:22")
    assert values[1] == pd.Timestamp("2025-03-04 10:22")
    assert values[2] == pd.Timestamp("2025-03-05")
    assert failed.tolist() == [False, False, False, True, False, True]


def test_timezones_are_converted_to_utc():
    values, _ = parse_timestamps(pd.Series(["2025-03-04T10:00:00+02:00"]))
    assert values[0] == pd.Timestamp("2025-03-04 08:00")


def test_numeric_dates_are_read_in_one_order_per_column():
    # A European export: 13/03 proves day first, so 01/03 is the 1st of March, not January 3.
    day_first, failed = parse_timestamps(pd.Series(["01/03/2025", "13/03/2025 14:00", "02.04.2025", "2025-05-01"]))
    assert day_first.tolist() == [
        pd.Timestamp(t) for t in ("2025-03-01", "2025-03-13 14:00", "2025-04-02", "2025-05-01")
    ]
    assert not failed.any()
    # Nothing decisive: month first, as a US export writes them.
    month_first, _ = parse_timestamps(pd.Series(["01/03/2025", "02/04/2025"]))
    assert month_first.tolist() == [pd.Timestamp("2025-01-03"), pd.Timestamp("2025-02-04")]
    # A value against the column's order cannot be trusted: it fails rather than being swapped.
    mixed, failed = parse_timestamps(pd.Series(["13/03/2025", "20/01/2025", "03/25/2025"]))
    assert mixed[0] == pd.Timestamp("2025-03-13") and pd.isna(mixed[2])
    assert failed.tolist() == [False, False, True]
    # A nightly batch of the 1st to the 12th cannot tell by itself: the training export's order is given.
    batch, _ = parse_timestamps(pd.Series(["03/03/2026 09:00", "09/03/2026 14:00"]), day_first=True)
    assert batch.tolist() == [pd.Timestamp("2026-03-03 09:00"), pd.Timestamp("2026-03-09 14:00")]


def test_snake_case_activity_names():
    assert snake_case(pd.Series(["Email Open", " email-open", "EMAIL_OPEN", None])).tolist() == ["email_open"] * 3 + [
        None
    ]


def test_a_decimal_comma_is_read_where_it_cannot_group_thousands():
    """A spreadsheet in a comma-decimal locale writes 32639789,00: not 3,263,978,900."""
    text = ["32639789,00", "1,5", "3,5M", "1.234.567,89", "€ 1.234,5", "1,234", "1,234,567", "$161,871,328"]
    values, failed = parse_number(pd.Series(text))
    assert values.tolist() == [32639789.0, 1.5, 3_500_000.0, 1234567.89, 1234.5, 1234.0, 1234567.0, 161871328.0]
    assert not failed.any()


def test_a_column_written_with_decimal_commas_is_read_so_throughout():
    """`to_csv(decimal=",")` writes 0,315 and 1,333: not 315 and 1,333 hours on the site."""
    hours = ["0,315", "1,333", "2,5", "0,0", "12", "1234,567"]
    assert parse_number(pd.Series(hours))[0].tolist() == [0.315, 1.333, 2.5, 0.0, 12.0, 1234.567]
    # Among thousands that can only be thousands, "1,333" stays 1,333.
    assert parse_number(pd.Series(["1,333", "2,5", "1,234,567"]))[0].tolist() == [1333.0, 2.5, 1234567.0]
    assert parse_number(pd.Series(["1,333", "4,000"]))[0].tolist() == [1333.0, 4000.0]  # nothing says otherwise


EURO = NumberFormat(dots_group=True, comma_decimal=True)


def test_where_no_number_tells_the_decimal_mark_the_separator_does():
    """A ";" export of whole numbers (`1.532` seconds, no `2,5` anywhere) was read as 1.532 in
    training and scoring, silently: 638 of 2,000 scores moved, by up to 64 points. A "," file's
    `1,234` scored by a model of decimal commas read 1.234, with no warning either."""
    from features.clean import format_conflict

    seconds = pd.Series(["1.532", "674", "0", "12.345"])
    assert decimal_mark([seconds]) is None and decimal_mark([seconds], ";") == "comma"
    assert number_formats({"seconds": seconds}, sep=";")["seconds"] == EURO
    assert number_formats({"seconds": seconds}, sep=",")["seconds"] == NumberFormat()  # as without a separator
    assert number_formats({"s": pd.Series(["1.532", "2.5", "0.25"])}, sep=";")["s"] == NumberFormat()  # 2.5 says
    said = format_conflict({"seconds": NumberFormat()}, {"seconds": seconds}, sep=";")
    assert said and "'1.532' read as 1.532, not 1532" in said
    assert format_conflict({"seconds": NumberFormat()}, {"seconds": seconds}) is None  # nothing tells
    us = pd.Series(["1,234", "674"])
    said = format_conflict({"seconds": EURO}, {"seconds": us}, sep=",")
    assert said and "'1,234' read as 1.234, not 1234" in said


def test_an_export_with_decimal_commas_has_dots_that_group_thousands():
    """European Excel writes 1532 seconds as 1.532 beside 2,5 pages per visit: read as 1.532 s."""
    seconds, pages = pd.Series(["1.532", "674", "0", "12.345.678"]), pd.Series(["2,5", "3", "1,75", "1,333"])
    assert decimal_mark([seconds, pages]) == "comma"
    assert number_formats({"seconds": seconds, "pages": pages}) == {"seconds": EURO, "pages": EURO}
    assert parse_number(seconds, EURO)[0].tolist() == [1532.0, 674.0, 0.0, 12345678.0]
    assert parse_number(pages, EURO)[0].tolist() == [2.5, 3.0, 1.75, 1.333]
    assert dot_grouped(seconds, EURO).tolist() == [True, False, False, True]
    # Read by the format kept with the model, a lone value reads as in the training export.
    assert parse_number(pd.Series(["1,333"]), EURO)[0].tolist() == [1.333]
    assert parse_number(pd.Series(["1,333"]), NumberFormat())[0].tolist() == [1333.0]
    # A column whose own values write decimal points keeps its dots in a European export.
    formats = number_formats({"score": pd.Series(["0.125", "1.125", "0.5"]), "pages": pages})
    assert formats["score"] == NumberFormat() and formats["pages"] == EURO
    # Without a format (a model from before), a dot is a decimal point, as it was read then.
    assert parse_number(pd.Series(["1.532", "2.5"]))[0].tolist() == [1.532, 2.5]


def test_a_stray_value_decides_nothing_for_the_export():
    """One "0,5" typed into a US export read "250,000" as 250; one "2.5M" in a European export
    turned a column's thousands back into decimals."""
    revenue, hours = pd.Series(["250,000", "500,000", "75,000"]), pd.Series(["12", "8", "0,5"])
    assert decimal_mark([revenue, hours]) is None
    assert parse_number(revenue, number_formats({"r": revenue, "h": hours})["r"])[0].tolist() == [250e3, 500e3, 75e3]
    euro = pd.Series([f"{i}.{i * 7 % 1000:03d}" for i in range(1, 40)] + ["2.5M"])
    formats = number_formats({"revenue": euro, "pages": pd.Series([f"{i},5" for i in range(30)])})
    assert formats["revenue"].dots_group and parse_number(euro, formats["revenue"])[0].iloc[0] == 1007.0


def test_a_head_count_has_no_decimals_but_in_an_export_of_decimal_points():
    employees, revenue = pd.Series(["1.104", "250", "12"]), pd.Series(["1,200,000", "2,500,000.50", "80.5"])
    assert number_formats({"employees": employees}, counts=["employees"])["employees"].dots_group
    us = number_formats({"employees": pd.Series(["12.000", "1.500"]), "revenue": revenue}, counts=["employees"])
    assert not us["employees"].dots_group  # an export of decimal points: "12.000" is twelve
    # A head count's comma groups thousands even in an export of decimal commas.
    euro = number_formats({"employees": employees, "pages": pd.Series(["2,5", "1,75"])}, counts=["employees"])
    assert euro["employees"].dots_group and not euro["employees"].comma_decimal
    assert parse_number(pd.Series(["1,149", "1.104"]), euro["employees"])[0].tolist() == [1149.0, 1104.0]


def test_numbers_sent_as_numbers_keep_their_value_under_any_reading_of_dots():
    sent = pd.Series([1.532, 1532.0, None, 1e20, "1.532"], dtype=object)
    values = parse_number(numbers_as_text(sent), EURO)[0]
    assert values.iloc[0] == 1.532 and values.iloc[1] == 1532.0 and values.iloc[3] == 1e20
    assert values.iloc[4] == 1532.0  # text is read as the export writes it
    assert numbers_as_text(pd.Series([1.532, 12.5])).tolist() == ["1.532e0", "12.5"]
    # Typed numbers say nothing of how a file writes: a parquet column of floats is no "dot" vote.
    assert decimal_mark([pd.Series([12.0, 2.5, 3.75]), pd.Series(["2,5", "1,75"])]) == "comma"


def test_a_decimal_comma_before_an_exponent_is_a_decimal_mark():
    """Excel's General format in a comma-decimal locale: 9,83E-05 was read as 0.00983."""
    values, failed = parse_number(pd.Series(["9,83E-05", "1,5e3", "0"]))
    assert values.tolist() == [9.83e-05, 1500.0, 0.0] and not failed.any()


def test_a_date_that_starts_with_its_year_is_never_read_day_first():
    """pandas infers one format from the first value: read day first, 2024-11-01 10:31:59 UTC
    would be 2024-01-11 for the whole column."""
    text = pd.Series(["2024-11-01 10:31:59 UTC", "2024-12-25 01:02:03 UTC", "13/01/2025 10:00", "9999-12-31 10:00 Z"])
    values, failed = parse_timestamps(text, day_first=True)
    assert values.tolist()[:3] == [pd.Timestamp("2024-11-01 10:31:59"), pd.Timestamp("2024-12-25 01:02:03"),
                                   pd.Timestamp("2025-01-13 10:00")]  # fmt: skip
    assert pd.isna(values[3]) and failed.tolist() == [False, False, False, True]  # past what is read, not an error


def test_a_date_impossible_in_either_order_says_nothing_about_the_order():
    assert numeric_date_order(pd.Series(["2025-01-01", "31/31/2025"])) is None  # junk, not month first
    assert numeric_date_order(pd.Series(["13/01/2025", "01/13/2025"])) is None  # as many say each
    assert numeric_date_order(pd.Series(["13/01/2025", "01/13/2025", "14/01/2025"])) is True


def test_unix_time_in_digits_is_read_as_the_service_reads_it():
    """The service read `"1767095580"` as a moment while batch scoring and training set such a
    row aside as "not a date". Eight digits stay a date (ISO 8601's basic form)."""
    from pydantic import TypeAdapter, ValidationError

    from serving.schemas import Moment, utc_naive

    service = TypeAdapter(Moment)
    texts = ["1767095580", "1767095580123", " 1767095580.5 ", "123456789", "1700000000000"]
    parsed, failed = parse_timestamps(pd.Series(texts, index=[7, 7, 7, 8, 8]))  # labels repeat: read by position
    assert not failed.any()
    assert parsed.tolist() == [utc_naive(service.validate_python(t.strip())) for t in texts]
    assert parsed.iloc[0] == pd.Timestamp("2025-12-30 11:53:00")
    # Past what either reads (year 2286): not a date here, an error there.
    assert parse_timestamps(pd.Series(["9999999999999"]))[1].all()
    with pytest.raises(ValidationError):
        service.validate_python("9999999999999")
    assert parse_timestamps(pd.Series(["20250304"]))[0].iloc[0] == pd.Timestamp("2025-03-04")


def test_a_date_against_the_order_does_not_set_how_the_others_are_read():
    """pandas takes one format from a column's first value: with 20/08/2026 first, a month-first
    export's 11/09/2026 was read as 11 September, though 20/08 itself was refused."""
    text = pd.Series(["20/08/2026 10:00", "11/09/2026 10:00", "10/09/2026 10:00"])
    parsed, failed = parse_timestamps(text, day_first=False)
    assert failed.tolist() == [True, False, False]
    assert parsed.iloc[1:].tolist() == [pd.Timestamp("2026-11-09 10:00"), pd.Timestamp("2026-10-09 10:00")]
    parsed, failed = parse_timestamps(pd.Series(["03/13/2026", "04/05/2026"]), day_first=True)
    assert failed.tolist() == [True, False] and parsed.iloc[1] == pd.Timestamp("2026-05-04")


def test_an_offset_after_utc_or_gmt_is_read_the_right_way_round_whatever_the_rows_around_it():
    """`2026-03-28 09:00 UTC+09:00` alone was midnight UTC; after a row written `... UTC` it was
    18:00 (dateutil reads `UTC+9` as nine hours behind), so a lead's demo request came and went
    with the order of the leads file."""
    tokyo = ["2026-03-28 09:00 UTC+09:00", "2026-03-28 09:00 GMT+9", "2026-03-28 09:00 utc+0900"]
    others = ["2026-03-27 19:00 UTC-05:00", "2026-03-28 05:30 UTC+05:30"]
    for rows in ([*tokyo, *others], ["2026-03-20 10:00 UTC", *tokyo, *others], [*others[::-1], *tokyo[::-1]]):
        parsed, failed = parse_timestamps(pd.Series(rows))
        moments = dict(zip(rows, parsed, strict=True))
        assert not failed.any() and {moments[t] for t in tokyo + others} == {pd.Timestamp("2026-03-28 00:00")}, rows


def test_moments_are_read_to_the_microsecond_as_the_service_reads_them():
    """.NET writes seven digits of a second: an activity at 12:00 with `as_of` 12:00:00.0000005 was
    read by a batch (nanoseconds) and not by the service (microseconds)."""
    from pydantic import TypeAdapter

    from serving.schemas import Moment, utc_naive
    from training.cli import pd_timestamp

    text = "2026-03-29T12:00:00.0000005Z"
    service = utc_naive(TypeAdapter(Moment).validate_python(text))
    assert parse_timestamps(pd.Series([text]))[0].iloc[0] == service == pd_timestamp(text)
    assert pd_timestamp("2026-03-29 21:00 UTC+09:00") == pd.Timestamp("2026-03-29 12:00")
