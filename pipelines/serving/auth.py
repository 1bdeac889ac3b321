"""Who is calling: API keys (hashes in a keys file) and OIDC / OAuth2 JWTs, both giving a `Principal`.

The principal's groups are the only groups the service ever queries with. Every decision is
logged with its reason and never with the token. Failures are typed: `AuthFailed` (the caller's
credentials are missing or wrong: 401 with no detail) and `AuthUnavailable` (the service cannot
decide, e.g. an unreadable keys file or an unreachable JWKS: 503). Neither ever lets a caller in.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger(__name__)
KEY_PREFIX = "rag"
_KEY = re.compile(rf"^{KEY_PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
# Symmetric and unsigned algorithms are never accepted: with a JWKS, allowing HS256 would let anyone
# sign with the public key as the HMAC secret (algorithm confusion); `none` needs no key at all.
FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})


class AuthFailed(Exception):
    """The credentials are missing, malformed, expired, revoked or not ours (HTTP 401)."""


class AuthUnavailable(Exception):
    """The service cannot check credentials right now (HTTP 503); nobody gets in."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who, in which groups, and how they proved it (`api_key` or `oidc`)."""

    subject: str
    groups: frozenset[str]
    method: str


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key as stored: never the key itself, only the sha256 of its secret."""

    key_id: str
    name: str
    groups: tuple[str, ...]
    secret_sha256: str
    created_at: str
    revoked_at: str | None = None


def _digest(secret: str) -> str:
    # A plain sha256 is enough here: the secret is 32 random bytes (256 bits), so no dictionary or
    # brute-force attack applies and a slow KDF (bcrypt, argon2) would only cost every request time.
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """API keys in a JSON file (mode 0600), re-read whenever the file changes so a revoke acts at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKeyRecord] = {}

    def create(self, name: str, groups: Sequence[str]) -> tuple[ApiKeyRecord, str]:
        """A new key for `groups`; returns the record and the key, which is shown once and never stored."""
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        record = ApiKeyRecord(key_id, name, tuple(sorted(set(groups))), _digest(secret), now)
        with self._locked():
            keys = self._read()
            keys[key_id] = record
            self._write(keys)
        return record, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (kept for the audit trail); KeyError if there is no such key."""
        with self._locked():
            keys = self._read()
            if key_id not in keys:
                raise KeyError(key_id)
            keys[key_id] = replace(keys[key_id], revoked_at=datetime.now(UTC).isoformat(timespec="seconds"))
            self._write(keys)
        return keys[key_id]

    def records(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        return sorted(self._read().values(), key=lambda r: (r.created_at, r.key_id))

    def verify(self, token: str) -> ApiKeyRecord:
        """The live record of `token`; AuthFailed if unknown, wrong or revoked, AuthUnavailable if unreadable."""
        match = _KEY.match(token)
        if match is None:
            raise AuthFailed("malformed api key")
        record = self._current().get(match["id"])
        # Compare digests in constant time, and do so even for an unknown id.
        expected = record.secret_sha256 if record else "0" * 64
        if not hmac.compare_digest(expected, _digest(match["secret"])) or record is None:
            raise AuthFailed("unknown api key")
        if record.revoked_at:
            raise AuthFailed(f"revoked api key {record.key_id}")
        return record

    def _current(self) -> dict[str, ApiKeyRecord]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}  # no keys made yet: every key is unknown
        except OSError as err:
            raise AuthUnavailable(f"keys file {self.path}: {err}") from err
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._keys, self._stamp = self._read(), stamp
        return self._keys

    def _read(self) -> dict[str, ApiKeyRecord]:
        try:
            if self.path.stat().st_mode & 0o022:
                # Anyone who can write the file can mint keys: refuse it rather than trust it.
                raise AuthUnavailable(f"keys file {self.path} is writable by group or others; chmod 600 it")
            raw = json.loads(self.path.read_text())
            return {r["key_id"]: ApiKeyRecord(**{**r, "groups": tuple(r["groups"])}) for r in raw["keys"]}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AuthUnavailable(f"keys file {self.path} unreadable: {err}") from err

    def _write(self, keys: dict[str, ApiKeyRecord]) -> None:
        payload = json.dumps({"keys": [asdict(r) for r in keys.values()]}, indent=2)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass(frozen=True)
class OidcConfig:
    """What a JWT must match: issuer, audience, signing keys (JWKS), algorithms; where its groups are."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...]
    groups_claim: str = "groups"
    leeway_s: float = 30.0


class JwtVerifier:
    """Verifies OIDC / OAuth2 access tokens against the issuer's JWKS (keys cached by PyJWT)."""

    def __init__(self, config: OidcConfig) -> None:
        import jwt

        bad = FORBIDDEN_ALGORITHMS & set(config.algorithms)
        if bad or not config.algorithms:
            raise ValueError(f"OIDC_ALGORITHMS must name asymmetric algorithms only, got {config.algorithms}")
        self.config = config
        self._jwks = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; AuthFailed for any invalid token, AuthUnavailable without JWKS."""
        import jwt

        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as err:
            raise AuthUnavailable(f"JWKS unreachable: {err}") from err
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as err:
            raise AuthFailed(f"no signing key: {type(err).__name__}") from err
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(self.config.algorithms),
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as err:
            raise AuthFailed(f"invalid jwt: {type(err).__name__}") from err
        return Principal(str(claims["sub"]), _groups_claim(claims, self.config.groups_claim), "oidc")


def _groups_claim(claims: dict[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    # An odd claim (a string, numbers, nested objects) is not read as "some groups": the token is refused.
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise AuthFailed(f"claim {name!r} is not a list of strings")
    return frozenset(value)


class Authenticator:
    """Turns an `Authorization` header into a principal, by API key or by JWT."""

    def __init__(self, keys: KeyStore, jwt_verifier: JwtVerifier | None) -> None:
        self.keys = keys
        self.jwt = jwt_verifier

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller; AuthFailed (401) or AuthUnavailable (503) otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailed("no bearer token")
        if token.startswith(f"{KEY_PREFIX}_"):
            record = self.keys.verify(token)
            return Principal(f"key:{record.key_id}:{record.name}", frozenset(record.groups), "api_key")
        if self.jwt is None:
            raise AuthFailed("not an api key and OIDC is not configured")
        return self.jwt.verify(token)


def authenticator_from(settings: Settings) -> Authenticator:
    """The authenticator the settings describe; OIDC only when OIDC_ISSUER is set."""
    verifier = None
    if settings.oidc_issuer:
        if not (settings.oidc_audience and settings.oidc_jwks_url):
            # An unchecked audience would accept tokens the issuer minted for any other application.
            raise ValueError("OIDC_ISSUER is set: OIDC_AUDIENCE and OIDC_JWKS_URL must be set too")
        verifier = JwtVerifier(
            OidcConfig(
                issuer=settings.oidc_issuer,
                audience=settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                algorithms=tuple(a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()),
                groups_claim=settings.oidc_groups_claim,
                leeway_s=settings.oidc_leeway_s,
            )
        )
    return Authenticator(KeyStore(settings.api_keys_path), verifier)
