"""Every metric the exporter exposes: name, type, HELP text and labels, in one place.

The renderer (``exposition.py``), the README's metric table, the alert rules and the
dashboards all use these names; a test checks the README lists each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "info"]

IDENTITY_LABELS = ("account_id", "registration_id")
"""The only labels a per-registration value series carries; join the info metric for more."""

INFO_LABELS = (
    "device_id",
    "device_name",
    "client_version",
    "tunnel_type",
    "key_type",
    "policy_id",
    "policy_name",
)
"""Descriptive labels of ``cloudflare_warp_registration_info`` (empty string when unknown)."""

USER_EMAIL_LABELS = ("user_email", "user_name")
USER_HASH_LABELS = ("user_hash",)

FLEET_LABELS = ("account_id", "status", "tunnel_type", "key_type", "client_version", "policy_name")

STALE_THRESHOLDS: tuple[tuple[str, int], ...] = (
    ("1h", 3600),
    ("1d", 86400),
    ("7d", 7 * 86400),
    ("30d", 30 * 86400),
)
"""Buckets of ``cloudflare_warp_registrations_last_seen_before``: label value, seconds."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family. ``name`` is the sample name as it appears in the exposition."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]

    @property
    def openmetrics_family(self) -> str:
        """The family name OpenMetrics wants: sample name without ``_total``/``_info``."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name


P = "cloudflare_warp_"

REGISTRATION_INFO = Metric(
    P + "registration_info",
    "info",
    "Descriptive labels of a WARP registration; always 1.",
    IDENTITY_LABELS + INFO_LABELS,
)
LAST_SEEN = Metric(
    P + "registration_last_seen_timestamp_seconds",
    "gauge",
    "Unix time the registration was last seen by Cloudflare (last_seen_at).",
    IDENTITY_LABELS,
)
LAST_SEEN_AGE = Metric(
    P + "registration_last_seen_age_seconds",
    "gauge",
    "Seconds since the registration was last seen, computed at scrape time.",
    IDENTITY_LABELS,
)
CREATED = Metric(
    P + "registration_created_timestamp_seconds",
    "gauge",
    "Unix time the registration was created (created_at).",
    IDENTITY_LABELS,
)
UPDATED = Metric(
    P + "registration_updated_timestamp_seconds",
    "gauge",
    "Unix time the registration was last updated (updated_at).",
    IDENTITY_LABELS,
)
REVOKED = Metric(
    P + "registration_revoked",
    "gauge",
    "1 if the registration is revoked (revoked_at is set), else 0.",
    IDENTITY_LABELS,
)
DELETED = Metric(
    P + "registration_deleted",
    "gauge",
    "1 if the registration is deleted (deleted_at is set), else 0.",
    IDENTITY_LABELS,
)
REVOKED_AT = Metric(
    P + "registration_revoked_timestamp_seconds",
    "gauge",
    "Unix time the registration was revoked; only for revoked registrations.",
    IDENTITY_LABELS,
)
DELETED_AT = Metric(
    P + "registration_deleted_timestamp_seconds",
    "gauge",
    "Unix time the registration was deleted; only for deleted registrations.",
    IDENTITY_LABELS,
)
FOUND = Metric(
    P + "registration_found",
    "gauge",
    "Per configured registration id: 1 if the API returned it, else 0.",
    IDENTITY_LABELS,
)
REGISTRATIONS = Metric(
    P + "registrations",
    "gauge",
    "Number of registrations by status (active, revoked, deleted) and descriptive labels.",
    FLEET_LABELS,
)
LAST_SEEN_BEFORE = Metric(
    P + "registrations_last_seen_before",
    "gauge",
    "Number of active registrations not seen for longer than the threshold.",
    ("account_id", "threshold"),
)
UP = Metric(
    P + "up",
    "gauge",
    "1 if the last refresh of the account succeeded, else 0.",
    ("account_id",),
)
SCRAPE_DURATION = Metric(
    P + "scrape_duration_seconds",
    "gauge",
    "Seconds the last refresh of the account took.",
    ("account_id",),
)
LAST_SUCCESS = Metric(
    P + "last_success_timestamp_seconds",
    "gauge",
    "Unix time of the account's last successful refresh; the age of the data served.",
    ("account_id",),
)
API_REQUESTS = Metric(
    P + "api_requests_total",
    "counter",
    "Cloudflare API requests by endpoint (list/get) and HTTP status code "
    "(or timeout/connection_error).",
    ("account_id", "endpoint", "code"),
)
INVALID_RECORDS = Metric(
    P + "invalid_records_total",
    "counter",
    "Registration records from the API that were skipped, by reason.",
    ("account_id", "reason"),
)
BUDGET_EXHAUSTED = Metric(
    P + "api_budget_exhausted_total",
    "counter",
    "Refreshes skipped because the client-side API budget (api.max_requests_per_5m) was spent.",
    (),
)
RATELIMIT_REMAINING = Metric(
    P + "api_ratelimit_remaining",
    "gauge",
    "Requests left in Cloudflare's rate-limit window, from the last Ratelimit response header.",
    (),
)
CONFIG_RELOAD_SUCCESSFUL = Metric(
    P + "config_last_reload_successful",
    "gauge",
    "1 if the last configuration (re)load succeeded, else 0.",
    (),
)
CONFIG_RELOAD_SUCCESS_TIME = Metric(
    P + "config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration (re)load.",
    (),
)
BUILD_INFO = Metric(
    P + "exporter_build_info",
    "info",
    "Version of the exporter and of Python it runs on; always 1.",
    ("version", "python_version"),
)

ALL_METRICS = (
    REGISTRATION_INFO,
    LAST_SEEN,
    CREATED,
    UPDATED,
    REVOKED,
    DELETED,
    REVOKED_AT,
    DELETED_AT,
    LAST_SEEN_AGE,
    FOUND,
    REGISTRATIONS,
    LAST_SEEN_BEFORE,
    UP,
    SCRAPE_DURATION,
    LAST_SUCCESS,
    API_REQUESTS,
    INVALID_RECORDS,
    BUDGET_EXHAUSTED,
    RATELIMIT_REMAINING,
    CONFIG_RELOAD_SUCCESSFUL,
    CONFIG_RELOAD_SUCCESS_TIME,
    BUILD_INFO,
)
