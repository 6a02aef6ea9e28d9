"""The configuration file: strict pydantic models and a loader with readable errors.

Every key is declared here and nowhere else; unknown keys are errors (like blackbox_exporter).
A config error becomes :class:`ConfigError` whose lines read ``FILE: accounts.0.account_id: ...``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.metrics import INFO_LABELS, USER_EMAIL_LABELS, USER_HASH_LABELS

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
TOKEN_ENV = "CLOUDFLARE_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
BASE_URL_ENV = "CLOUDFLARE_BASE_URL"

_ACCOUNT_ID = re.compile(r"^[0-9a-f]{32}$")
_REGISTRATION_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._:-]{0,127}$")


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is ready to print, one problem a line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiConfig(_Strict):
    base_url: str | None = None
    token_file: Path | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    max_requests_per_5m: Annotated[int, Field(ge=1, le=1200)] = 900
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


class AccountConfig(_Strict):
    account_id: str
    registrations: list[str] = Field(default_factory=list)
    discover: bool = False

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        if not _ACCOUNT_ID.match(value):
            raise ValueError("must be 32 lowercase hexadecimal characters")
        return value

    @field_validator("registrations")
    @classmethod
    def _registration_ids(cls, value: list[str]) -> list[str]:
        for index, registration_id in enumerate(value):
            if not _REGISTRATION_ID.match(registration_id):
                raise ValueError(f"item {index} ({registration_id!r}) is not a registration id")
        if len(set(value)) != len(value):
            raise ValueError("lists a registration id more than once")
        return value

    @model_validator(mode="after")
    def _something_to_watch(self) -> AccountConfig:
        if not self.registrations and not self.discover:
            raise ValueError("no registrations listed and discover is false: nothing to watch")
        return self


class CollectionConfig(_Strict):
    min_interval_seconds: Annotated[float, Field(ge=0)] = 30.0
    max_stale_seconds: Annotated[float, Field(ge=0)] = 900.0
    full_refresh_seconds: Annotated[float, Field(ge=0)] = 900.0


class MetricsConfig(_Strict):
    per_registration: bool = True
    user_labels: Literal["none", "email", "hashed"] = "none"
    user_hash_key_file: Path | None = None
    drop_labels: list[str] = Field(default_factory=list)

    @field_validator("drop_labels")
    @classmethod
    def _droppable(cls, value: list[str]) -> list[str]:
        allowed = INFO_LABELS + USER_EMAIL_LABELS + USER_HASH_LABELS
        for label in value:
            if label not in allowed:
                raise ValueError(f"{label!r} cannot be dropped; choose from {', '.join(allowed)}")
        return value


class Config(_Strict):
    api: ApiConfig = ApiConfig()
    accounts: Annotated[list[AccountConfig], Field(min_length=1)]
    collection: CollectionConfig = CollectionConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, value: list[AccountConfig]) -> list[AccountConfig]:
        seen: set[str] = set()
        for account in value:
            if account.account_id in seen:
                raise ValueError(f"account {account.account_id} is listed more than once")
            seen.add(account.account_id)
        return value


class Settings(BaseModel):
    """A loaded config plus what comes from the environment and files it names."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: str
    config: Config
    base_url: str
    token: SecretStr | None
    user_hash_key: SecretStr | None


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def format_validation(source: str, exc: ValidationError) -> str:
    return "\n".join(
        f"{source}: {_location(err['loc']) or '(top level)'}: {_describe(err)}"
        for err in exc.errors()
    )


def _read_secret(source: str, key: str, path: Path, base: Path) -> SecretStr:
    resolved = path if path.is_absolute() else base / path
    try:
        text = resolved.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{source}: {key}: cannot read {resolved}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{source}: {key}: {resolved} is empty")
    return SecretStr(text)


def parse_config(data: object, source: str) -> Config:
    """Validate already-parsed YAML; raise :class:`ConfigError` naming file and key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of keys")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate one YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {where}{problem}") from None
    return parse_config(data, source)


def resolve_settings(
    config: Config, source: str, environ: dict[str, str] | None = None
) -> Settings:
    """Combine the config with the environment: a value in the file wins over the environment."""
    env = os.environ if environ is None else environ
    base = Path(source).parent if source else Path()
    token: SecretStr | None
    if config.api.token_file is not None:
        token = _read_secret(source, "api.token_file", config.api.token_file, base)
    else:
        raw = env.get(TOKEN_ENV, "").strip()
        token = SecretStr(raw) if raw else None
    hash_key: SecretStr | None = None
    if config.metrics.user_labels == "hashed":
        if config.metrics.user_hash_key_file is None:
            raise ConfigError(
                f"{source}: metrics.user_hash_key_file: field required when user_labels is hashed"
            )
        hash_key = _read_secret(
            source, "metrics.user_hash_key_file", config.metrics.user_hash_key_file, base
        )
    base_url = config.api.base_url or env.get(BASE_URL_ENV, "").rstrip("/") or DEFAULT_BASE_URL
    return Settings(
        source=source, config=config, base_url=base_url, token=token, user_hash_key=hash_key
    )


def load_settings(path: str | Path, environ: dict[str, str] | None = None) -> Settings:
    """Load the config file and resolve the token and URL; raise :class:`ConfigError`."""
    return resolve_settings(load_config(path), str(path), environ)


def summary(settings: Settings) -> str:
    """The one-line summary ``--check-config`` prints (never the token)."""
    config = settings.config
    configured = sum(len(a.registrations) for a in config.accounts)
    discovering = sum(1 for a in config.accounts if a.discover)
    token = "set" if settings.token is not None else f"missing (set {TOKEN_ENV})"
    return (
        f"{settings.source}: OK: {len(config.accounts)} account(s), "
        f"{configured} configured registration(s), {discovering} discovering; "
        f"API {settings.base_url}; token {token}"
    )
