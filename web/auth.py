"""Who may write over HTTP: bearer tokens mapped to people's names, and CSRF for the dashboard's forms.

Tokens are random strings handed to each person; the service keeps only
their SHA-256 hashes (``sha256:<hex>``), from ``[web] tokens`` (name → hash)
and/or ``[web] tokens_file`` (one ``NAME sha256:<hex>`` per line, re-read
when it changes, so a token is added or revoked without a restart).
A presented token is hashed and compared with every stored hash with
:func:`hmac.compare_digest`. Reads need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:<hex>`` (tokens are random, so no slow hash is needed)."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_problem(name: object, digest: object) -> str | None:
    """What is wrong with one ``name = "sha256:<hex>"`` entry, or None."""
    if not isinstance(name, str) or not USER_NAME.match(name):
        return f"user name {name!r} must be 1-64 letters, digits, ' ._@-'"
    if not isinstance(digest, str) or not TOKEN_HASH.match(digest):
        return "expected 'sha256:<64 hex digits>' (see `na64-online token NAME`)"
    return None


def check_tokens(tokens: Mapping[str, str], where: str) -> dict[str, str]:
    """Validate a name → ``sha256:<hex>`` table; a :class:`ConfigError` names the bad entry."""
    out = {}
    for name, digest in tokens.items():
        problem = token_problem(name, digest)
        if problem is not None:
            raise ConfigError(f"{where}.{name}: {problem}")
        out[name] = digest
    return out


def read_tokens_file(path: str | os.PathLike) -> dict[str, str]:
    """``NAME sha256:<hex>`` per line (``#`` comments, blank lines allowed); the name may hold spaces."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"web.tokens_file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    tokens: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, digest = line.rpartition(" ")
        tokens.update(check_tokens({name.strip(): digest}, f"web.tokens_file {path} line {lineno}"))
    return tokens


class TokenBook:
    """The tokens in force: the configured table plus the tokens file (re-read when its mtime/size change)."""

    def __init__(self, tokens: Mapping[str, str] | None = None, tokens_file: str | os.PathLike | None = None):
        self._static = check_tokens(dict(tokens or {}), "web.tokens")
        self._file = Path(tokens_file) if tokens_file is not None else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._from_file: dict[str, str] = {}
        if self._file is not None:
            self._reload()

    def _reload(self) -> None:
        try:
            st = self._file.stat()
        except OSError as exc:
            raise ConfigError(f"web.tokens_file: cannot read {self._file}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp  # a bad file is reported once, not on every request
            self._from_file = read_tokens_file(self._file)

    @property
    def names(self) -> list[str]:
        return sorted({*self._static, *self._from_file})

    def user_for(self, token: str) -> str | None:
        """The name the token belongs to, or ``None``; every stored hash is compared in constant time."""
        if self._file is not None:
            with self._lock:
                try:
                    self._reload()
                except ConfigError as exc:  # a bad edit keeps the tokens in force until it is fixed
                    log.error("%s; keeping the tokens read before", exc)
        presented = hash_token(token)
        found = None
        for table in (self._static, self._from_file):
            for name, digest in table.items():
                if hmac.compare_digest(presented, digest) and found is None:
                    found = name
        return found


class CsrfSigner:
    """Signed double-submit CSRF tokens for the dashboard's forms.

    The page sets a random ``nonce`` cookie and puts ``HMAC(secret, nonce)`` in
    each form; a form post is accepted only when both are present and match.
    The secret lives in this process only (a restart needs a page reload).
    """

    COOKIE = "na64_csrf"

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(18)

    def sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def verify(self, nonce: str | None, signature: str | None) -> bool:
        if not nonce or not signature or len(nonce) > 64 or len(signature) > 128:
            return False
        return hmac.compare_digest(self.sign(nonce), signature)
