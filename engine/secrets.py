"""Where secrets go: MFA seeds to 0600 files, keys and passwords to Secrets Manager.

Every secret that passes through here is also given to the Redactor, a
logging filter that masks it in any record, so that a careless message can
never carry it to a log.
"""

from __future__ import annotations

import json
import logging
import os
import string
import threading
from pathlib import Path
from random import SystemRandom
from typing import Any
from urllib.parse import quote

import qrcode
import qrcode.image.svg
from botocore.exceptions import ClientError

MASK = "[redacted]"
# Secrets are found by their first PREFIX characters; shorter ones are scanned for.
PREFIX = 8
# The symbols IAM password policies count; every class appears in a new password.
PASSWORD_SYMBOLS = "!@#$%^&*()_+-=[]{}|"
PASSWORD_CLASSES = (
    string.ascii_uppercase,
    string.ascii_lowercase,
    string.digits,
    PASSWORD_SYMBOLS,
)


class Redactor(logging.Filter):
    """A logging filter that replaces every known secret value with a mask.

    Secrets are indexed by their first characters, so that finding them costs
    one dictionary lookup per character of the text, however many secrets a
    run of thousands of users has handed over.
    """

    def __init__(self) -> None:
        super().__init__()
        # Worker threads remember secrets while others read them: readers see
        # tuples, which are replaced whole and never changed, so they need no lock.
        self._by_prefix: dict[str, tuple[str, ...]] = {}
        self._short: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def remember(self, value: str) -> None:
        """Mask ``value`` in every later record."""
        if not value:
            return
        with self._lock:
            if len(value) < PREFIX:
                self._short = (*self._short, value)
                return
            prefix = value[:PREFIX]
            self._by_prefix[prefix] = (*self._by_prefix.get(prefix, ()), value)

    def mask(self, text: str) -> str:
        """Return ``text`` with every known secret replaced."""
        for secret in self._found(text):
            text = text.replace(secret, MASK)
        return text

    def contains_secret(self, text: str) -> bool:
        """Tell whether ``text`` carries any known secret."""
        return bool(self._found(text))

    def filter(self, record: logging.LogRecord) -> bool:
        if self._by_prefix or self._short:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True

    def _found(self, text: str) -> list[str]:
        """Return the known secrets in ``text``, longest first."""
        found = {secret for secret in self._short if secret in text}
        index = self._by_prefix
        if index:
            for start in range(len(text) - PREFIX + 1):
                for secret in index.get(text[start : start + PREFIX], ()):
                    if text.startswith(secret, start):
                        found.add(secret)
        return sorted(found, key=len, reverse=True)


class SecretSink:
    """Hands secrets to their destinations and to the redactor, nowhere else."""

    def __init__(self, seed_dir: Path, secret_prefix: str, redactor: Redactor) -> None:
        self.seed_dir = seed_dir
        self.secret_prefix = secret_prefix
        self.redactor = redactor

    def seed_path(self, user: str) -> Path:
        """Return the 0600 file that holds a user's MFA seed."""
        return self.seed_dir / f"{user}.mfa"

    def qr_path(self, user: str) -> Path:
        """Return the 0600 SVG file with the QR code of a user's otpauth URI."""
        return self.seed_dir / f"{user}.mfa.svg"

    def save_mfa_seed(self, user: str, serial: str, seed: bytes | str) -> Path:
        """Write the seed as an otpauth URI to a 0600 file; return the file's path."""
        text = seed.decode("ascii") if isinstance(seed, bytes) else seed
        self.redactor.remember(text)
        issuer = quote("AWS IAM")
        uri = f"otpauth://totp/{quote(serial)}?secret={text}&issuer={issuer}"
        record = json.dumps({"serial": serial, "otpauth_uri": uri, "seed": text})
        path = self.seed_path(user)
        _write_private(path, record + "\n")
        _write_private(self.qr_path(user), _qr_svg(uri))
        return path

    def read_mfa_seed(self, user: str, serial: str) -> str | None:
        """Return the saved seed for ``serial``, or None when none was saved for it."""
        try:
            saved = json.loads(self.seed_path(user).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if saved.get("serial") != serial:
            return None
        seed = str(saved["seed"])
        self.redactor.remember(seed)
        return seed

    def secret_name(self, user: str) -> str:
        """Return the Secrets Manager name that holds a user's access key."""
        return f"{self.secret_prefix}{user}/access-key"

    def save_access_key(self, sm: Any, user: str, key_id: str, secret: str) -> str:
        """Store a new access key as the current version of the user's secret."""
        self.redactor.remember(secret)
        value = json.dumps({"AccessKeyId": key_id, "SecretAccessKey": secret})
        about = f"Access key of IAM user {user}, kept by the engine"
        return _put_secret(sm, self.secret_name(user), value, about)

    def password_secret_name(self, user: str) -> str:
        """Return the Secrets Manager name of a user's first console password."""
        return f"{self.secret_prefix}{user}/console-password"

    def save_console_password(self, sm: Any, user: str, password: str) -> str:
        """Store a user's first console password in Secrets Manager; return its ARN."""
        self.redactor.remember(password)
        value = json.dumps({"UserName": user, "Password": password})
        about = f"First console password of IAM user {user} (reset at first sign-in)"
        return _put_secret(sm, self.password_secret_name(user), value, about)

    def stored_key_id(self, sm: Any, user: str) -> str | None:
        """Return the id of the access key the secret store holds for ``user``."""
        try:
            value = sm.get_secret_value(SecretId=self.secret_name(user))["SecretString"]
        except ClientError as err:
            if err.response["Error"]["Code"] == "ResourceNotFoundException":
                return None
            raise
        stored = json.loads(value)
        self.redactor.remember(stored["SecretAccessKey"])
        return str(stored["AccessKeyId"])


def new_password(length: int) -> str:
    """Return a random password of ``length`` with every character class in it."""
    rng = SystemRandom()
    chars = [rng.choice(kind) for kind in PASSWORD_CLASSES]
    everything = "".join(PASSWORD_CLASSES)
    chars += [rng.choice(everything) for _ in range(length - len(chars))]
    rng.shuffle(chars)
    return "".join(chars)


def _put_secret(sm: Any, name: str, value: str, description: str) -> str:
    try:
        return str(sm.put_secret_value(SecretId=name, SecretString=value)["ARN"])
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    try:
        created = sm.create_secret(
            Name=name, SecretString=value, Description=description
        )
    except ClientError as err:
        # A retried call whose first response was lost finds the secret made.
        if err.response["Error"]["Code"] != "ResourceExistsException":
            raise
        return str(sm.put_secret_value(SecretId=name, SecretString=value)["ARN"])
    return str(created["ARN"])


def _qr_svg(uri: str) -> str:
    """Return the QR code of ``uri`` as an SVG document (no imaging library needed)."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage)
    return str(image.to_string(encoding="unicode"))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
