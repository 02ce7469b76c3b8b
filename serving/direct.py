"""CRM leads of a request scored straight from the validated request objects, without the
round trip through text cells that exports need.

One lead (the CRM's "this lead changed" call) is cleaned and featurised with plain Python
and small NumPy arrays, in a fraction of a millisecond instead of tens: it mirrors the
cleaning rules of `features.ingest` and the features of `features.build.build_crm_features`.
A batch is cleaned value by value the same way and then goes through the shared
`build_crm_features`, so only the cleaning is mirrored. Tests prove both give the general
path's numbers lead for lead. Whatever they do not mirror (a value the general path would
reject, repeated lead ids, a flat-CSV model) makes them answer None, and the caller takes
the general path, which gives the error.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from features.build import build_crm_features
from features.clean import FALSE_TOKENS, TRUE_TOKENS, email_domain, snake_name, tidy_text
from features.engagement import INTENT_TYPES, MAX_DECAY_EXPONENT
from features.fit import _TECH_SPLIT, FREE_MAIL_DOMAINS, ICP_LISTS, icp_key, icp_wanted, tech_feature
from features.ingest import BANT_SYNONYMS
from features.schema import ACTIVITY_TYPES, BANT_FIELDS, BANT_VALUES, LEAD_CATEGORICAL, OTHER_ACTIVITY
from serving.schemas import Lead
from serving.scoring import UNSUBSCRIBES, LoadedModel, score_matrix

_DAY = 86400.0
_EPOCH_NS = pd.Timestamp("1900-01-01").value
_NS = 1_000_000_000
_YEARS = (0, pd.Timestamp("2201-01-01").value - _EPOCH_NS)  # nanoseconds since 1900
_KINDS = (*ACTIVITY_TYPES, OTHER_ACTIVITY)
_CONTRACT_TYPES = frozenset(ACTIVITY_TYPES)
_MAX_CACHED = 10_000
_MAX_CACHED_LENGTH = 1_000
_UNSEEN = object()
_TEXT = frozenset((*LEAD_CATEGORICAL, "tech_stack", "email"))


_EPOCH = dt.datetime(1900, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)


def _ns(moment: dt.datetime) -> int | None:
    """Naive-UTC nanoseconds since 1900 of a moment (plain datetime arithmetic: a pandas
    Timestamp per activity would cost more than the features), or None outside the years the
    cleaning accepts."""
    if isinstance(moment, pd.Timestamp):
        moment = moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo is not None else moment
        value = moment.as_unit("ns").value - _EPOCH_NS
    else:
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        value = (moment - _EPOCH) // _MICROSECOND * 1000
    return value if _YEARS[0] <= value < _YEARS[1] else None


def _lead_id(raw: str) -> str:
    """The id as `clean_leads` reads it."""
    return tidy_text(raw)


def _merge_spellings(values: list[str | None]) -> list[str | None]:
    """`features.clean.canonical_spelling` of one column: spellings that differ only by case
    become the most frequent one (on a tie, the first in sort order)."""
    counts = Counter(v for v in values if v is not None)
    best: dict[str, str] = {}
    for spelling, count in counts.items():
        fold = spelling.casefold()
        if fold not in best or (-count, spelling) < (-counts[best[fold]], best[fold]):
            best[fold] = spelling
    if len(best) == len(counts):
        return values
    return [None if v is None else best[v.casefold()] for v in values]


_FIRST, _END = np.datetime64("1900-01-01", "ns"), np.datetime64("2201-01-01", "ns")


def _naive_utc(moments: list[dt.datetime]) -> np.ndarray | None:
    """The moments as naive-UTC datetime64[ns] (one conversion for all), or None when one is
    outside the years the cleaning accepts."""
    naive = [m if m.tzinfo is None else m.astimezone(dt.UTC).replace(tzinfo=None) for m in moments]
    values = pd.DatetimeIndex(naive, dtype="datetime64[ns]").to_numpy()  # NumPy's own conversion is 20x slower
    if len(values) and ((values < _FIRST) | (values >= _END)).any():
        return None
    return values


class DirectScorer:
    """Scores a request's leads for one loaded model; settings are looked up once."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        spec = model.scorer.spec
        settings = spec.settings
        self.enabled = spec.kind == "crm"
        if not self.enabled:  # a flat model's leads take the general path; it has no CRM settings
            return
        self.tokens = frozenset(t.casefold() for t in settings.get("missing_tokens", ("",)))
        self.vocabulary = [(tech_feature(tech), tech) for tech in settings.get("tech_vocabulary", [])]
        self.features = model.feature_params
        icp = self.features.icp
        self.icp = [(column, icp_wanted(getattr(icp, listed), icp)) for column, listed in ICP_LISTS]
        self.rate = np.log(2) / (self.features.decay_half_life_days * _DAY)
        self.weights = dict(self.features.engagement_weights)
        self.levels = {
            column: {level.casefold(): float(i) for i, level in enumerate(levels)}
            for column, levels in spec.categories.items()
        }
        self.columns = spec.columns
        # Where a missing value means a number to the model (`to_model_frame` does the same).
        self.missing_as = [(spec.columns.index(c), value) for c, value in spec.missing_as.items()]
        # Values as sent -> as cleaned: a CRM repeats few distinct spellings.
        self.kinds: dict[str, tuple[str, str]] = {}
        self.texts: dict[str, str | None] = {}
        # As `criteria_inputs` does: every hand-raise type the features have, in the model or not.
        self.hand_raise = [f"days_since_{kind}" for kind in model.criteria.hand_raise_types if kind in INTENT_TYPES]

    # -- cleaning, value by value, as features.clean and features.ingest do it -----------------
    def _text(self, value: object) -> str | None:
        cached = self.texts.get(value, _UNSEEN) if type(value) is str else _UNSEEN
        if cached is not _UNSEEN:
            return cached
        text = tidy_text("" if value is None else value)
        text = None if text.casefold() in self.tokens else text
        # Bounded in number and size: the values come from clients (a joined tech stack has no
        # length limit, and 40 distinct 14 MB ones grew a worker by 350 MB).
        if type(value) is str and len(value) <= _MAX_CACHED_LENGTH and len(self.texts) < _MAX_CACHED:
            self.texts[value] = text
        return text

    def _flag(self, value: bool | None) -> float:
        text = self._text(value)
        if text is None:
            return float("nan")
        folded = text.strip().casefold()
        return 1.0 if folded in TRUE_TOKENS else 0.0 if folded in FALSE_TOKENS else float("nan")

    def _attributes(self, lead: Lead) -> dict[str, Any]:
        """The lead's attributes as `clean_leads` leaves them (before spellings are merged)."""
        out: dict[str, Any] = {}
        for column in LEAD_CATEGORICAL:
            text = self._text(getattr(lead, column))
            if column in BANT_FIELDS:  # cleaned as text first, then read as a BANT answer
                folded = "unknown" if text is None else BANT_SYNONYMS.get(text.casefold(), text.casefold())
                text = folded if folded in BANT_VALUES else "unknown"
            out[column] = text
        out["employees"] = float("nan") if lead.employees is None else float(lead.employees)
        out["annual_revenue"] = float("nan") if lead.annual_revenue is None else float(lead.annual_revenue)
        out["do_not_contact"] = self._flag(lead.do_not_contact)
        out["sales_accepted"] = self._flag(lead.sales_accepted)
        stack = lead.tech_stack
        out["tech_stack"] = self._text(";".join(stack) if isinstance(stack, list) else stack)
        out["email"] = self._text(lead.email)
        return out

    def _kind(self, raw: str) -> tuple[str, str]:
        """The activity type as `clean_activities` reads it ("" when blank): as spelt (which
        tells repeats apart) and as counted (a type outside the contract is "other")."""
        kind = self.kinds.get(raw)
        if kind is None:
            spelt = snake_name(raw)
            kind = (spelt, spelt if spelt in _CONTRACT_TYPES or not spelt else OTHER_ACTIVITY)
            if len(self.kinds) < _MAX_CACHED:  # bounded: the spellings come from clients
                self.kinds[raw] = kind
        return kind

    def _events(self, lead: Lead) -> list[tuple[int, str]] | None:
        """(nanoseconds since 1900, activity type) of each activity in the request's order, or
        None when one would be quarantined."""
        events, seen = [], set()
        for activity in lead.activities:
            occurred = _ns(activity["occurred_at"])
            spelt, kind = self._kind(activity["activity_type"])
            if occurred is None or not kind:
                return None
            key = (occurred, spelt, activity.get("value"))
            if key not in seen:  # a repeat of an earlier activity is one event, as `clean_activities` reads it
                seen.add(key)
                events.append((occurred, kind))
        return events

    # -- one lead --------------------------------------------------------------------------------
    def features_of(self, lead: Lead, as_of: pd.Timestamp) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The lead's features and criteria context as `prepare_crm_leads` builds them, or
        None when the general path must handle the lead."""
        if not self.enabled or lead.created_at is None:
            return None
        created = _ns(lead.created_at)
        moment = _ns(as_of)
        if created is None or moment is None or created > moment:
            return None
        events = self._events(lead)
        if events is None:
            return None
        out = self._attributes(lead)
        context = {name: out.pop(name) for name in ("email", "sales_accepted")}
        context["do_not_contact"] = out["do_not_contact"]
        self._fit(out, context["email"], created, moment)
        self._engagement(events, moment, out)
        out["activities_per_30d"] = out["n_activities_total"] / max(out["lead_age_days"], 1.0) * 30.0
        return out, context

    def _fit(self, out: dict[str, Any], email: str | None, created: int, moment: int) -> None:
        """`features.fit.fit_features` for one lead, from its cleaned attributes in `out`."""
        employees, revenue = out["employees"], out["annual_revenue"]
        out["revenue_per_employee"] = revenue / employees if employees > 0 else float("nan")
        domain = email_domain(email)
        out["business_email"] = float("nan") if domain is None else float(domain not in FREE_MAIL_DOMAINS)
        stack = out.pop("tech_stack")
        if stack is None:
            out["n_technologies"] = float("nan")
            for name, _ in self.vocabulary:
                out[name] = float("nan")
        else:
            items = {t.casefold() for t in _TECH_SPLIT.split(stack.strip()) if t}
            out["n_technologies"] = float(len(items))
            for name, tech in self.vocabulary:
                out[name] = float(tech in items)
        out["bant_confirmed"] = float(sum(out[c] == "confirmed" for c in BANT_FIELDS))
        icp = self.features.icp
        checks = [icp_key(out[column], icp) in wanted for column, wanted in self.icp]
        checks.append(icp.min_employees <= employees <= icp.max_employees)
        out["icp_match"] = sum(map(float, checks)) / len(checks)
        out["lead_age_days"] = float(moment // 1000 - created // 1000) / 1e6 / _DAY  # as fit_features: microseconds

    def _engagement(self, events: list[tuple[int, str]], now: int, out: dict[str, Any]) -> None:
        """`features.engagement.engagement_features` for one lead: which events count is decided
        to the nanosecond (`events` and `now` in nanoseconds since 1900), ages in whole seconds."""
        events.sort(key=lambda e: e[0])  # stable: ties keep the request's order, as in the batch path
        stamps = [s for s, _ in events]
        windows = self.features.windows_days
        starts = {w: now - int(w * _DAY) * _NS for w in windows}
        month = int(30 * _DAY) * _NS

        def count(times: list[int], start: int, end: int) -> float:
            return float(bisect_left(times, end) - bisect_left(times, start))

        def since(times: list[int]) -> float:
            last = bisect_left(times, now) - 1
            return (now // _NS - times[last] // _NS) / _DAY if last >= 0 else float("nan")

        for w in windows:
            out[f"n_activities_{w}d"] = count(stamps, starts[w], now)
        upto = bisect_left(stamps, now)
        out["n_activities_total"] = float(upto - bisect_left(stamps, 0))
        out["days_since_last_activity"] = since(stamps)
        out["velocity_30d"] = count(stamps, now - month, now) - count(stamps, now - 2 * month, now - month)
        for kind in _KINDS:
            times = [s for s, k in events if k == kind]
            for w in windows:
                out[f"n_{kind}_{w}d"] = count(times, starts[w], now)
            out[f"n_{kind}_total"] = count(times, 0, now)
            if kind in INTENT_TYPES:
                out[f"days_since_{kind}"] = since(times)
        out["engagement_decayed"] = self._decayed([(s // _NS, k) for s, k in events], upto, now // _NS)

    def _decayed(self, events: list[tuple[int, str]], upto: int, now: int) -> float:
        """`features.engagement._decayed_score` for one lead (same formula, same order)."""
        if upto == 0:
            return 0.0
        first = events[0][0]
        offsets = np.array([s - first for s, _ in events], dtype=np.int64)
        exponent = self.rate * offsets
        if exponent.max(initial=0) > MAX_DECAY_EXPONENT:
            return float("nan")  # a history this long takes the general path
        weights = np.array([self.weights.get(k, 0.0) for _, k in events], dtype=np.float64)
        terms = (weights * np.exp(exponent)).tolist()
        # pandas' grouped cumulative sum is Kahan-compensated: the same steps, the same bits.
        running = compensation = 0.0
        for term in terms[:upto]:
            step = term - compensation
            total = running + step
            compensation = total - running - step
            running = total
        scale = np.exp(-self.rate * np.array([now - first], dtype=np.int64))
        return float(running * scale[0])

    # -- many leads --------------------------------------------------------------------------------
    def prepare(self, leads: list[Lead], as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """Features and criteria context of the leads, all as of one moment, as
        `prepare_crm_leads` builds them from `leads_to_frames`, or None when the general
        path must take the request (it gives the errors)."""
        moment = _ns(as_of)
        if not self.enabled or moment is None:
            return None
        ids = [_lead_id(lead.lead_id) for lead in leads]
        if len(set(ids)) < len(ids):
            return None
        rows, created, stamps, act_ids, act_spelt, act_kinds, act_values = [], [], [], [], [], [], []
        for lead, lead_id in zip(leads, ids, strict=True):
            if lead.created_at is None:
                return None
            created.append(lead.created_at)
            rows.append(self._attributes(lead))
            for activity in lead.activities:
                spelt, kind = self._kind(activity["activity_type"])
                if not kind:
                    return None
                stamps.append(activity["occurred_at"])
                act_ids.append(lead_id)
                act_spelt.append(spelt)
                act_kinds.append(kind)
                act_values.append(activity.get("value"))
        created_at, occurred_at = _naive_utc(created), _naive_utc(stamps)
        now = np.datetime64(moment + _EPOCH_NS, "ns")
        if created_at is None or occurred_at is None or (created_at > now).any():
            return None
        columns: dict[str, Any] = {"lead_id": pd.Series(ids, dtype=object), "created_at": created_at}
        for column in rows[0]:
            values = [row[column] for row in rows]
            if column in LEAD_CATEGORICAL and column not in BANT_FIELDS:
                values = _merge_spellings(values)
            # Text stays in object columns with None for missing, as `clean_leads` leaves it.
            columns[column] = pd.Series(values, dtype=object) if column in _TEXT else np.array(values, dtype=float)
        clean = pd.DataFrame(columns)
        activities = pd.DataFrame(
            {"lead_id": pd.Series(act_ids, dtype=object), "occurred_at": occurred_at,
             "spelt": pd.Series(act_spelt, dtype=object), "value": np.array(act_values, dtype=float)}
        )  # fmt: skip
        # A repeat of an earlier activity is one event, as `clean_activities` reads it (by the type as spelt).
        activities = activities.drop_duplicates().drop(columns="value")
        activities.insert(2, "activity_type", pd.Series(act_kinds, dtype=object)[activities.index])
        activities = activities.drop(columns="spelt")
        vocabulary = self.model.scorer.spec.settings.get("tech_vocabulary", [])
        features = build_crm_features(clean, activities, pd.Series(np.full(len(leads), now)), self.features, vocabulary)
        return features, clean[["email", "sales_accepted", "do_not_contact"]]

    # -- scoring ------------------------------------------------------------------------------
    def score(self, lead: Lead, as_of: pd.Timestamp) -> dict[str, Any] | None:
        """The lead's `LeadScore` fields, or None when the general path must score it."""
        built = self.features_of(lead, as_of)
        if built is None:
            return None
        values, context = built
        if values["engagement_decayed"] != values["engagement_decayed"]:
            return None
        row = np.empty((1, len(self.columns)))
        for j, column in enumerate(self.columns):
            value = values.get(column)
            levels = self.levels.get(column)
            if levels is not None:
                row[0, j] = np.nan if value is None else levels.get(str(value).strip().casefold(), np.nan)
            else:
                row[0, j] = np.nan if value is None else value
        for j, meant in self.missing_as:
            if row[0, j] != row[0, j]:
                row[0, j] = meant
        inputs: dict[str, Any] = {name: [values[name]] for name in ("icp_match", "bant_confirmed", "lead_age_days")}
        if UNSUBSCRIBES in values:
            inputs[UNSUBSCRIBES] = [values[UNSUBSCRIBES]]
        if self.hand_raise:
            inputs["days_since_hand_raise"] = [float(np.fmin.reduce([values[c] for c in self.hand_raise]))]
        inputs.update({name: [value] for name, value in context.items()})
        columns = score_matrix(self.model, row, {k: [v] for k, v in values.items()}, inputs, [as_of])
        return {name: (column[0] if len(column) else None) for name, column in columns.items()}
