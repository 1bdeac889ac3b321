"""API keys: only hashes on disk, revocation acts at once, a tampered or loose keys file is not trusted (issue 11)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipelines.serving.auth import Authenticator, AuthFailed, AuthUnavailable, KeyStore


def test_a_created_key_verifies_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "secrets" / "keys.json")
    record, key = store.create("app", ["hr", "finance"])
    assert store.verify(key) == record and record.groups == ("finance", "hr")
    assert stat.S_IMODE((tmp_path / "secrets" / "keys.json").stat().st_mode) == 0o600
    assert key.split("_", 2)[2] not in (tmp_path / "secrets" / "keys.json").read_text()


def test_a_revoked_key_is_refused_by_a_store_that_had_already_loaded_it(tmp_path: Path) -> None:
    serving, cli = KeyStore(tmp_path / "keys.json"), KeyStore(tmp_path / "keys.json")
    record, key = cli.create("app", ["hr"])
    assert serving.verify(key).key_id == record.key_id
    cli.revoke(record.key_id)
    with pytest.raises(AuthFailed, match="revoked"):
        serving.verify(key)


@pytest.mark.parametrize("mangle", [lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), lambda k: k + "x", str.upper])
def test_a_wrong_or_malformed_key_is_refused(tmp_path: Path, mangle) -> None:  # type: ignore[no-untyped-def]
    store = KeyStore(tmp_path / "keys.json")
    _, key = store.create("app", ["hr"])
    with pytest.raises(AuthFailed):
        store.verify(mangle(key))


def test_a_keys_file_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, key = store.create("x", ["hr"])
    (tmp_path / "keys.json").chmod(0o666)
    with pytest.raises(AuthUnavailable, match="writable by group or others"):
        KeyStore(tmp_path / "keys.json").verify(key)


def test_an_unreadable_keys_file_lets_nobody_in(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, key = store.create("x", ["hr"])
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(AuthUnavailable, match="unreadable"):
        store.verify(key)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token rag_x"])
def test_a_request_without_a_bearer_token_is_refused(tmp_path: Path, header: str | None) -> None:
    with pytest.raises(AuthFailed):
        Authenticator(KeyStore(tmp_path / "keys.json"), None).authenticate(header)


def test_a_jwt_is_refused_when_oidc_is_not_configured(tmp_path: Path) -> None:
    with pytest.raises(AuthFailed, match="OIDC is not configured"):
        Authenticator(KeyStore(tmp_path / "keys.json"), None).authenticate("Bearer eyJhbGciOi.eyJzdWIiOi.sig")


@pytest.mark.parametrize(
    "update",
    [
        {"oidc_issuer": "https://idp.test", "oidc_jwks_url": "http://127.0.0.1:1/jwks"},  # no audience
        {"oidc_issuer": "https://idp.test", "oidc_audience": "api"},  # no JWKS
        {
            "oidc_issuer": "https://idp.test",
            "oidc_audience": "api",
            "oidc_jwks_url": "http://x/j",
            "oidc_algorithms": "RS256,HS256",
        },
        {
            "oidc_issuer": "https://idp.test",
            "oidc_audience": "api",
            "oidc_jwks_url": "http://x/j",
            "oidc_algorithms": "none",
        },
    ],
)
def test_an_incomplete_or_unsafe_oidc_configuration_refuses_to_start(tmp_path: Path, update: dict) -> None:
    from pipelines.serving.auth import authenticator_from
    from pipelines.settings import Settings

    with pytest.raises(ValueError, match="OIDC"):
        authenticator_from(Settings().model_copy(update={"state_dir": tmp_path, **update}))
