"""Batch scoring on Dask: leads and activities read as dask dataframes, co-partitioned by
lead, each partition scored by the single-process code (`serving.batch.score_batch`), and
written as partitioned parquet. Runs on a LocalCluster sized to the machine or on any
scheduler address (a cluster started by hand, dask-kubernetes, ...)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import WorkerPlugin

from features.clean import numbers_as_text, parse_timestamps
from features.ingest import (
    CountedNote,
    DataError,
    check_header,
    check_swallowed_rows,
    export_date_votes,
    extra_fields,
    header_separator,
    merge_counted,
    refuse_short_last_row,
    require_columns,
)
from features.schema import ACTIVITY_REQUIRED, LEAD_NUMERIC, LEAD_REQUIRED, contract_clash, contract_names
from features.tracking import shown_uri
from serving.batch import (
    ACTIVITY_STATES,
    NO_ACTIVITY_NOTE,
    OUTPUT_COLUMNS,
    UNDATED_NOTE,
    activity_after_note,
    activity_state,
    run_date_order,
    score_batch,
    whole_folder,
)
from serving.scoring import LoadedModel, ModelNotReady, load_champion

QUARANTINE_COLUMNS = ["table", "row", "lead_id", "reason"]
KIND = "_kind"
NOTE = "note"  # KIND of a row holding one of a partition's `CountedNote`s, as JSON in `reason`
CLOSED = "closed"  # KIND of a partition's row counting its leads the outcomes close (the count in `reason`)
MARKER = "activity "  # KIND of a partition's marker row: MARKER + its `activity_state` ("after": first in `reason`)
# Counts too: text holding "2.0" once a partition's frame mixed them with the rows of other kinds.
NUMBERS = {"probability": float, "score": float, "fit": float, "engagement": float, "activities_not_read": float}
ROW_KEY = "_row_key"  # (input partition << PART_SHIFT) + place in it: a row's way back to its file row
PART_SHIFT = 32
_MODELS: dict[tuple[str, str, str], LoadedModel] = {}  # one loaded model per worker process


@dataclass(frozen=True)
class DaskRun:
    scored: int
    quarantined: int
    output: Path
    dashboard: str | None
    notes: tuple[str, ...] = ()
    stages: dict[str, int] = field(default_factory=dict)  # scored leads per stage
    best: pd.DataFrame | None = None  # the `top` best scored leads, best first
    closed: int = 0  # lead rows left out as converted or lost by the export's outcomes


class DataframeDispatch(WorkerPlugin):
    """Worker plugin: import dask.dataframe when a worker starts, before it runs any task.

    A worker (re)started mid-job can otherwise run a shuffle's unpack task while another of its
    threads is still importing dask.dataframe: the unpack finds the dispatch module loaded but
    the pandas converters not yet registered, and fails with "No dispatch for DataFrame"."""

    name = "leadscore-dataframe-dispatch"

    def setup(self, worker) -> None:
        import dask.dataframe  # noqa: F401  (registers the pandas dispatch functions)


def prepare_workers(client) -> None:
    """Register the worker plugins every job needs: on the workers there now and on any that
    join or restart later."""
    client.register_plugin(DataframeDispatch(), name=DataframeDispatch.name)


SCHEDULER_SECONDS = 15


def check_scheduler(address: str) -> None:
    """A DataError when `address` is not one a Dask client can reach a scheduler at, in seconds:
    a malformed one raised a traceback, and another server's port (the dashboard's, a web
    server) left the client waiting for a handshake for ever. A scheduler speaks first."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    hint = "give the scheduler's address, e.g. tcp://HOST:8786"
    try:
        protocol, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise DataError(f"--scheduler {address}: {exc}; {hint}") from None
    if protocol != "tcp":
        return  # tls:// and others: Dask's own handshake, bounded by the client's timeout
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_SECONDS) as probe:
            probe.settimeout(SCHEDULER_SECONDS)
            if not probe.recv(1):
                raise OSError("closed the connection")
    except TimeoutError:
        raise DataError(
            f"--scheduler {address}: something listens there but is not a Dask scheduler (no handshake in "
            f"{SCHEDULER_SECONDS} s; the dashboard's port, 8787 by default, is not the scheduler's 8786)"
        ) from None
    except OSError as exc:
        raise DataError(f"--scheduler {address}: no Dask scheduler answers ({exc.strerror or exc}); {hint}") from None


