"""Where secrets go: MFA seeds to 0600 files, access keys to Secrets Manager.

Every secret that passes through here is also given to the Redactor, a
logging filter that masks it in any record, so that a careless message can
never carry it to a log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from botocore.exceptions import ClientError

MASK = "[redacted]"


class Redactor(logging.Filter):
    """A logging filter that replaces every known secret value with a mask."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, value: str) -> None:
        """Mask ``value`` in every later record."""
        with self._lock:
            self._secrets.add(value)

    def mask(self, text: str) -> str:
        """Return ``text`` with every known secret replaced."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def contains_secret(self, text: str) -> bool:
        """Tell whether ``text`` carries any known secret."""
        return any(secret in text for secret in self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True


class SecretSink:
    """Hands secrets to their destinations and to the redactor, nowhere else."""

    def __init__(self, seed_dir: Path, secret_prefix: str, redactor: Redactor) -> None:
        self.seed_dir = seed_dir
        self.secret_prefix = secret_prefix
        self.redactor = redactor

    def seed_path(self, user: str) -> Path:
        """Return the 0600 file that holds a user's MFA seed."""
        return self.seed_dir / f"{user}.mfa"

    def save_mfa_seed(self, user: str, serial: str, seed: bytes | str) -> Path:
        """Write the seed as an otpauth URI to a 0600 file; return the file's path."""
        text = seed.decode("ascii") if isinstance(seed, bytes) else seed
        self.redactor.remember(text)
        issuer = quote("AWS IAM")
        uri = f"otpauth://totp/{quote(serial)}?secret={text}&issuer={issuer}"
        record = json.dumps({"serial": serial, "otpauth_uri": uri, "seed": text})
        path = self.seed_path(user)
        _write_private(path, record + "\n")
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
        name = self.secret_name(user)
        try:
            return str(sm.put_secret_value(SecretId=name, SecretString=value)["ARN"])
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        try:
            created = sm.create_secret(
                Name=name,
                SecretString=value,
                Description=f"Access key of IAM user {user}, kept by the engine",
            )
        except ClientError as err:
            # A retried call whose first response was lost finds the secret made.
            if err.response["Error"]["Code"] != "ResourceExistsException":
                raise
            return str(sm.put_secret_value(SecretId=name, SecretString=value)["ARN"])
        return str(created["ARN"])

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


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
