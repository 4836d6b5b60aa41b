"""Pseudonyms are salted HMACs of normalised names; the salt is made once per data directory."""

from __future__ import annotations

import stat

import pytest

from feedback.record.errors import InputError
from feedback.record.pseudonym import SALT_ENV, hash_token, load_or_create_salt, new_token, pseudonym, tokens_match


def test_salt_is_created_once_private_and_reused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    salt = load_or_create_salt(tmp_path)
    assert len(salt) == 64 and load_or_create_salt(tmp_path) == salt
    assert stat.S_IMODE((tmp_path / "pseudonym_salt").stat().st_mode) == 0o600
    assert load_or_create_salt(tmp_path / "other") != salt
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert load_or_create_salt(tmp_path) == b"from-env"


def test_pseudonym_is_keyed_hmac_of_normalised_name() -> None:
    p = pseudonym("Ada Lovelace", b"salt-1")
    assert len(p) == 64 and int(p, 16) >= 0 and "ada" not in p
    assert pseudonym("  ada \t LOVELACE ", b"salt-1") == p
    assert pseudonym("Ada Lovelace", b"salt-2") != p
    assert pseudonym("Ada Byron", b"salt-1") != p
    for bad in ["", "   ", "x" * 201, None]:
        with pytest.raises(InputError):
            pseudonym(bad, b"salt-1")  # type: ignore[arg-type]


def test_tokens_are_random_and_only_hashes_compare() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 40
    assert len(hash_token(a)) == 64 and hash_token(a) != a
    assert tokens_match(a, hash_token(a)) and not tokens_match(b, hash_token(a))
