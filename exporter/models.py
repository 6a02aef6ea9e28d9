"""Pydantic models of the API's registration records and envelope: parsing only, no I/O.

Unknown fields are ignored (newer API versions add some); optional fields the API leaves out
or sends as null become ``None``. :func:`parse_registration` turns one raw record into a
:class:`Registration` or an :class:`InvalidRecord` with a short reason for the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

FUTURE_TOLERANCE_SECONDS = 300.0
"""Timestamps up to this far ahead of our clock are clock skew, further ahead are bad data."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ApiError(_Lenient):
    code: int | None = None
    message: str = ""


class Envelope(_Lenient):
    success: bool
    errors: list[ApiError] = []
    result: Any = None
    result_info: dict[str, Any] | None = None


class DeviceModel(_Lenient):
    id: str | None = None
    name: str | None = None
    client_version: str | None = None


class UserModel(_Lenient):
    id: str | None = None
    email: str | None = None
    name: str | None = None


class PolicyModel(_Lenient):
    id: str | None = None
    name: str | None = None


class RegistrationModel(_Lenient):
    id: str
    last_seen_at: str
    created_at: str | None = None
    updated_at: str | None = None
    deleted_at: str | None = None
    revoked_at: str | None = None
    key_type: str | None = None
    tunnel_type: str | None = None
    device: DeviceModel | None = None
    user: UserModel | None = None
    policy: PolicyModel | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """One registration as the exporter uses it: strings never None, times as Unix seconds."""

    id: str
    device_id: str
    device_name: str
    client_version: str
    tunnel_type: str
    key_type: str
    policy_id: str
    policy_name: str
    user_email: str
    user_name: str
    last_seen: float
    created: float | None
    updated: float | None
    revoked: float | None
    deleted: float | None

    @property
    def status(self) -> str:
        """``deleted`` wins over ``revoked``, which wins over ``active``."""
        if self.deleted is not None:
            return "deleted"
        if self.revoked is not None:
            return "revoked"
        return "active"


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    reason: str
    detail: str
    registration_id: str | None = None


class _BadTimestamp(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field)
        self.field = field
        self.reason = reason


def parse_timestamp(value: str) -> float:
    """RFC 3339 with or without fractional seconds, ``Z`` or an offset, to Unix seconds."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return parsed.timestamp()


def _time(field: str, value: str | None, now: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = parse_timestamp(value)
    except (ValueError, TypeError):
        raise _BadTimestamp(field, "bad_timestamp") from None
    if seconds > now + FUTURE_TOLERANCE_SECONDS:
        raise _BadTimestamp(field, "future_timestamp")
    return seconds


def _missing_reason(exc: ValidationError) -> str:
    for error in exc.errors():
        if error["type"] == "missing" and error["loc"] in (("id",), ("last_seen_at",)):
            return f"missing_{error['loc'][0]}"
    return "invalid_record"


def parse_registration(raw: object, now: float) -> Registration | InvalidRecord:
    """Parse one API record; ``now`` is the Unix time used to reject future timestamps."""
    if not isinstance(raw, dict):
        return InvalidRecord("invalid_record", f"record is a {type(raw).__name__}, not an object")
    try:
        model = RegistrationModel.model_validate(raw)
    except ValidationError as exc:
        registration_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        first = exc.errors()[0]
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        return InvalidRecord(_missing_reason(exc), detail, registration_id)
    try:
        last_seen = _time("last_seen_at", model.last_seen_at, now)
        if last_seen is None:
            return InvalidRecord("missing_last_seen_at", "last_seen_at is empty", model.id)
        created = _time("created_at", model.created_at, now)
        updated = _time("updated_at", model.updated_at, now)
        revoked = _time("revoked_at", model.revoked_at, now)
        deleted = _time("deleted_at", model.deleted_at, now)
    except _BadTimestamp as exc:
        value = getattr(model, exc.field)
        return InvalidRecord(exc.reason, f"{exc.field}: {value!r}", model.id)
    device = model.device or DeviceModel()
    user = model.user or UserModel()
    policy = model.policy or PolicyModel()
    return Registration(
        id=model.id,
        device_id=device.id or "",
        device_name=device.name or "",
        client_version=device.client_version or "",
        tunnel_type=model.tunnel_type or "",
        key_type=model.key_type or "",
        policy_id=policy.id or "",
        policy_name=policy.name or "",
        user_email=user.email or "",
        user_name=user.name or "",
        last_seen=last_seen,
        created=created,
        updated=updated,
        revoked=revoked,
        deleted=deleted,
    )
