"""``--web.config.file``: TLS and basic auth in the Prometheus exporter-toolkit file format.

The same file node_exporter and Prometheus take (``tls_server_config``, ``basic_auth_users``,
``http_server_config.headers``), parsed strictly: unknown keys and values this server cannot
honour are errors, never silently ignored. Relative paths resolve against the file's folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from base64 import b64decode
from binascii import Error as Base64Error
from pathlib import Path
from typing import Literal

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from exporter.config import ConfigError, format_validation

log = logging.getLogger(__name__)

TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
MAX_PASSWORD_BYTES = 72
"""bcrypt looks at no more than 72 bytes; longer passwords are refused, not truncated."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: TLSVersion = "TLS12"
    max_version: TLSVersion = "TLS13"

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, value: str) -> str:
        if value in _UNSUPPORTED_CLIENT_AUTH:
            raise ValueError(
                f"{value} cannot be honoured (a requested client certificate is always "
                "verified); use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )
        if value not in _CLIENT_AUTH:
            raise ValueError(f"must be one of {', '.join(_CLIENT_AUTH)}")
        return value


class HTTPServerConfig(_Strict):
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name.replace("-", "").isalnum() or "\n" in text or "\r" in text:
                raise ValueError(f"invalid header {name!r}")
        return value


class WebConfig(_Strict):
    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = {}
    http_server_config: HTTPServerConfig = HTTPServerConfig()

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for user, hashed in value.items():
            if (
                not hashed.startswith(BCRYPT_PREFIXES)
                or len(hashed) != 60
                or not hashed[4:6].isdigit()
            ):
                raise ValueError(f"user {user!r}: not a bcrypt hash ($2a$, $2b$ or $2y$)")
        return value


def _resolve(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    return path if path.is_absolute() else base / path


class TLSFiles:
    """The server's TLS context; certificate files changed on disk are loaded again."""

    def __init__(self, source: str, tls: TLSServerConfig, base: Path) -> None:
        self._source = source
        self.cert = _resolve(base, tls.cert_file)
        self.key = _resolve(base, tls.key_file)
        self.client_ca = _resolve(base, tls.client_ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[tls.min_version]
        context.maximum_version = _VERSIONS[tls.max_version]
        context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
        if context.verify_mode != ssl.CERT_NONE and self.client_ca is None:
            raise ConfigError(
                f"{source}: tls_server_config.client_ca_file: required with client_auth_type "
                f"{tls.client_auth_type}"
            )
        self.context = context
        self._stamp = self._stamps()
        self._load(initial=True)

    def _files(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]

    def _stamps(self) -> tuple[tuple[float, int], ...]:
        stamps = []
        for path in self._files():
            try:
                info = path.stat()
                stamps.append((info.st_mtime, info.st_size))
            except OSError:
                stamps.append((0.0, -1))
        return tuple(stamps)

    def _load(self, initial: bool) -> None:
        assert self.cert is not None and self.key is not None
        try:
            self.context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                self.context.load_verify_locations(cafile=self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            message = f"{self._source}: tls_server_config: cannot load certificates: {exc}"
            if initial:
                raise ConfigError(message) from None
            log.error("%s; keeping the loaded ones", message)

    def reload_if_changed(self) -> bool:
        """Load the files again when one changed on disk (new connections get them)."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self._load(initial=False)
        log.info("TLS certificate files changed; loaded them again")
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, in a thread (bcrypt is slow).

    An unknown user is checked against a dummy hash, so the time taken does not tell which users
    exist. Successful checks are remembered (keyed by a SHA-256 of user, password and hash) so
    Prometheus's scrapes with the same credentials cost one bcrypt run, not one each.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u: h.encode() for u, h in users.items()}
        cost = max((int(h[4:6]) for h in users.values()), default=10)
        self._dummy = bcrypt.hashpw(b"dummy password", bcrypt.gensalt(rounds=cost))
        self._verified: set[bytes] = set()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = b64decode(header[6:], validate=True).decode().partition(":")
        except (Base64Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
        secret = password.encode()
        known = user in self._users
        hashed = self._users.get(user, self._dummy)
        if len(secret) > MAX_PASSWORD_BYTES:
            secret = secret[:MAX_PASSWORD_BYTES]
            known = False  # still spend the time, then refuse
        key = hashlib.sha256(user.encode() + b"\0" + secret + b"\0" + hashed).digest()
        if known and key in self._verified:
            return True
        matched = await asyncio.to_thread(bcrypt.checkpw, secret, hashed)
        if matched and known:
            if len(self._verified) > 1024:
                self._verified.clear()
            self._verified.add(key)
            return True
        return False


class WebSettings:
    """A loaded web config file: TLS context (or None), basic auth, extra headers."""

    def __init__(self, config: WebConfig, source: str) -> None:
        base = Path(source).parent
        tls = config.tls_server_config
        self.tls = TLSFiles(source, tls, base) if tls is not None else None
        self.auth = BasicAuth(config.basic_auth_users)
        self.headers = list(config.http_server_config.headers.items())


def load_web_config(path: str | Path) -> WebSettings:
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    try:
        config = WebConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc)) from None
    return WebSettings(config, source)