def cluster_failure(exc: BaseException) -> str | None:
    """One line for a failure of the cluster itself (workers that died), None for any other."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (
            f"Dask workers died running a task of the job ({getattr(exc, 'task', '')!r}), every one that tried it: "
            "out of memory? Give each worker more memory (dask worker --memory-limit), or more, smaller partitions "
            "(--partitions)"
        )
    return None


def start_client(scheduler: str | None = None):
    """A client on `scheduler`, or on a LocalCluster with one single-threaded worker per core
    (scoring is Python and NumPy: processes, not threads, use the cores)."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)  # its INFO lines would bury the progress
    if scheduler:
        check_scheduler(scheduler)
        try:
            return Client(scheduler, timeout=f"{SCHEDULER_SECONDS}s")
        except (OSError, TimeoutError) as exc:
            raise DataError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc})") from None
    workers = os.cpu_count() or 1
    # Workers log a failed task (a broken row of a CSV, say) as an error with its traceback;
    # the client raises it, and the command says it in one line.
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL
    )
    return Client(cluster)


def _parquet_as_text(part: pd.DataFrame) -> pd.DataFrame:
    """A parquet partition as text cells, as `serving.batch.read_table` reads one: a typed number
    of a numeric lead column stays that number (1.532, not "1.532" read as 1532)."""

    def numeric(name: str) -> bool:
        return contract_names([name], "leads")[0].get(name, name) in LEAD_NUMERIC

    part = part.apply(lambda values: numbers_as_text(values) if numeric(str(values.name)) else values)
    return part.astype(object).where(part.notna(), "").astype(str)


def _best(scored, top: int) -> pd.DataFrame:
    """The `top` best leads as the local engine ranks them (`best_first`: by probability, ties
    by id): every lead tied with the last of the `top` highest probabilities is fetched, so a
    tie at the cut is broken by id, not by partition."""
    from serving.snapshots import best_first

    floor = scored.nlargest(top, "probability").compute()["probability"].min()
    # In each partition, as scored (a filter on the column alone was planned before its cast to float).
    tied = scored.map_partitions(lambda frame: frame[frame["probability"] >= floor], meta=scored._meta)
    return best_first(tied.compute()).head(top)


def read_frame(path: Path, *, blocksize: str = "64MB"):
    """A CSV file (or glob) or a parquet file/folder as a dask dataframe of text cells.

    A CSV is checked as the single-process reader checks it: each file's header when the frame
    is made (`check_header`), a trailing separator on a sample of the first file, and a quote
    that swallows rows in each partition as it is read, and a file whose last row is cut short
    without its line break (`refuse_short_last_row`). Parse errors surface where the frame is
    computed: wrap that in `csv_errors`. Unlike the single-process reader, a row with fewer
    fields than the header is not refused: its missing fields read as blank (counting them
    would read each file a second time)."""
    import dask.dataframe as dd

    text = str(path)
    if text.endswith((".parquet", ".pq")) or Path(text).is_dir():
        frame = dd.read_parquet(text)
        return frame.map_partitions(_parquet_as_text)
    # The separator the header uses, as the single-process reader takes it (`;` from a
    # spreadsheet in a comma-decimal locale); a glob's files are one export, so its first.
    files = sorted(glob.glob(text))
    empty = next((name for name in files if os.path.getsize(name) == 0), None)
    if empty:  # pandas' own error would surface as a traceback from inside dask
        raise DataError(f"{empty}: an empty file, not even a header row (a table with no rows has its header)")
    if not files:
        raise DataError(f"{text}: file not found")
    sep = header_separator(Path(files[0]))
    try:
        headers = [check_header(Path(name), sep) for name in files]  # every file's, refused before any read
        for name, header in zip(files, headers, strict=True):  # a job still writing it, as the local reader
            refuse_short_last_row(Path(name), sep, header)
        names = headers[0]
        sample = pd.read_csv(files[0], sep=sep, dtype=str, keep_default_na=False, nrows=SAMPLE_ROWS)
    except OSError as exc:
        raise DataError(f"{files[0]}: cannot open ({exc.strerror or exc})") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(_unreadable(text, exc, sep)) from exc
    options = {"sep": sep, "dtype": str, "keep_default_na": False, "blocksize": blocksize}
    extra = extra_fields(sample, Path(files[0]))  # rows ending in a separator the header lacks
    if extra:  # read under names of their own, so that a value there later is found, not dropped
        options |= {"header": 0, "names": [*names, *(f"{TRAILING}{i}" for i in range(extra))]}
    try:
        frame = dd.read_csv(text, sample=SAMPLE_BYTES, **options)
    except ValueError as exc:  # the header and a first row longer than the sample: cells of tens of kB
        raise DataError(
            f"{text}: its first rows do not fit in the {SAMPLE_BYTES // 1_000_000} MB Dask reads to learn the "
            f"columns (cells of that size?); --engine local reads it ({' '.join(str(exc).split())[:200]})"
        ) from None
    meta = frame._meta.drop(columns=[c for c in frame.columns if str(c).startswith(TRAILING)])
    return frame.map_partitions(_checked_block, text, sep, meta=meta)


