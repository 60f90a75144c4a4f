"""The built-in sandbox: an in-process moto AWS whose state outlives the process.

moto keeps everything in memory, so after each step the sandbox pickles the
backends of the services the steps use into one 0600 file beside the
database, and the next run restores them. AWS managed policies are loaded,
so a file that names arn:aws:iam::aws:policy/... works as it would on AWS.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

from moto import mock_aws
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from engine.errors import AwsSetupError

log = logging.getLogger(__name__)

SNAPSHOT_SERVICES = ("iam", "sts", "s3", "cloudtrail", "secretsmanager", "ec2")
FORMAT = 1


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

    def stop(self) -> None:
        """Save the state one last time and stop intercepting AWS calls."""
        if self._mock is None:
            return
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
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
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
