"""Least privilege and service roles: each rule holding, and repaired or refused.

CIS AWS Foundations Benchmark v5 1.14 (users get permissions only through
groups; 1.15 in v4), 1.15 (no "*:*" policy attached) and 1.17 (instance roles
for access from instances); AWS Config rules iam-user-no-policies-check,
iam-policy-no-statements-with-admin-access, -with-full-access and
ec2-instance-profile-attached.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from engine.aws import AwsTarget
from engine.errors import ConfigError, PolicyRefused, StepError
from engine.runner import Runner
from engine.secrets import Redactor, SecretSink
from engine.store import Store
from steps import created, least_privilege, role
from steps.base import AccountFacts, Clients, StepContext
from steps.grants import ACCESS_POLICY_NAME, INLINE_POLICY_NAME
from tests.conftest import StepKit, load_file, write_workflows

ADMIN_ARN = "arn:aws:iam::aws:policy/AdministratorAccess"
READ_ARN = "arn:aws:iam::aws:policy/ReadOnlyAccess"
S3_READ_ARN = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
BOUNDARY_ARN = "arn:aws:iam::aws:policy/PowerUserAccess"
ACCOUNT = "123456789012"
CURATED = "arn:aws:s3:::curated/*"
ESCALATION = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["iam:PassRole", "ec2:RunInstances"],
            "Resource": "*",
        }
    ],
}


def _doc(action: str | list[str], resource: str = CURATED) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Action": action, "Resource": resource}
    return {"Version": "2012-10-17", "Statement": [statement]}


def _load_error(tmp_path: Path, **overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_file(write_workflows(tmp_path, **overrides))
    return caught.value


def _lp(kit: StepKit, user: dict[str, Any], **overrides: Any) -> StepContext:
    ctx = kit.context(user, **overrides)
    created.run(ctx)
    return ctx


def _user_policies(iam: Any, user: str) -> tuple[list[str], list[str]]:
    attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
    inline = iam.list_user_policies(UserName=user)["PolicyNames"]
    return [p["PolicyArn"] for p in attached], inline


# CIS 1.15: permissions only through groups -----------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("managed_policies", [READ_ARN]),
        ("inline_policy", _doc("s3:GetObject")),
        ("access", {"read": [CURATED]}),
        ("customer_policies", [{"name": "mine", "document": _doc("s3:GetObject")}]),
    ],
)
def test_a_direct_user_policy_without_the_exception_is_refused_at_load(
    tmp_path: Path, field: str, value: Any
) -> None:
    err = _load_error(tmp_path, users=[{"name": "alice", field: value}])

    assert err.field == f"users[0].{field}" and err.line is not None
    assert "CIS 1.15" in err.problem and "direct_policies" in err.problem


def test_groups_only_user_ends_with_no_direct_policy(kit: StepKit) -> None:
    ctx = _lp(kit, {"name": "alice", "groups": ["readers"]})

    detail = least_privilege.run(ctx)

    assert _user_policies(kit.clients.iam, "alice") == ([], [])
    groups = kit.clients.iam.list_groups_for_user(UserName="alice")["Groups"]
    assert [g["GroupName"] for g in groups] == ["readers"]
    assert detail["removed"] == []


def test_a_policy_planted_on_the_user_is_removed_but_engine_ones_stay(
    kit: StepKit,
) -> None:
    ctx = _lp(kit, {"name": "alice", "groups": ["readers"]})
    iam = kit.clients.iam
    iam.attach_user_policy(UserName="alice", PolicyArn=S3_READ_ARN)
    iam.put_user_policy(
        UserName="alice", PolicyName="by-hand", PolicyDocument=json.dumps(_doc("*"))
    )
    engine_own = iam.create_policy(
        PolicyName="RequireMFA",
        Path="/iam-onboarding/",
        PolicyDocument=json.dumps(_doc("s3:GetObject")),
    )["Policy"]["Arn"]
    iam.attach_user_policy(UserName="alice", PolicyArn=engine_own)

    detail = least_privilege.run(ctx)

    assert _user_policies(iam, "alice") == ([engine_own], [])
    assert detail["removed"] == [S3_READ_ARN, "inline by-hand"]


def test_a_declared_direct_policy_is_kept_with_its_reason(kit: StepKit) -> None:
    user = {
        "name": "dana",
        "inline_policy": _doc("s3:GetObject"),
        "direct_policies": {"reason": "owns the curated bucket alone"},
    }
    ctx = _lp(kit, user)

    detail = least_privilege.run(ctx)

    assert _user_policies(kit.clients.iam, "dana") == ([], [INLINE_POLICY_NAME])
    assert detail["direct_policies_reason"] == "owns the curated bucket alone"


# Managed, inline and access-level policies ------------------------------------

WRITERS = {
    "writers": {
        "managed_policies": [S3_READ_ARN],
        "inline_policy": _doc(["s3:PutObject"]),
        "access": {"write": [CURATED], "list": ["arn:aws:s3:::curated"]},
    }
}


def test_group_gets_managed_inline_and_generated_policies(kit: StepKit) -> None:
    ctx = _lp(kit, {"name": "chen", "groups": ["writers"]}, groups=WRITERS)

    first = least_privilege.run(ctx)
    second = least_privilege.run(ctx)

    iam = kit.clients.iam
    attached = iam.list_attached_group_policies(GroupName="writers")
    assert [p["PolicyArn"] for p in attached["AttachedPolicies"]] == [S3_READ_ARN]
    access = iam.get_group_policy(GroupName="writers", PolicyName=ACCESS_POLICY_NAME)
    statements = access["PolicyDocument"]["Statement"]
    by_resource = {s["Resource"][0]: s["Action"] for s in statements}
    assert "s3:PutObject" in by_resource[CURATED]
    assert "s3:ListBucket" in by_resource["arn:aws:s3:::curated"]
    assert all(not a.endswith("*") for s in statements for a in s["Action"])
    assert first["groups"][0]["inline"] == [INLINE_POLICY_NAME, ACCESS_POLICY_NAME]
    assert second["groups"][0]["inline"] == [] and second["groups"][0]["attached"] == []


def test_a_group_policy_changed_by_hand_is_put_back(kit: StepKit) -> None:
    ctx = _lp(kit, {"name": "chen", "groups": ["writers"]}, groups=WRITERS)
    least_privilege.run(ctx)
    iam = kit.clients.iam
    iam.put_group_policy(
        GroupName="writers",
        PolicyName=INLINE_POLICY_NAME,
        PolicyDocument=json.dumps(_doc("s3:*", "*")),
    )

    detail = least_privilege.run(ctx)

    found = iam.get_group_policy(GroupName="writers", PolicyName=INLINE_POLICY_NAME)
    assert found["PolicyDocument"] == WRITERS["writers"]["inline_policy"]
    assert detail["groups"][0]["inline"] == [INLINE_POLICY_NAME]


@pytest.mark.parametrize(
    ("access", "words"),
    [
        ({"write": ["not-an-arn"]}, "not a resource ARN"),
        ({}, "name a level"),
        ({"read": ["arn:aws:nosuchservice:us-east-1:123456789012:thing/x"]}, "match"),
    ],
    ids=["bad-arn", "no-level", "no-action"],
)
def test_unusable_access_levels_are_refused_at_load(
    tmp_path: Path, access: dict[str, Any], words: str
) -> None:
    err = _load_error(tmp_path, groups={"g": {"access": access}})

    assert err.field.startswith("groups.g.access") and words in err.problem


# parliament's findings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "field", "issue"),
    [
        ({"inline_policy": _doc("s3:GetObjectt")}, "inline_policy", "UNKNOWN_ACTION"),
        (
            {"inline_policy": _doc("s3:GetObject", "arn:aws:s3:::curated")},
            "inline_policy",
            "RESOURCE_MISMATCH",
        ),
        (
            {"customer_policies": [{"name": "p", "document": _doc("nosuch:Get")}]},
            "customer_policies[0].document",
            "UNKNOWN_PREFIX",
        ),
    ],
    ids=["unknown-action", "resource-mismatch", "customer-unknown-prefix"],
)
def test_a_parliament_finding_is_refused_at_load_naming_it(
    tmp_path: Path, group: dict[str, Any], field: str, issue: str
) -> None:
    err = _load_error(tmp_path, groups={"readers": group})

    assert err.field == f"groups.readers.{field}" and issue in err.problem
    assert err.line is not None


def test_a_parliament_finding_stops_the_step_before_anything_is_attached(
    kit: StepKit,
) -> None:
    ctx = _lp(kit, {"name": "alice", "groups": ["readers"]})
    groups = ctx.loaded.config.groups
    # The loader refuses this document; the step checks again, on its own.
    groups["readers"] = groups["readers"].model_copy(
        update={"inline_policy": _doc("s3:GetObjectt")}
    )

    with pytest.raises(StepError, match="UNKNOWN_ACTION") as caught:
        least_privilege.run(ctx)

    assert caught.value.code == "PolicyLint"
    assert kit.clients.iam.list_groups()["Groups"] == []


# Admin-style grants and privilege escalation --------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (
            {"groups": {"readers": {"managed_policies": [ADMIN_ARN]}}},
            "users[0].groups[0]",
            "AdministratorAccess",
        ),
        (
            {"groups": {"readers": {"inline_policy": _doc("*", "*")}}},
            "users[0].groups[0]",
            "action * on resource *",
        ),
        (
            {"groups": {"readers": {"inline_policy": _doc("iam:*", "*")}}},
            "users[0].groups[0]",
            "iam:*",
        ),
        (
            {"groups": {"readers": {"inline_policy": ESCALATION}}},
            "users[0].groups[0]",
            "privilege escalation CreateEC2WithExistingIP",
        ),
        (
            {
                "groups": {
                    "readers": {
                        "access": {
                            "permissions-management": [f"arn:aws:iam::{ACCOUNT}:user/*"]
                        }
                    }
                }
            },
            "users[0].groups[0]",
            "privilege escalation",
        ),
    ],
    ids=["managed-admin", "star-star", "iam-star", "passrole-runinstances", "access"],
)
def test_an_admin_grant_through_a_group_is_refused_at_load(
    tmp_path: Path, overrides: dict[str, Any], field: str, words: str
) -> None:
    err = _load_error(tmp_path, **overrides)

    assert err.field == field and words in err.problem and "allow_admin" in err.problem


def make_runner(
    folder: Path, store: Store, clients: Clients, users: list[Any], **top: Any
) -> Runner:
    loaded = load_file(write_workflows(folder, users=users, **top))
    account = AccountFacts(clients.sts.get_caller_identity()["Account"], "us-east-1")
    target = AwsTarget(clients, account, "in-process moto")
    secrets = SecretSink(folder / "secrets", "test/", Redactor())
    runner = Runner(loaded, store, target, secrets)
    runner.sleep = lambda _seconds: None
    return runner


def _plant_escalation(iam: Any) -> str:
    arn: str = iam.create_policy(
        PolicyName="launcher", PolicyDocument=json.dumps(ESCALATION)
    )["Policy"]["Arn"]
    return arn


def test_a_privilege_escalation_only_aws_knows_is_refused_by_the_step(
    kit: StepKit,
) -> None:
    arn = _plant_escalation(kit.clients.iam)
    groups = {"launchers": {"managed_policies": [arn]}}
    ctx = _lp(kit, {"name": "eve", "groups": ["launchers"]}, groups=groups)

    with pytest.raises(PolicyRefused, match="CreateEC2WithExistingIP"):
        least_privilege.run(ctx)

    assert kit.clients.iam.list_groups_for_user(UserName="eve")["Groups"] == []


def test_an_allowed_admin_grant_is_attached_and_its_reason_recorded(
    kit: StepKit,
) -> None:
    arn = _plant_escalation(kit.clients.iam)
    groups = {"launchers": {"managed_policies": [arn]}}
    user = {
        "name": "farid",
        "groups": ["launchers"],
        "allow_admin": {"reason": "platform on-call launches recovery hosts"},
    }
    ctx = _lp(kit, user, groups=groups)

    detail = least_privilege.run(ctx)

    assert detail["allow_admin_reason"] == "platform on-call launches recovery hosts"
    assert detail["admin_grants"][0]["policy"] == f"group launchers: {arn}"
    assert "CreateEC2WithExistingIP" in detail["admin_grants"][0]["reason"]


def test_the_allow_admin_reason_lands_in_the_history(
    tmp_path: Path, store: Store, aws: Clients
) -> None:
    user = {
        "name": "farid",
        "groups": ["admins"],
        "allow_admin": {"reason": "break-glass administrator approved by the CTO"},
    }
    groups = {"admins": {"managed_policies": [ADMIN_ARN]}}
    runner = make_runner(tmp_path, store, aws, [user], groups=groups)

    runner.run()

    row = next(
        r for r in store.history(user="farid") if r["to_state"] == "LeastPrivilege"
    )
    detail = (
        row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
    )
    assert detail["allow_admin_reason"].startswith("break-glass")
    assert detail["admin_grants"][0]["reason"] == f"{ADMIN_ARN} is admin-style"


# Customer managed policies and their versions ---------------------------------------


def _customer(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "deployers": {"customer_policies": [{"name": "deploy", "document": document}]}
    }


POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/iam-onboarding/deploy"


def _versions(iam: Any) -> list[tuple[str, bool]]:
    found = iam.list_policy_versions(PolicyArn=POLICY_ARN)["Versions"]
    return sorted((v["VersionId"], v["IsDefaultVersion"]) for v in found)


def _default(iam: Any) -> Any:
    version = iam.get_policy(PolicyArn=POLICY_ARN)["Policy"]["DefaultVersionId"]
    return iam.get_policy_version(PolicyArn=POLICY_ARN, VersionId=version)[
        "PolicyVersion"
    ]["Document"]


def test_a_customer_policy_is_created_attached_and_adopted(kit: StepKit) -> None:
    user = {"name": "ci", "groups": ["deployers"]}
    ctx = _lp(kit, user, groups=_customer(_doc("s3:PutObject")))

    first = least_privilege.run(ctx)
    kit.account.verified.clear()
    second = least_privilege.run(ctx)

    iam = kit.clients.iam
    attached = iam.list_attached_group_policies(GroupName="deployers")
    assert [p["PolicyArn"] for p in attached["AttachedPolicies"]] == [POLICY_ARN]
    assert _default(iam) == _doc("s3:PutObject")
    assert first["groups"][0]["customer_policies"][0]["action"] == "created"
    assert second["groups"][0]["customer_policies"][0]["action"] == "adopted"


def test_a_changed_document_becomes_the_new_default_version(kit: StepKit) -> None:
    user = {"name": "ci", "groups": ["deployers"]}
    least_privilege.run(_lp(kit, user, groups=_customer(_doc("s3:PutObject"))))

    detail = least_privilege.run(
        kit.context(user, groups=_customer(_doc("s3:GetObject")))
    )

    assert _versions(kit.clients.iam) == [("v1", False), ("v2", True)]
    assert _default(kit.clients.iam) == _doc("s3:GetObject")
    assert detail["groups"][0]["customer_policies"][0]["version"] == "v2"


def test_at_five_versions_the_oldest_non_default_one_goes_first(kit: StepKit) -> None:
    iam = kit.clients.iam
    iam.create_policy(
        PolicyName="deploy",
        Path="/iam-onboarding/",
        PolicyDocument=json.dumps(_doc("s3:GetObject")),
    )
    for action in ("s3:GetObjectAcl", "s3:GetObjectTagging", "s3:GetObjectVersion"):
        iam.create_policy_version(
            PolicyArn=POLICY_ARN, PolicyDocument=json.dumps(_doc(action))
        )
    iam.create_policy_version(
        PolicyArn=POLICY_ARN, PolicyDocument=json.dumps(_doc("s3:DeleteObject"))
    )
    # v1 is the default, so the oldest version that may go is v2.
    assert _versions(iam)[0] == ("v1", True) and len(_versions(iam)) == 5
    ctx = _lp(
        kit,
        {"name": "ci", "groups": ["deployers"]},
        groups=_customer(_doc("s3:PutObject")),
    )

    detail = least_privilege.run(ctx)

    versions = _versions(iam)
    assert [v for v, _ in versions] == ["v1", "v3", "v4", "v5", "v6"]
    assert ("v6", True) in versions and _default(iam) == _doc("s3:PutObject")
    assert detail["groups"][0]["customer_policies"][0]["deleted_version"] == "v2"


def test_one_customer_policy_name_with_two_documents_is_refused_at_load(
    tmp_path: Path,
) -> None:
    groups = {
        "readers": {},
        **_customer(_doc("s3:PutObject")),
        "others": {
            "customer_policies": [{"name": "deploy", "document": _doc("s3:GetObject")}]
        },
    }

    err = _load_error(tmp_path, groups=groups)

    assert err.field == "groups.others.customer_policies[0].name"
    assert "groups.deployers.customer_policies[0]" in err.problem


# Service roles: trust, boundary, policies, instance profile, instances ---------------


def _app(**service_role: Any) -> dict[str, Any]:
    spec = {"service": "ec2.amazonaws.com", "name": "app-role", **service_role}
    return {"name": "app", "mfa": "none", "service_role": spec}


def _trust(iam: Any) -> Any:
    return iam.get_role(RoleName="app-role")["Role"]["AssumeRolePolicyDocument"]


def test_a_role_gets_its_trust_policy_boundary_and_policies(kit: StepKit) -> None:
    spec = {
        "permissions_boundary": BOUNDARY_ARN,
        "managed_policies": [S3_READ_ARN],
        "access": {"read": [CURATED]},
    }
    ctx = _lp(kit, _app(**spec))

    first = role.run(ctx)
    second = role.run(ctx)

    iam = kit.clients.iam
    found = iam.get_role(RoleName="app-role")["Role"]
    assert _trust(iam) == role.trust_policy("ec2.amazonaws.com")
    assert found["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY_ARN
    attached = iam.list_attached_role_policies(RoleName="app-role")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [S3_READ_ARN]
    assert iam.list_role_policies(RoleName="app-role")["PolicyNames"] == [
        ACCESS_POLICY_NAME
    ]
    assert (first["action"], second["action"]) == ("created", "adopted")


def test_a_wrong_trust_policy_and_boundary_are_repaired(kit: StepKit) -> None:
    iam = kit.clients.iam
    iam.create_role(
        RoleName="app-role",
        AssumeRolePolicyDocument=json.dumps(role.trust_policy("lambda.amazonaws.com")),
        PermissionsBoundary=READ_ARN,
    )
    ctx = _lp(kit, _app(permissions_boundary=BOUNDARY_ARN))

    detail = role.run(ctx)

    boundary = iam.get_role(RoleName="app-role")["Role"]["PermissionsBoundary"]
    assert _trust(iam) == role.trust_policy("ec2.amazonaws.com")
    assert boundary["PermissionsBoundaryArn"] == BOUNDARY_ARN
    assert detail["action"] == "trust policy and permissions boundary repaired"


def test_a_stranger_role_in_the_instance_profile_is_removed(kit: StepKit) -> None:
    iam = kit.clients.iam
    iam.create_role(
        RoleName="stranger",
        AssumeRolePolicyDocument=json.dumps(role.trust_policy("ec2.amazonaws.com")),
    )
    iam.create_instance_profile(InstanceProfileName="app-role")
    iam.add_role_to_instance_profile(
        InstanceProfileName="app-role", RoleName="stranger"
    )
    ctx = _lp(kit, _app())

    detail = role.run(ctx)

    profile = iam.get_instance_profile(InstanceProfileName="app-role")[
        "InstanceProfile"
    ]
    assert [r["RoleName"] for r in profile["Roles"]] == ["app-role"]
    assert detail["instance_profile"]["removed_roles"] == ["stranger"]


def test_role_policies_are_checked_like_users(kit: StepKit, tmp_path: Path) -> None:
    arn = _plant_escalation(kit.clients.iam)
    ctx = _lp(kit, _app(managed_policies=[arn]))

    with pytest.raises(PolicyRefused, match="privilege escalation"):
        role.run(ctx)

    assert kit.clients.iam.list_roles()["Roles"] == []
    err = _load_error(tmp_path, users=[_app(inline_policy=_doc("s3:GetObjectt"))])
    assert err.field == "users[0].service_role.inline_policy"


def _instances(clients: Clients, count: int) -> list[str]:
    image = clients.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = clients.ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count)
    return [i["InstanceId"] for i in made["Instances"]]


def _association(clients: Clients, instance: str) -> str:
    found = clients.ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance]}]
    )["IamInstanceProfileAssociations"]
    assert len(found) == 1
    return str(found[0]["IamInstanceProfile"]["Arn"])


PROFILE_ARN = f"arn:aws:iam::{ACCOUNT}:instance-profile/app-role"


def test_the_profile_is_associated_with_each_declared_instance(kit: StepKit) -> None:
    instances = _instances(kit.clients, 2)
    ctx = _lp(kit, _app(instance_ids=instances))

    first = role.run(ctx)
    second = role.run(ctx)

    assert [_association(kit.clients, i) for i in instances] == [PROFILE_ARN] * 2
    assert [i["action"] for i in first["instances"]] == ["associated"] * 2
    assert [i["action"] for i in second["instances"]] == ["adopted"] * 2


def test_a_different_profile_on_an_instance_is_replaced(kit: StepKit) -> None:
    (instance,) = _instances(kit.clients, 1)
    iam = kit.clients.iam
    iam.create_instance_profile(InstanceProfileName="old-profile")
    kit.clients.ec2.associate_iam_instance_profile(
        IamInstanceProfile={"Name": "old-profile"}, InstanceId=instance
    )
    ctx = _lp(kit, _app(instance_ids=[instance]))

    detail = role.run(ctx)

    assert _association(kit.clients, instance) == PROFILE_ARN
    assert detail["instances"][0]["action"] == "replaced"
    assert detail["instances"][0]["replaced"].endswith("instance-profile/old-profile")


def test_instance_ids_need_the_ec2_service(tmp_path: Path) -> None:
    user = _app(service="lambda.amazonaws.com", instance_ids=["i-0123456789abcdef0"])

    err = _load_error(tmp_path, users=[user])

    assert err.field == "users[0].service_role" and "ec2.amazonaws.com" in err.problem


class _NotVisibleEc2:
    """An EC2 client that does not see a new instance profile for a few calls."""

    def __init__(self, inner: Any, failures: int) -> None:
        self._inner = inner
        self._failures = failures
        self.calls = 0

    def associate_iam_instance_profile(self, **params: Any) -> Any:
        self.calls += 1
        if self.calls <= self._failures:
            message = "Value (app-role) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            error = {"Error": {"Code": "InvalidParameterValue", "Message": message}}
            raise ClientError(error, "AssociateIamInstanceProfile")  # type: ignore[arg-type]
        return self._inner.associate_iam_instance_profile(**params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the role step's sleeps instead of sleeping."""
    slept: list[float] = []
    monkeypatch.setattr(role, "sleep", slept.append)
    return slept