SAMPLE_ROWS = 1000  # rows of a CSV read up front: its trailing separators, its encoding
# Bytes of a CSV Dask reads to learn its columns (its default, 256 kB, held few rows of long notes).
SAMPLE_BYTES = 4_000_000
TRAILING = "_trailing_field_"
ROW_TOKEN = "\x00row\x00"  # where a RowProblem's message names its row


class RowProblem(DataError):
    """A broken row found in one partition of a CSV on a worker. The partition does not know
    its place in the file: `csv_errors` numbers the row in the file on the client."""

    def __init__(self, path: str, part: int, row: int, message: str) -> None:
        super().__init__(message)
        self.args = (path, part, row, message)  # what unpickling on the client calls it with
        self.path, self.part, self.row, self.message = path, part, row, message

    def __str__(self) -> str:
        return self.message.replace(ROW_TOKEN, f"row {self.row + 1} of partition {self.part + 1}")


def _checked_block(block: pd.DataFrame, path: str, sep: str, partition_info: dict | None = None) -> pd.DataFrame:
    """One partition of a CSV as read, refused when a quote swallowed rows into a cell or a
    field past the header's names holds a value."""
    part = partition_info["number"] if partition_info else 0
    found: list[int] = []

    def name_row(row: int) -> str:
        found.append(row)
        return ROW_TOKEN

    trailing = [c for c in block.columns if str(c).startswith(TRAILING)]
    if trailing:
        filled = block[trailing].apply(lambda cells: cells.str.strip().ne("")).any(axis=1).to_numpy()
        if filled.any():
            row = int(filled.argmax())
            raise RowProblem(
                path, part, row, f"{path}: {ROW_TOKEN} has more fields than the header has names "
                f"({len(block.columns) - len(trailing)}): name every column in the header",
            )  # fmt: skip
        block = block.drop(columns=trailing)
    try:
        check_swallowed_rows(block, sep, Path(path), name_row=name_row)
    except DataError as exc:
        raise RowProblem(path, part, found[-1], str(exc)) from None
    return block


def _unreadable(path: str, exc: Exception, sep: str | None = None) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"{path}: not UTF-8 text ({exc.reason}); --engine dask reads UTF-8 "
            'only: save it as "CSV UTF-8", or score it with --engine local, which reads legacy encodings'
        )
    why = " ".join(str(exc).split("Original Message:")[-1].split())  # dask wraps pandas' message
    if "EOF inside string" in why:
        # Dask cuts a file into blocks at line ends, inside a quoted cell too: the block then ends
        # in an open quote. A broken quote is possible as well; the local engine tells them apart.
        return (
            f"{path}: a quoted cell runs past the end of a block of the file ({why}; with --engine dask, line "
            "numbers count from the start of a block): either cells hold line breaks (a note, an e-mail body), "
            "which --engine dask cannot read in blocks (use --engine local, which reads them), or a quote is "
            "never closed"
        )
    return (
        f"{path}: cannot read as CSV{f' with separator {sep!r}' if sep else ''} ({why}; with --engine dask, "
        "line numbers count from the start of a block of the file): a quote opened and never closed, or a row "
        "with more fields than the header?"
    )


