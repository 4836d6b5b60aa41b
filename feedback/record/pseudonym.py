"""Pseudonyms and token hashes: the database never sees a typed name, a raw token or an IP address.

An annotator's pseudonym is HMAC-SHA256(salt, normalised name): the same name gives the same
pseudonym on one installation, and without the salt a pseudonym cannot be tested against a list of
names. The salt comes from $TTPO_PSEUDONYM_SALT, else from DATA_DIR/pseudonym_salt (created once,
random 32 bytes, readable by the owner only). Losing the salt only means returning annotators get
new pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import unicodedata
from pathlib import Path

from feedback.record.errors import InputError

SALT_ENV = "TTPO_PSEUDONYM_SALT"
SALT_FILENAME = "pseudonym_salt"
MAX_NAME_CHARS = 200


def load_or_create_salt(data_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The installation's salt: $TTPO_PSEUDONYM_SALT, else DATA_DIR/pseudonym_salt, created if missing."""
    env_salt = os.environ.get(SALT_ENV)
    if env_salt:
        return env_salt.encode("utf-8")
    if data_dir is None:
        raise InputError(f"no pseudonym salt: set ${SALT_ENV} or give a data directory")
    path = Path(data_dir) / SALT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a temporary file, then hard-linked into place: if two processes (replicas)
        # start at once, exactly one link succeeds and neither can read a half-written salt.
        tmp = path.with_name(f".{SALT_FILENAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    salt = path.read_text().strip()
    if not salt:
        raise InputError(f"pseudonym salt file {path} is empty; delete it to create a new one")
    return salt.encode("utf-8")


def normalise_name(name: str) -> str:
    """Unicode NFKC, case-folded, inner whitespace collapsed: 'Ada  LOVELACE ' == 'ada lovelace'."""
    if not isinstance(name, str):
        raise InputError(f"the annotator name must be text, got {type(name).__name__}")
    normalised = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    if not normalised:
        raise InputError("the annotator name is empty; type a name or nickname")
    if len(normalised) > MAX_NAME_CHARS:
        raise InputError(f"the annotator name is longer than {MAX_NAME_CHARS} characters")
    return normalised


def pseudonym(name: str, salt: bytes) -> str:
    """The annotator pseudonym of a typed name: 64 hex characters of HMAC-SHA256(salt, normalised name)."""
    if not salt:
        raise InputError("the pseudonym salt is empty")
    return hmac.new(salt, normalise_name(name).encode("utf-8"), hashlib.sha256).hexdigest()


def new_token() -> str:
    """A fresh API token for a session (URL-safe, 256 bits); give it to the client, store only `hash_token`."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """sha256 hex of an API token. Tokens are random and long, so an unsalted hash is enough."""
    if not isinstance(token, str) or not token:
        raise InputError("the API token is missing")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(token: str, token_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(token), token_hash)
