"""Sessions and access: who is calling (`Principal`), and what a token may see (`SessionAccess`).

`SessionAccess` is the part of `FeedbackService` that creates annotator sessions, turns bearer tokens into
principals (a session or the admin) and checks that a principal may use a session, a round or an image;
`AuthError` carries the HTTP status (401 for a missing or unknown token, 403 for one without access).
It relies on the service's `db`, `images`, `salt` and `_admin_hash`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from feedback.record import access, store
from feedback.record.db import Database
from feedback.record.errors import FeedbackError, InputError, NotFound
from feedback.record.images import ImageStore, is_image_id
from feedback.record.models import SessionRow
from feedback.record.pseudonym import hash_token, new_token, pseudonym, tokens_match

#: The session a token's hash authenticates.
_SESSION_OF_TOKEN = select(SessionRow.id).where(SessionRow.token_hash == bindparam("token_hash"))


class AuthError(FeedbackError):
    """Missing or unknown token (status 401) or a token without access to the object (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    """Who is calling: a session (by id) or the admin."""

    session_id: str | None
    admin: bool = False


class SessionAccess:
    """Sessions, tokens and access checks of `FeedbackService` (a mixin over its db, images, salt and admin hash)."""

    db: Database
    images: ImageStore
    salt: bytes
    _admin_hash: str | None

    def create_session(self, annotator: str, study_id: str | None = None,
                       condition: str | None = None) -> tuple[str, str]:
        """A new session for the (pseudonymised) annotator name -> (session_id, token); only the token's hash is kept."""
        if not isinstance(annotator, str):
            raise InputError("annotator must be a name or nickname (text)")
        token = new_token()
        with self.db.sessions.begin() as s:
            row = store.create_annotator_session(s, pseudonym(annotator, self.salt), hash_token(token),
                                                 study_id=study_id, condition=condition)
            return row.id, token

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token; AuthError 401 when missing or unknown."""
        if not token:
            raise AuthError("missing token: send 'Authorization: Bearer <token>' (from POST /api/v1/sessions)", 401)
        if self._admin_hash is not None and tokens_match(token, self._admin_hash):
            return Principal(None, admin=True)
        with self.db.reads.begin() as s:  # one Core select: the bearer check runs before nearly every request
            session_id = s.connection().scalar(_SESSION_OF_TOKEN, {"token_hash": hash_token(token)})
        if session_id is None:
            raise AuthError("unknown token; create a session with POST /api/v1/sessions", 401)
        return Principal(session_id)

    def browser_secret(self) -> str:
        """The key the page encrypts what it keeps in the browser with (session tokens): derived from the data
        folder's salt, so it survives restarts and differs between deployments."""
        return hmac.new(self.salt, b"ttpo-lab browser state", hashlib.sha256).hexdigest()

    @property
    def admin_enabled(self) -> bool:
        """Whether the process has an admin token (without one, no token has admin rights)."""
        return self._admin_hash is not None

    def require_admin(self, who: Principal) -> None:
        if not who.admin:
            raise AuthError("this needs the admin token", 403)

    def check_session(self, who: Principal, session_id: str) -> None:
        """AuthError 403 unless `who` is the admin or this session; NotFound for an unknown session (admin)."""
        if who.admin:
            with self.db.reads.begin() as s:
                store._get(s, store.SessionRow, session_id, "session")
            return
        if who.session_id != session_id:
            raise AuthError("this token belongs to another session", 403)

    def check_round(self, who: Principal, round_id: str) -> None:
        with self.db.reads.begin() as s:
            rnd = store.get_round(s, round_id)
            if not who.admin and rnd.session_id != who.session_id:
                raise AuthError("this round belongs to another session", 403)

    def image_bytes(self, who: Principal, image_id: str) -> bytes:
        """PNG bytes of an image the principal may see; NotFound for malformed or unknown ids."""
        if not is_image_id(image_id):
            raise NotFound("image ids are 64 lowercase hex characters (the sha256 of the PNG)")
        if not self.images.exists(image_id):
            raise NotFound(f"no image {image_id}")
        if not who.admin:
            with self.db.reads.begin() as s:
                if not access.session_owns_image(s, who.session_id, image_id):
                    raise AuthError("this image belongs to another session", 403)
        return self.images.get_bytes(image_id)