UNREADABLE = (pd.errors.ParserError, UnicodeDecodeError)


@contextlib.contextmanager
def csv_errors(frames: dict[Path, object]):
    """Errors found while dask reads CSVs (`read_frame`'s frames, by path) on the workers, as a
    DataError naming the file and, for a broken row, its row in the file (counted on through a
    glob's files in name order); not a traceback from inside dask. Only this error path reads
    the files once more."""
    try:
        yield
    except RowProblem as exc:
        raise DataError(_numbered_in_file(exc, frames)) from None
    except UNREADABLE as exc:
        raise DataError(_unreadable(_unreadable_file(frames), exc)) from None


def _numbered_in_file(problem: RowProblem, frames: dict[Path, object]) -> str:
    frame = frames.get(Path(problem.path))
    while frame is not None:
        try:
            before = int(frame.partitions[: problem.part].map_partitions(len).compute().sum()) if problem.part else 0
        except RowProblem as earlier:  # an earlier partition is broken too: name the first
            problem = earlier
        except UNREADABLE:
            break
        else:
            return problem.message.replace(ROW_TOKEN, f"row {before + problem.row + 1}")
    return str(problem)


def _unreadable_file(frames: dict[Path, object]) -> str:
    """Which of the files pandas cannot parse (all of them named when that cannot be told)."""
    for path, frame in frames.items():
        try:
            frame.map_partitions(len).compute()
        except UNREADABLE:
            return str(path)
        except DataError:
            continue
    return " or ".join(map(str, frames))


def _contract_frame(frame, table: str, path: Path):
    """The contract's names whatever the headers' case, as the single-process path reads them."""
    if clash := contract_clash(frame.columns, table):
        raise DataError(f"{path}: {clash}")
    frame = frame.rename(columns=contract_names(frame.columns, table)[0])
    require_columns(frame.columns, {"leads": LEAD_REQUIRED, "activities": ACTIVITY_REQUIRED}[table], str(path))
    return frame


def leads_header(leads_path: Path) -> list[str]:
    """The columns of a leads file (CSV, glob or parquet) by their contract names, unread."""
    return list(_contract_frame(read_frame(leads_path), "leads", leads_path).columns)


def _newest_of_partition(occurred_at: pd.Series, day_first: bool | None) -> pd.Series:
    return pd.Series([parse_timestamps(occurred_at, day_first)[0].max()], dtype="datetime64[ns]")


def newest_activity(
    activities_path: Path, *, blocksize: str = "64MB", day_first: bool | None = None
) -> pd.Timestamp | None:
    """The newest activity of an activities file (None when it has none readable), computed
    on the cluster one partition at a time: the stale-export check of the local engine.
    `day_first`: the run's order of numeric dates (`date_order_on_dask`)."""
    frame = _contract_frame(read_frame(activities_path, blocksize=blocksize), "activities", activities_path)
    if "occurred_at" not in frame.columns:
        return None
    newest = frame["occurred_at"].map_partitions(
        _newest_of_partition, day_first, meta=("occurred_at", "datetime64[ns]")
    )
    with csv_errors({activities_path: frame}):
        found = newest.max().compute()
    return None if pd.isna(found) else pd.Timestamp(found)


def _date_votes(frame: pd.DataFrame) -> pd.DataFrame:
    day_first, month_first = export_date_votes(frame)
    return pd.DataFrame({"day_first": [day_first], "month_first": [month_first]})


def date_votes_on_dask(*frames) -> tuple[int, int]:
    """`export_date_votes` of tables read as dask dataframes (one pass over each)."""
    meta = pd.DataFrame({"day_first": pd.Series(dtype="int64"), "month_first": pd.Series(dtype="int64")})
    votes = [frame.map_partitions(_date_votes, meta=meta).sum().compute() for frame in frames]
    return sum(int(v["day_first"]) for v in votes), sum(int(v["month_first"]) for v in votes)


def date_order_on_dask(
    model: LoadedModel, leads_path: Path, activities_path: Path, *, blocksize: str = "64MB"
) -> bool | None:
    """`serving.batch.run_date_order` of a leads file and an activities file (one pass over each
    when the model stored no order)."""
    frames = {path: _contract_frame(read_frame(path, blocksize=blocksize), table, path)
              for path, table in ((leads_path, "leads"), (activities_path, "activities"))}  # fmt: skip
    with csv_errors(frames):
        return run_date_order(model, lambda: date_votes_on_dask(*frames.values()))


