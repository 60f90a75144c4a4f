"""The built-in sandbox: an in-process moto AWS whose state outlives the process.

moto keeps everything in memory, so after each step the sandbox pickles the
backends of the services the steps use into one 0600 file beside the
database, and the next run restores them. AWS managed policies are loaded,
so a file that names arn:aws:iam::aws:policy/... works as it would on AWS.
"""

from __future__ import annotations

import copyreg
import functools
import logging
import os
import pickle
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from engine.aws import SERVICES
from engine.errors import AwsSetupError

log = logging.getLogger(__name__)

# Every service the steps use keeps its state between sandbox runs.
SNAPSHOT_SERVICES = SERVICES
FORMAT = 1


def _pickler(handle: IO[bytes]) -> pickle.Pickler:
    """Return a pickler that also handles the private keys moto's KMS keys hold."""
    pickler = pickle.Pickler(handle, protocol=pickle.HIGHEST_PROTOCOL)
    table: dict[type, Any] = dict(copyreg.dispatch_table)
    table.update({kind: _reduce_private_key for kind in _private_key_types()})
    pickler.dispatch_table = table
    return pickler


@functools.cache
def _private_key_types() -> tuple[type, ...]:
    # cryptography's key classes are abstract; pickle looks up the concrete ones.
    return (
        type(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        type(ec.generate_private_key(ec.SECP256R1())),
    )


def _reduce_private_key(key: Any) -> tuple[Any, tuple[bytes]]:
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _load_private_key, (der,)


def _load_private_key(der: bytes) -> Any:
    """Rebuild a private key pickled by the sandbox."""
    return serialization.load_der_private_key(der, password=None)


class Sandbox:
    """Start, checkpoint and stop the in-process moto AWS."""

    def __init__(self, path: Path, region: str) -> None:
        self.path = path
        self.region = region
        self._mock: Any = None

    def start(self) -> None:
        """Start moto with AWS managed policies and restore the last snapshot."""
        self._mock = mock_aws(config={"iam": {"load_aws_managed_policies": True}})
        self._mock.start()
        try:
            self._restore()
        except BaseException:
            self._mock.stop()
            self._mock = None
            raise

    def stop(self, keep: bool = True) -> None:
        """Save the state one last time (unless ``keep`` is False) and stop moto."""
        if self._mock is None:
            return
        if keep:
            self.save()
        self._mock.stop()
        self._mock = None

    def save(self) -> None:
        """Write the state of the sandboxed services to the snapshot file."""
        state = {"format": FORMAT, "backends": self._collect()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            _pickler(handle).dump(state)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def _scopes(self) -> tuple[str, ...]:
        # Global services (IAM, S3) live under the partition name, the rest by region.
        return ("aws", self.region)

    def _collect(self) -> dict[str, dict[str, Any]]:
        collected: dict[str, dict[str, Any]] = {}
        for service in SNAPSHOT_SERVICES:
            account = get_backend(service)[DEFAULT_ACCOUNT_ID]
            made = dict.keys(account)
            collected[service] = {
                s: dict.__getitem__(account, s) for s in self._scopes() if s in made
            }
        return collected

    def _restore(self) -> None:
        if not self.path.exists():
            log.info("sandbox starts empty; its state will be kept in %s", self.path)
            return
        state = self._load()
        for service, scopes in state["backends"].items():
            account = get_backend(service)[DEFAULT_ACCOUNT_ID]
            for scope, backend in scopes.items():
                dict.__setitem__(account, scope, backend)
        log.info("sandbox state restored from %s", self.path)

    def _load(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as handle:
                state: dict[str, Any] = pickle.load(handle)  # noqa: S301 - our own 0600 file
        # Unpickling fails in many ways (ValueError, EOFError...); all mean unreadable.
        except Exception as err:  # noqa: BLE001
            raise self._unreadable(err) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise self._unreadable(
                ValueError("not a sandbox state file of this version")
            )
        return state

    def _unreadable(self, err: Exception) -> AwsSetupError:
        return AwsSetupError(
            f"the sandbox state {self.path} cannot be read ({err}); delete it together "
            "with the database to start the sandbox afresh"
        )