def test_case5_a_fresh_profile_is_retried_with_backoff_until_ec2_sees_it(
    kit: StepKit, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    (instance,) = _instances(kit.clients, 1)
    ctx = _lp(kit, _app(instance_ids=[instance]))
    wrapped = _NotVisibleEc2(kit.clients.ec2, failures=3)
    ctx.clients = type(ctx.clients)(**{**vars(ctx.clients), "ec2": wrapped})

    with caplog.at_level(logging.WARNING, logger="steps"):
        detail = role.run(ctx)

    assert wrapped.calls == 4 and waits == list(role.PROFILE_RETRY_DELAYS[:3])
    assert waits == sorted(waits)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("app-role" in r.getMessage() for r in warnings)
    assert detail["instances"][0]["action"] == "associated"
    assert _association(kit.clients, instance) == PROFILE_ARN


def test_case5_a_profile_ec2_never_sees_fails_clearly_with_the_aws_message(
    kit: StepKit, waits: list[float]
) -> None:
    (instance,) = _instances(kit.clients, 1)
    ctx = _lp(kit, _app(instance_ids=[instance]))
    wrapped = _NotVisibleEc2(kit.clients.ec2, failures=99)
    ctx.clients = type(ctx.clients)(**{**vars(ctx.clients), "ec2": wrapped})

    with pytest.raises(StepError, match="Invalid IAM Instance Profile name") as caught:
        role.run(ctx)

    attempts = len(role.PROFILE_RETRY_DELAYS) + 1
    assert wrapped.calls == attempts and len(waits) == attempts - 1
    assert caught.value.code == "InvalidParameterValue"
    assert caught.value.detail["attempts"] == attempts