def file_separator(leads_path: Path) -> str | None:
    """The field separator of a CSV leads file (a glob's first file, as `read_frame` reads it);
    None for parquet, which writes no text."""
    text = str(leads_path)
    if text.endswith((".parquet", ".pq")) or Path(text).is_dir():
        return None
    files = sorted(glob.glob(text))
    return header_separator(Path(files[0])) if files else None


def numeric_values_on_dask(leads_path: Path, *, blocksize: str = "64MB") -> dict[str, pd.Series]:
    """The distinct values of each numeric lead column of a leads file (one pass over it): what
    `serving.batch.number_format_note` reads to tell which decimal mark the file writes."""
    import dask

    frame = _contract_frame(read_frame(leads_path, blocksize=blocksize), "leads", leads_path)
    numeric = [c for c in LEAD_NUMERIC if c in frame.columns]
    with csv_errors({leads_path: frame}):
        values = dask.compute(*(frame[c].dropna().unique() for c in numeric))
    return {column: pd.Series(v, dtype="object") for column, v in zip(numeric, values, strict=True)}


def bucket_by_lead(frame: pd.DataFrame, buckets: int) -> pd.DataFrame:
    keys = [k.strip() if isinstance(k, str) else "" for k in frame["lead_id"]]
    return frame.assign(_bucket=[zlib.crc32(k.encode()) % buckets for k in keys])


def _features_partition(
    leads: pd.DataFrame, activities: pd.DataFrame, *, as_of: pd.Timestamp, params, vocabulary, tokens
) -> pd.DataFrame:
    """Features of one partition's leads as of a moment: the cleaning and feature code of the
    single-process path, on the rows of these leads only."""
    from features.build import build_crm_features
    from features.ingest import Quarantine, clean_activities, clean_leads

    quarantine = Quarantine()
    raw = leads.drop(columns="_bucket").reset_index(drop=True)
    raw.insert(0, "_row", range(len(raw)))
    clean = clean_leads(raw, quarantine, tokens)
    clean = clean[clean["created_at"] <= as_of].reset_index(drop=True)  # as batch scoring and the service keep them
    acts = activities.drop(columns="_bucket").reset_index(drop=True)
    acts.insert(0, "_row", range(len(acts)))
    clean_acts = clean_activities(acts, pd.Index(clean["lead_id"]), quarantine)
    features = build_crm_features(clean, clean_acts, as_of, params, vocabulary)
    features.insert(0, "lead_id", clean["lead_id"].to_numpy())
    return features


def features_on_dask(leads, activities, as_of: pd.Timestamp, params, vocabulary, *, tokens=("",), partitions: int = 8):
    """Point-in-time features of every lead as of `as_of`, on dask dataframes of text cells
    (activity tables larger than memory are read and processed one partition at a time).

    Leads and activities are co-partitioned by lead, so each partition holds a lead's whole
    history and the windows, recency and decay are those of the single-process code.
    """
    from distributed import default_client

    with contextlib.suppress(ValueError):  # ValueError: no client, dask's local scheduler has no workers
        prepare_workers(default_client())
    leads = leads.map_partitions(bucket_by_lead, partitions).shuffle(on="_bucket", npartitions=partitions)
    activities = activities.map_partitions(bucket_by_lead, partitions).shuffle(on="_bucket", npartitions=partitions)
    options = {"as_of": as_of, "params": params, "vocabulary": list(vocabulary), "tokens": tuple(tokens)}
    sample = _features_partition(
        leads.get_partition(0).head(50, npartitions=-1), activities.get_partition(0).head(0, npartitions=-1), **options
    )
    import dask.dataframe as dd

    return dd.map_partitions(
        _features_partition, leads, activities, meta=sample.iloc[:0], align_dataframes=False, **options
    )


