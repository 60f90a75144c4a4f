"""The steps, one module each, and the explicit registry that names them.

A workflow in workflows.yaml maps each of its states to one of these names;
a name that is not here is refused when the file is loaded.
"""

from __future__ import annotations

from steps import created, least_privilege, mfa, monitored, reviewed, role, rotated
from steps.base import Step

REGISTRY: dict[str, Step] = {
    "create_user": created.run,
    "least_privilege": least_privilege.run,
    "mfa": mfa.run,
    "service_role": role.run,
    "access_keys": rotated.run,
    "cloudtrail": monitored.run,
    "review": reviewed.run,
}
