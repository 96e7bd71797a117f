"""API keys and roles.

Keys come from a YAML file (``--keys FILE`` / ``SHENHE_KEYS_FILE``)::

    keys:
      - name: monitor-east          # shown in logs instead of the key
        key: "k7Q...32+ random chars"
        roles: [classify]
      - name: reviewer-team
        sha256: "<hex sha256 of the key>"   # store only the hash if you prefer
        roles: [review]
      - name: ops
        key: "..."
        roles: [admin]               # admin may do everything
      - name: prometheus
        key: "..."
        roles: [metrics]             # scrape /metrics (it needs a key when keys are configured)

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. No header or an unknown key
is 401; a known key without the needed role is 403. Keys are compared as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Role = Literal["classify", "review", "metrics", "admin"]
ROLES: tuple[str, ...] = ("classify", "review", "metrics", "admin")
MIN_KEY_CHARS = 16


class KeysFileError(ValueError):
    """A keys file that cannot be used; ``str(err)`` is one line naming the file and the problem."""


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    key: str | None = Field(None, min_length=MIN_KEY_CHARS)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    roles: list[Role] = Field(min_length=1)

    @field_validator("roles", mode="before")
    @classmethod
    def _one_role_as_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> _KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' or 'sha256'")
        return self


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name (never the key) and its roles."""

    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles


ANONYMOUS = Principal(name="anonymous", roles=frozenset({"admin"}))


class AuthFailure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The configured keys. Empty = open service (the server then answers loopback clients only)."""

    def __init__(self, principals_by_digest: dict[str, Principal] | None = None) -> None:
        self._by_digest = dict(principals_by_digest or {})

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: Path | None) -> KeyRing:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeysFileError(f"{path}: keys file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise KeysFileError(f"{path}: cannot read keys file ({e.__class__.__name__})") from None
        except yaml.YAMLError:
            raise KeysFileError(f"{path}: not valid YAML") from None
        try:
            parsed = _KeysFile.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "keys file"
            raise KeysFileError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
        ring: dict[str, Principal] = {}
        for entry in parsed.keys:
            d = (entry.sha256 or digest(entry.key or "")).lower()
            if d in ring:
                raise KeysFileError(f"{path}: key {entry.name!r} repeats the key of {ring[d].name!r}")
            ring[d] = Principal(name=entry.name, roles=frozenset(entry.roles))
        if not ring:
            raise KeysFileError(f"{path}: 'keys' is empty; remove the file setting to run without keys")
        return cls(ring)

    def authenticate(self, presented: str | None) -> Principal:
        """The caller behind ``presented`` (raises :class:`AuthFailure` 401)."""
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise AuthFailure(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        d = digest(presented)
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, d):
                return principal
        raise AuthFailure(401, "unauthorized", "unknown API key")

    def by_digest(self, key_sha256: str) -> Principal | None:
        """The principal of a key given by its SHA-256 (a console session stores only that)."""
        return self._by_digest.get(key_sha256.lower())

    def authorize(self, presented: str | None, role: str) -> Principal:
        principal = self.authenticate(presented)
        if not principal.may(role):
            raise AuthFailure(403, "forbidden", f"this API key ({principal.name}) lacks the '{role}' role")
        return principal


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer ...`` or ``X-API-Key``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