def _score_partition(
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    *,
    model_name: str,
    version: str,
    uri: str,
    as_of: pd.Timestamp,
    as_of_given: bool,
    day_first: bool | None,
    closed: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Score one partition with the model version the run started with (loaded once per worker),
    leaving out the leads in `closed`, as the local engine leaves out an export's closed leads."""
    key = (uri, model_name, version)
    if key not in _MODELS:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            _MODELS[key] = load_champion(model_name, version=version)
        except ModelNotReady as exc:  # said by the client as its own, it read as the client's store
            local = uri.startswith("sqlite:")  # a worker on another machine does not see this file
            raise ModelNotReady(
                f"on a Dask worker ({socket.gethostname()}), from {shown_uri(uri)}, the registry this command uses: "
                f"{exc}" + ("; workers on other machines need one they reach: an mlflow server" if local else "")
            ) from exc
    # Each row's key as its index: `score_batch` numbers quarantined rows by it (key + 1).
    leads = leads.drop(columns="_bucket").set_index(ROW_KEY).rename_axis(None)
    activities = activities.drop(columns="_bucket").set_index(ROW_KEY).rename_axis(None)
    shut = leads["lead_id"].astype(str).str.strip().isin(closed) if closed else None
    if shut is not None:
        leads = leads[~shut.to_numpy()]
    result = score_batch(_MODELS[key], leads, activities, as_of, day_first=day_first)
    scored = result.scored.assign(**{KIND: "scored"})
    quarantine = result.quarantine.astype({"row": str}).assign(**{KIND: "quarantine"})
    # Values read otherwise than written, counted here and added up over the partitions.
    counted = pd.DataFrame({KIND: NOTE, "reason": [json.dumps(dataclasses.astuple(n)) for n in result.counted]})
    # Partitions hold each lead's whole history, so this partition alone says whether the
    # activities given reach its leads (or the model does not need them): one marker row.
    state, first = activity_state(_MODELS[key].scorer, leads, activities, as_of if as_of_given else None, day_first)
    marker = {KIND: [MARKER + state], "reason": [first.isoformat() if first is not None else ""]}
    frames = [scored, quarantine, counted, pd.DataFrame(marker)]
    if shut is not None:
        frames.append(pd.DataFrame({KIND: [CLOSED], "reason": [str(int(shut.sum()))]}))
    frame = pd.concat(frames, ignore_index=True).reindex(columns=_columns())
    return frame.astype(object).where(frame.notna(), "").astype(str)


def _key_rows(frame: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
    """Give each row a key of its partition of the file(s) and its place there, which the
    shuffle by lead keeps: the quarantine turns it back into the row's place in the file."""
    part = partition_info["number"] if partition_info else 0
    return frame.assign(**{ROW_KEY: (part << PART_SHIFT) + np.arange(len(frame), dtype=np.int64)})


def _file_rows(quarantine: pd.DataFrame, offsets: dict[str, list[int]]) -> pd.DataFrame:
    """Quarantine rows numbered as in the files (1-based data rows), from the row keys."""
    keys = pd.to_numeric(quarantine["row"], errors="coerce") - 1
    known = keys.notna() & quarantine["table"].isin(list(offsets))
    if not known.any():
        return quarantine
    key = keys[known].astype(np.int64).to_numpy()
    starts = [
        offsets[table][part] for table, part in zip(quarantine.loc[known, "table"], key >> PART_SHIFT, strict=True)
    ]
    rows = np.asarray(starts, dtype=np.int64) + (key & ((1 << PART_SHIFT) - 1)) + 1
    return quarantine.assign(row=quarantine["row"].mask(known, pd.Series(rows.astype(str), index=keys.index[known])))


def _partition_starts(frame) -> list[int]:
    """Rows before each partition of a table read as a dask dataframe (one pass over it)."""
    lengths = frame.map_partitions(len).compute()
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).tolist()


def _columns() -> list[str]:
    return [*OUTPUT_COLUMNS, *[c for c in QUARANTINE_COLUMNS if c not in OUTPUT_COLUMNS], KIND]


def score_on_dask(
    client,
    model: LoadedModel,
    uri: str,
    leads_path: Path,
    activities_path: Path,
    output: Path,
    as_of: pd.Timestamp,
    *,
    partitions: int | None = None,
    as_of_given: bool = True,
    top: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    blocksize: str = "64MB",
    day_first: bool | None = None,
    closed: frozenset[str] = frozenset(),
) -> DaskRun:
    """Score every lead of the inputs on the cluster and write `output/scores/` and
    `output/quarantine/` as partitioned parquet (one file per partition: a task that is run
    again after a worker dies rewrites its own file, so no row is lost or written twice).

    `as_of_given`: False when `as_of` is just now, so no lead is warned about for activities
    after it. `top` best leads come back in `best` (the `--top` table); `on_progress` is called
    with (partitions scored, partitions); `blocksize` is the size of a CSV's partitions as read;
    `day_first`: the run's order of numeric dates (default: `date_order_on_dask`'s, one more
    pass over the files when the model stored none); `closed`: ids of leads not to score, those an
    export's outcomes close (`closed_lead_ids`)."""
    import dask
    import dask.dataframe as dd
    from distributed import as_completed, futures_of

    prepare_workers(client)
    leads = _contract_frame(read_frame(leads_path, blocksize=blocksize), "leads", leads_path)
    activities = _contract_frame(read_frame(activities_path, blocksize=blocksize), "activities", activities_path)
    raw = {"leads": leads, "activities": activities}
    with csv_errors({leads_path: leads, activities_path: activities}):
        if day_first is None:  # one order for the run, as the local engine reads a file
            day_first = run_date_order(model, lambda: date_votes_on_dask(leads, activities))
        buckets = partitions or max(leads.npartitions, 2 * len(client.scheduler_info()["workers"]))
        leads, activities = (
            frame.map_partitions(_key_rows)
            .map_partitions(bucket_by_lead, buckets)
            .shuffle(on="_bucket", npartitions=buckets)
            for frame in raw.values()
        )
        meta = pd.DataFrame({c: pd.Series(dtype=str) for c in _columns()})
        results = dd.map_partitions(
            _score_partition, leads, activities, meta=meta, align_dataframes=False,
            model_name=model.name, version=model.version, uri=uri, as_of=as_of, as_of_given=as_of_given,
            day_first=day_first, closed=dask.delayed(closed, pure=True),  # sent to each worker once, not per task
        ).persist()  # fmt: skip
        futures = futures_of(results)
        for done, _ in enumerate(as_completed(futures), start=1):
            if on_progress:
                on_progress(done, len(futures))
        counts = results[KIND].value_counts().compute()
        scored = results[results[KIND] == "scored"][OUTPUT_COLUMNS].astype(NUMBERS).astype({"activities_not_read": int})
        quarantine = results[results[KIND] == "quarantine"][QUARANTINE_COLUMNS]
        if counts.get("quarantine", 0):  # a second pass over the files, only when a row needs its number
            offsets = {table: _partition_starts(frame) for table, frame in raw.items()}
            quarantine = quarantine.map_partitions(_file_rows, offsets, meta=quarantine._meta)
        with whole_folder(output / "scores") as scores_parts, whole_folder(output / "quarantine") as quarantine_parts:
            scored.to_parquet(scores_parts, write_index=False)
            quarantine.to_parquet(quarantine_parts, write_index=False)
    state = next((s for s in ACTIVITY_STATES if counts.get(MARKER + s, 0)), "empty")
    notes: tuple[str, ...] = ()
    if state in ("none", "undated"):
        notes = (NO_ACTIVITY_NOTE if state == "none" else UNDATED_NOTE,)
    elif state == "after":
        firsts = results[results[KIND] == MARKER + "after"]["reason"].compute()
        notes = (activity_after_note(as_of, min(pd.Timestamp(first) for first in firsts)),)
    if counts.get(NOTE, 0):
        held = results[results[KIND] == NOTE]["reason"].compute()
        counted = merge_counted(CountedNote(w, what, n, tuple(shown)) for w, what, n, shown in map(json.loads, held))
        notes = (*notes, *map(str, counted))
    stages = scored["stage"].value_counts().compute()
    shut = results[results[KIND] == CLOSED]["reason"].astype(int).sum().compute() if counts.get(CLOSED, 0) else 0
    return DaskRun(
        scored=int(counts.get("scored", 0)),
        quarantined=int(counts.get("quarantine", 0)),
        output=output,
        dashboard=client.dashboard_link,
        notes=notes,
        stages={str(stage): int(n) for stage, n in stages.sort_values(ascending=False).items()},
        best=_best(scored, top) if top else None,
        closed=int(shut),
    )
