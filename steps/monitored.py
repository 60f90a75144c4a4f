"""Monitored: the account's trail and everything it needs, once per account.

The first onboarding to reach this step sets up, or repairs in place, the
account's logging: a separate access-log bucket; the trail bucket (public
access blocked, encrypted, access-logged, with the policy CloudTrail needs);
a customer managed KMS key with rotation; a CloudWatch Logs group and the
role CloudTrail writes to it with; a multi-region trail with validated,
encrypted logs and all management events, logging; and a metric filter and
alarm on IAM policy changes that notify an SNS topic. Later onboardings in
the same run find it done and say so.

Order matters on real AWS even though moto checks none of it: the bucket
policy must exist before create_trail (InsufficientS3BucketPolicyException),
the key policy before the trail uses the key
(InsufficientEncryptionPolicyException), and the log group and role before
CloudWatch Logs delivery is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from engine.errors import StepError
from steps.base import (
    ENGINE_POLICY_PATH,
    MANAGED_BY_TAG,
    StepContext,
    as_document,
    dumps,
    is_code,
    paginate,
)

ACL_SID = "AWSCloudTrailAclCheck"
WRITE_SID = "AWSCloudTrailWrite"
TLS_SID = "DenyInsecureTransport"
ACCESS_LOG_SID = "S3ServerAccessLogsDelivery"
KEY_ADMIN_SID = "AccountAdministersKey"
KEY_ENCRYPT_SID = "CloudTrailEncryptsLogs"
KEY_DESCRIBE_SID = "CloudTrailDescribesKey"
KEY_DECRYPT_SID = "AccountDecryptsLogs"
ALIAS_TAG = "iam-onboarding-alias"
LOGS_ROLE_POLICY = "cloudtrail-to-cloudwatch-logs"
CLOUDTRAIL = "cloudtrail.amazonaws.com"
METRIC_NAMESPACE = "CISBenchmark"
# CIS AWS Foundations Benchmark 4.4: the IAM policy changes to alarm on.
IAM_POLICY_EVENTS = (
    "DeleteGroupPolicy",
    "DeleteRolePolicy",
    "DeleteUserPolicy",
    "PutGroupPolicy",
    "PutRolePolicy",
    "PutUserPolicy",
    "CreatePolicy",
    "DeletePolicy",
    "CreatePolicyVersion",
    "DeletePolicyVersion",
    "AttachRolePolicy",
    "DetachRolePolicy",
    "AttachUserPolicy",
    "DetachUserPolicy",
    "AttachGroupPolicy",
    "DetachGroupPolicy",
)
IAM_POLICY_PATTERN = (
    "{" + "||".join(f"($.eventName={name})" for name in IAM_POLICY_EVENTS) + "}"
)
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
ENCRYPTED = ("AES256", "aws:kms", "aws:kms:dsse")
MANAGEMENT_SELECTOR = {"ReadWriteType": "All", "IncludeManagementEvents": True}
MANAGEMENT_ADVANCED = {
    "Name": "All management events",
    "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}],
}
# IAM takes seconds to let CloudTrail assume a role it has just made.
ROLE_WAIT_SECONDS = (2.0, 4.0, 8.0, 16.0)


@dataclass
class Plan:
    """The names of the account's monitoring resources, and what was done to them."""

    account: str
    region: str
    trail: str
    bucket: str
    log_bucket: str
    key_alias: str
    log_group: str
    logs_role: str
    topic: str
    alarm: str
    email: str | None
    key_arn: str = ""
    role_arn: str = ""
    actions: list[str] = field(default_factory=list)

    @property
    def trail_arn(self) -> str:
        """Return the ARN the trail has, or will have."""
        return f"arn:aws:cloudtrail:{self.region}:{self.account}:trail/{self.trail}"

    @property
    def log_group_arn(self) -> str:
        """Return the log group's ARN in the form CloudTrail takes."""
        return f"arn:aws:logs:{self.region}:{self.account}:log-group:{self.log_group}:*"

    @property
    def topic_arn(self) -> str:
        """Return the alarm topic's ARN."""
        return f"arn:aws:sns:{self.region}:{self.account}:{self.topic}"

    def did(self, action: str) -> None:
        """Record one thing the step changed."""
        self.actions.append(action)


def run(ctx: StepContext) -> dict[str, Any]:
    """Make sure the account's trail, its buckets, key, logs and alarm are sound."""
    detail, fresh = ctx.account.once("trail", lambda: _ensure_all(ctx))
    if fresh:
        return dict(detail)
    known = {k: v for k, v in detail.items() if k != "actions"}
    return {**known, "action": "verified earlier in this run"}


def plan_for(ctx: StepContext) -> Plan:
    """Return the names the file gives, or derives, for the account's monitoring."""
    settings = ctx.loaded.config.monitoring
    account, region = ctx.account.account_id, ctx.account.region
    return Plan(
        account=account,
        region=region,
        trail=settings.trail_name,
        bucket=bucket_name(ctx),
        log_bucket=settings.access_log_bucket
        or f"iam-onboarding-access-logs-{account}-{region}",
        key_alias=settings.kms_key_alias,
        log_group=settings.log_group,
        logs_role=settings.logs_role,
        topic=settings.alarm_topic,
        alarm=settings.alarm_name,
        email=settings.alarm_email,
    )


def bucket_name(ctx: StepContext) -> str:
    """Return the trail bucket: the file's name, or one derived from the account."""
    configured = ctx.loaded.config.monitoring.bucket
    return (
        configured
        or f"iam-onboarding-trail-{ctx.account.account_id}-{ctx.account.region}"
    )


def trail_arn(ctx: StepContext) -> str:
    """Return the ARN the account's trail has, or will have."""
    return plan_for(ctx).trail_arn


def _ensure_all(ctx: StepContext) -> dict[str, Any]:
    plan = plan_for(ctx)
    _ensure_log_bucket(ctx, plan)
    _ensure_trail_bucket(ctx, plan)
    _ensure_key(ctx, plan)
    _ensure_log_group(ctx, plan)
    _ensure_logs_role(ctx, plan)
    _ensure_trail_settings(ctx, plan)
    _ensure_event_selectors(ctx, plan)
    _ensure_logging(ctx, plan)
    _ensure_topic(ctx, plan)
    _ensure_metric_filter(ctx, plan)
    _ensure_alarm(ctx, plan)
    return {
        "trail_arn": plan.trail_arn,
        "bucket": plan.bucket,
        "access_log_bucket": plan.log_bucket,
        "kms_key_arn": plan.key_arn,
        "log_group": plan.log_group,
        "logs_role_arn": plan.role_arn,
        "alarm": plan.alarm,
        "topic_arn": plan.topic_arn,
        "actions": plan.actions or ["none needed"],
    }


# --- policy documents -------------------------------------------------------


def bucket_policy(bucket: str, account_id: str, trail: str) -> dict[str, Any]:
    """Return the statements that let CloudTrail check the ACL and write logs."""
    service = {"Service": CLOUDTRAIL}
    source = {"aws:SourceArn": trail}
    return _policy(
        {
            "Sid": ACL_SID,
            "Effect": "Allow",
            "Principal": service,
            "Action": "s3:GetBucketAcl",
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringEquals": source},
        },
        {
            "Sid": WRITE_SID,
            "Effect": "Allow",
            "Principal": service,
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{bucket}/AWSLogs/{account_id}/*",
            "Condition": {
                "StringEquals": {
                    **source,
                    "s3:x-amz-acl": "bucket-owner-full-control",
                }
            },
        },
        deny_insecure_transport(bucket),
    )


def access_log_bucket_policy(plan: Plan) -> dict[str, Any]:
    """Return the statements that let S3 deliver the trail bucket's access logs."""
    return _policy(
        {
            "Sid": ACCESS_LOG_SID,
            "Effect": "Allow",
            "Principal": {"Service": "logging.s3.amazonaws.com"},
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{plan.log_bucket}/{plan.bucket}/*",
            "Condition": {
                "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{plan.bucket}"},
                "StringEquals": {"aws:SourceAccount": plan.account},
            },
        },
        deny_insecure_transport(plan.log_bucket),
    )


def deny_insecure_transport(bucket: str) -> dict[str, Any]:
    """Return the statement that refuses any request to ``bucket`` over plain HTTP."""
    return {
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def key_policy(plan: Plan) -> dict[str, Any]:
    """Return the key policy: CloudTrail encrypts, the account administers and reads."""
    context = {
        "kms:EncryptionContext:aws:cloudtrail:arn": (
            f"arn:aws:cloudtrail:*:{plan.account}:trail/*"
        )
    }
    service = {"Service": CLOUDTRAIL}
    return _policy(
        {
            "Sid": KEY_ADMIN_SID,
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{plan.account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": KEY_ENCRYPT_SID,
            "Effect": "Allow",
            "Principal": service,
            "Action": "kms:GenerateDataKey*",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceArn": plan.trail_arn},
                "StringLike": context,
            },
        },
        {
            "Sid": KEY_DESCRIBE_SID,
            "Effect": "Allow",
            "Principal": service,
            "Action": "kms:DescribeKey",
            "Resource": "*",
        },
        {
            "Sid": KEY_DECRYPT_SID,
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": ["kms:Decrypt", "kms:ReEncryptFrom"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:CallerAccount": plan.account},
                "StringLike": context,
            },
        },
    )


def logs_role_trust() -> dict[str, Any]:
    """Return the trust policy that lets CloudTrail assume the logs role."""
    return _policy(
        {
            "Effect": "Allow",
            "Principal": {"Service": CLOUDTRAIL},
            "Action": "sts:AssumeRole",
        }
    )


def logs_role_policy(plan: Plan) -> dict[str, Any]:
    """Return the role's permissions: write log streams in the trail's group only."""
    group = plan.log_group_arn.removesuffix(":*")
    return _policy(
        {
            "Sid": "CloudTrailWritesLogStreams",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{group}:log-stream:*",
        }
    )


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def merged_policy(
    current: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, Any] | None:
    """Return ``current`` with our statements in place, or None if they already are."""
    ours = {s["Sid"] for s in wanted["Statement"]}
    statements = current.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    present = [s for s in statements if s.get("Sid") in ours]
    if _by_sid(present) == _by_sid(wanted["Statement"]):
        return None
    others = [s for s in statements if s.get("Sid") not in ours]
    return {**wanted, "Statement": others + wanted["Statement"]}


def _by_sid(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(statements, key=lambda statement: str(statement.get("Sid")))


# --- buckets ----------------------------------------------------------------


def _ensure_log_bucket(ctx: StepContext, plan: Plan) -> None:
    bucket = plan.log_bucket
    _ensure_bucket(ctx, plan, bucket)
    _ensure_public_access_block(ctx, plan, bucket)
    _ensure_encryption(ctx, plan, bucket)
    _ensure_bucket_policy(ctx, plan, bucket, access_log_bucket_policy(plan))


def _ensure_trail_bucket(ctx: StepContext, plan: Plan) -> None:
    bucket = plan.bucket
    _ensure_bucket(ctx, plan, bucket)
    _ensure_public_access_block(ctx, plan, bucket)
    _ensure_encryption(ctx, plan, bucket)
    wanted = bucket_policy(bucket, plan.account, plan.trail_arn)
    _ensure_bucket_policy(ctx, plan, bucket, wanted)
    _ensure_access_logging(ctx, plan)


def _ensure_bucket(ctx: StepContext, plan: Plan, bucket: str) -> None:
    s3 = ctx.clients.s3
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if not is_code(err, "404", "NoSuchBucket", "NotFound"):
            raise
    request: dict[str, Any] = {"Bucket": bucket}
    if plan.region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": plan.region}
    s3.create_bucket(**request)
    plan.did(f"bucket {bucket} created")


def _ensure_public_access_block(ctx: StepContext, plan: Plan, bucket: str) -> None:
    s3 = ctx.clients.s3
    try:
        current = s3.get_public_access_block(Bucket=bucket)
    except ClientError as err:
        if not is_code(err, "NoSuchPublicAccessBlockConfiguration"):
            raise
        current = {}
    settings = current.get("PublicAccessBlockConfiguration", {})
    if all(settings.get(name) is True for name in PUBLIC_ACCESS_BLOCK):
        return
    s3.put_public_access_block(
        Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK
    )
    plan.did(f"public access blocked on {bucket}")


def _ensure_encryption(ctx: StepContext, plan: Plan, bucket: str) -> None:
    s3 = ctx.clients.s3
    try:
        current = s3.get_bucket_encryption(Bucket=bucket)
    except ClientError as err:
        if not is_code(err, "ServerSideEncryptionConfigurationNotFoundError"):
            raise
        current = {}
    rules = current.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    algorithms = {
        rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
        for rule in rules
    }
    if algorithms & set(ENCRYPTED):
        return
    # S3 server access logs can only be delivered to an SSE-S3 bucket; the trail's
    # log files themselves are encrypted with the KMS key by CloudTrail.
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        },
    )
    plan.did(f"default encryption turned on for {bucket}")


def _ensure_bucket_policy(
    ctx: StepContext, plan: Plan, bucket: str, wanted: dict[str, Any]
) -> None:
    merged = merged_policy(_current_bucket_policy(ctx, bucket), wanted)
    if merged is None:
        return
    ctx.clients.s3.put_bucket_policy(Bucket=bucket, Policy=dumps(merged))
    plan.did(f"bucket policy written on {bucket}")


def _current_bucket_policy(ctx: StepContext, bucket: str) -> dict[str, Any]:
    try:
        text = ctx.clients.s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as err:
        if is_code(err, "NoSuchBucketPolicy"):
            return {}
        raise
    policy: dict[str, Any] = json.loads(text)
    return policy


def _ensure_access_logging(ctx: StepContext, plan: Plan) -> None:
    s3 = ctx.clients.s3
    wanted = {"TargetBucket": plan.log_bucket, "TargetPrefix": f"{plan.bucket}/"}
    current = s3.get_bucket_logging(Bucket=plan.bucket).get("LoggingEnabled", {})
    if all(current.get(k) == v for k, v in wanted.items()):
        return
    s3.put_bucket_logging(
        Bucket=plan.bucket, BucketLoggingStatus={"LoggingEnabled": wanted}
    )
    plan.did(f"access logging of {plan.bucket} sent to {plan.log_bucket}")


# --- KMS key ----------------------------------------------------------------


def _ensure_key(ctx: StepContext, plan: Plan) -> None:
    key = _key_by_alias(ctx, plan) or _key_by_tag(ctx, plan)
    if key is None:
        key = _create_key(ctx, plan)
    plan.key_arn = str(key["Arn"])
    _ensure_key_usable(ctx, plan, key)
    _ensure_key_policy(ctx, plan)
    _ensure_key_rotation(ctx, plan)


def _key_by_alias(ctx: StepContext, plan: Plan) -> dict[str, Any] | None:
    try:
        key = ctx.clients.kms.describe_key(KeyId=plan.key_alias)["KeyMetadata"]
    except ClientError as err:
        if is_code(err, "NotFoundException"):
            return None
        raise
    spec = key.get("KeySpec", "SYMMETRIC_DEFAULT")
    if key.get("KeyManager") != "CUSTOMER" or spec != "SYMMETRIC_DEFAULT":
        raise StepError(
            f"{plan.key_alias} names a key CloudTrail cannot use for the trail "
            "(it must be a customer managed symmetric key); point "
            "monitoring.kms_key_alias at another alias",
            code="InvalidKmsKey",
        )
    return dict(key)


def _key_by_tag(ctx: StepContext, plan: Plan) -> dict[str, Any] | None:
    """Adopt a key an interrupted run made but did not get to name."""
    # Known limitation: this reads the tags of every key in the region, one call each.
    kms = ctx.clients.kms
    for listed in paginate(kms, "list_keys", "Keys"):
        tags = paginate(kms, "list_resource_tags", "Tags", KeyId=listed["KeyId"])
        if {"TagKey": ALIAS_TAG, "TagValue": plan.key_alias} not in list(tags):
            continue
        key: dict[str, Any] = kms.describe_key(KeyId=listed["KeyId"])["KeyMetadata"]
        kms.create_alias(AliasName=plan.key_alias, TargetKeyId=key["KeyId"])
        plan.did(f"key {key['KeyId']} adopted as {plan.key_alias}")
        return key
    return None


def _create_key(ctx: StepContext, plan: Plan) -> dict[str, Any]:
    kms = ctx.clients.kms
    key: dict[str, Any] = kms.create_key(
        Policy=dumps(key_policy(plan)),
        Description="Encrypts the IAM onboarding engine's CloudTrail log files",
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
        Tags=[
            {"TagKey": MANAGED_BY_TAG[0], "TagValue": MANAGED_BY_TAG[1]},
            {"TagKey": ALIAS_TAG, "TagValue": plan.key_alias},
        ],
    )["KeyMetadata"]
    kms.create_alias(AliasName=plan.key_alias, TargetKeyId=key["KeyId"])
    plan.did(f"key {key['KeyId']} created as {plan.key_alias}")
    return key


def _ensure_key_usable(ctx: StepContext, plan: Plan, key: dict[str, Any]) -> None:
    kms, state, key_id = ctx.clients.kms, key.get("KeyState"), key["KeyId"]
    if state == "PendingDeletion":
        kms.cancel_key_deletion(KeyId=key_id)
        plan.did(f"deletion of {plan.key_alias} cancelled")
        state = "Disabled"
    if state == "Disabled":
        kms.enable_key(KeyId=key_id)
        plan.did(f"key {plan.key_alias} enabled")
    elif state != "Enabled":
        raise StepError(
            f"key {plan.key_alias} is {state}; fix it in KMS or point "
            "monitoring.kms_key_alias at another key",
            code="InvalidKmsKey",
        )


def _ensure_key_policy(ctx: StepContext, plan: Plan) -> None:
    kms = ctx.clients.kms
    text = kms.get_key_policy(KeyId=plan.key_arn, PolicyName="default")["Policy"]
    merged = merged_policy(json.loads(text), key_policy(plan))
    if merged is None:
        return
    kms.put_key_policy(KeyId=plan.key_arn, PolicyName="default", Policy=dumps(merged))
    plan.did(f"key policy of {plan.key_alias} written")


def _ensure_key_rotation(ctx: StepContext, plan: Plan) -> None:
    kms = ctx.clients.kms
    if kms.get_key_rotation_status(KeyId=plan.key_arn).get("KeyRotationEnabled"):
        return
    kms.enable_key_rotation(KeyId=plan.key_arn)
    plan.did(f"rotation of {plan.key_alias} enabled")


# --- CloudWatch Logs --------------------------------------------------------


def _ensure_log_group(ctx: StepContext, plan: Plan) -> None:
    logs = ctx.clients.logs
    groups = paginate(
        logs, "describe_log_groups", "logGroups", logGroupNamePrefix=plan.log_group
    )
    if any(group["logGroupName"] == plan.log_group for group in groups):
        return
    try:
        logs.create_log_group(
            logGroupName=plan.log_group, tags={MANAGED_BY_TAG[0]: MANAGED_BY_TAG[1]}
        )
    except ClientError as err:
        if not is_code(err, "ResourceAlreadyExistsException"):
            raise
    plan.did(f"log group {plan.log_group} created")


def _ensure_logs_role(ctx: StepContext, plan: Plan) -> None:
    iam = ctx.clients.iam
    try:
        role = iam.get_role(RoleName=plan.logs_role)["Role"]
    except ClientError as err:
        if not is_code(err, "NoSuchEntity"):
            raise
        role = _create_logs_role(ctx, plan)
    plan.role_arn = str(role["Arn"])
    if as_document(role.get("AssumeRolePolicyDocument", {})) != logs_role_trust():
        iam.update_assume_role_policy(
            RoleName=plan.logs_role, PolicyDocument=dumps(logs_role_trust())
        )
        plan.did(f"trust policy of role {plan.logs_role} repaired")
    _ensure_logs_role_policy(ctx, plan)


def _create_logs_role(ctx: StepContext, plan: Plan) -> dict[str, Any]:
    role: dict[str, Any] = ctx.clients.iam.create_role(
        RoleName=plan.logs_role,
        Path=ENGINE_POLICY_PATH,
        AssumeRolePolicyDocument=dumps(logs_role_trust()),
        Description="Lets CloudTrail deliver the account's trail to CloudWatch Logs",
        Tags=[{"Key": MANAGED_BY_TAG[0], "Value": MANAGED_BY_TAG[1]}],
    )["Role"]
    plan.did(f"role {plan.logs_role} created")
    return role


def _ensure_logs_role_policy(ctx: StepContext, plan: Plan) -> None:
    iam, wanted = ctx.clients.iam, logs_role_policy(plan)
    try:
        current = iam.get_role_policy(
            RoleName=plan.logs_role, PolicyName=LOGS_ROLE_POLICY
        )["PolicyDocument"]
        if as_document(current) == wanted:
            return
    except ClientError as err:
        if not is_code(err, "NoSuchEntity"):
            raise
    iam.put_role_policy(
        RoleName=plan.logs_role,
        PolicyName=LOGS_ROLE_POLICY,
        PolicyDocument=dumps(wanted),
    )
    plan.did(f"policy of role {plan.logs_role} written")


# --- the trail --------------------------------------------------------------


def _trail_settings(plan: Plan) -> dict[str, Any]:
    return {
        "Name": plan.trail,
        "S3BucketName": plan.bucket,
        "IsMultiRegionTrail": True,
        "IncludeGlobalServiceEvents": True,
        "EnableLogFileValidation": True,
        "KmsKeyId": plan.key_arn,
        "CloudWatchLogsLogGroupArn": plan.log_group_arn,
        "CloudWatchLogsRoleArn": plan.role_arn,
    }


def _trail_faults(trail: dict[str, Any], plan: Plan) -> list[str]:
    """Name what differs between an existing trail and the one we want."""
    wanted = {
        "IsMultiRegionTrail": True,
        "IncludeGlobalServiceEvents": True,
        "LogFileValidationEnabled": True,
        "S3BucketName": plan.bucket,
        "KmsKeyId": plan.key_arn,
        "CloudWatchLogsLogGroupArn": plan.log_group_arn,
        "CloudWatchLogsRoleArn": plan.role_arn,
    }
    return [name for name, value in wanted.items() if trail.get(name) != value]


def _ensure_trail_settings(ctx: StepContext, plan: Plan) -> None:
    cloudtrail = ctx.clients.cloudtrail
    # Known limitation: a trail of this name whose home is another region is not seen.
    listed = cloudtrail.describe_trails(
        trailNameList=[plan.trail], includeShadowTrails=False
    )["trailList"]
    # moto ignores trailNameList and lists every trail, so match the name here.
    trails = [t for t in listed if plan.trail in (t.get("Name"), t.get("TrailARN"))]
    if not trails:
        _waiting_for_role(ctx, cloudtrail.create_trail, _trail_settings(plan))
        plan.did("trail created")
        return
    faults = _trail_faults(trails[0], plan)
    if not faults:
        return
    _waiting_for_role(ctx, cloudtrail.update_trail, _trail_settings(plan))
    plan.did(f"trail settings repaired: {', '.join(faults)}")


def _waiting_for_role(
    ctx: StepContext, call: Callable[..., Any], settings: dict[str, Any]
) -> None:
    for delay in (*ROLE_WAIT_SECONDS, None):
        try:
            call(**settings)
            return
        except ClientError as err:
            if delay is None or not is_code(
                err, "InvalidCloudWatchLogsRoleArnException"
            ):
                raise
        ctx.log.warning(
            "CloudTrail cannot assume %s yet; trying again in %.0f s",
            settings["CloudWatchLogsRoleArn"],
            delay,
        )
        time.sleep(delay)


def _ensure_event_selectors(ctx: StepContext, plan: Plan) -> None:
    cloudtrail = ctx.clients.cloudtrail
    current = cloudtrail.get_event_selectors(TrailName=plan.trail)
    advanced = current.get("AdvancedEventSelectors") or []
    if advanced:
        wanted = _with_management_advanced(advanced)
        if wanted != advanced:
            cloudtrail.put_event_selectors(
                TrailName=plan.trail, AdvancedEventSelectors=wanted
            )
            plan.did("all management events selected")
        return
    basic = current.get("EventSelectors") or []
    selected = _with_management(basic)
    if selected != basic:
        cloudtrail.put_event_selectors(TrailName=plan.trail, EventSelectors=selected)
        plan.did("all management events selected")


def _with_management(selectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return basic selectors that record every read and write management event."""
    data_only = [
        {**s, "IncludeManagementEvents": False}
        for s in selectors
        if s.get("DataResources")
    ]
    keeps_all = [
        s
        for s in selectors
        if s.get("IncludeManagementEvents")
        and s.get("ReadWriteType") == "All"
        and not s.get("ExcludeManagementEventSources")
    ]
    if keeps_all:
        return selectors
    return [MANAGEMENT_SELECTOR, *data_only]


def _with_management_advanced(
    selectors: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Return advanced selectors whose management selector leaves nothing out."""
    if MANAGEMENT_ADVANCED["FieldSelectors"] in [
        s.get("FieldSelectors") for s in selectors
    ]:
        return selectors
    others = [s for s in selectors if not _is_management(s)]
    return [MANAGEMENT_ADVANCED, *others]


def _is_management(selector: dict[str, Any]) -> bool:
    return any(
        f.get("Field") == "eventCategory" and "Management" in f.get("Equals", [])
        for f in selector.get("FieldSelectors", [])
    )


def _ensure_logging(ctx: StepContext, plan: Plan) -> None:
    cloudtrail = ctx.clients.cloudtrail
    if cloudtrail.get_trail_status(Name=plan.trail).get("IsLogging"):
        return
    cloudtrail.start_logging(Name=plan.trail)
    plan.did("logging started")


# --- the alarm --------------------------------------------------------------


def _ensure_topic(ctx: StepContext, plan: Plan) -> None:
    sns = ctx.clients.sns
    try:
        sns.get_topic_attributes(TopicArn=plan.topic_arn)
    except ClientError as err:
        if not is_code(err, "NotFound", "NotFoundException"):
            raise
        sns.create_topic(
            Name=plan.topic,
            Tags=[{"Key": MANAGED_BY_TAG[0], "Value": MANAGED_BY_TAG[1]}],
        )
        plan.did(f"topic {plan.topic} created")
    # Known limitation: without alarm_email the topic has no subscriber to notify.
    if plan.email is not None:
        _ensure_subscription(ctx, plan, plan.email)


def _ensure_subscription(ctx: StepContext, plan: Plan, email: str) -> None:
    sns = ctx.clients.sns
    subscriptions = paginate(
        sns, "list_subscriptions_by_topic", "Subscriptions", TopicArn=plan.topic_arn
    )
    if any(
        s.get("Protocol") == "email" and s.get("Endpoint") == email
        for s in subscriptions
    ):
        return
    sns.subscribe(TopicArn=plan.topic_arn, Protocol="email", Endpoint=email)
    plan.did(f"{email} subscribed to {plan.topic}; AWS mails a link to confirm")


def _metric_transformations(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "metricName": plan.alarm,
            "metricNamespace": METRIC_NAMESPACE,
            "metricValue": "1",
        }
    ]


def _ensure_metric_filter(ctx: StepContext, plan: Plan) -> None:
    logs = ctx.clients.logs
    filters = paginate(
        logs,
        "describe_metric_filters",
        "metricFilters",
        logGroupName=plan.log_group,
        filterNamePrefix=plan.alarm,
    )
    wanted = (IAM_POLICY_PATTERN, _metric_transformations(plan))
    for found in filters:
        if found["filterName"] != plan.alarm:
            continue
        got = (found.get("filterPattern"), found.get("metricTransformations"))
        if got == wanted:
            return
    logs.put_metric_filter(
        logGroupName=plan.log_group,
        filterName=plan.alarm,
        filterPattern=IAM_POLICY_PATTERN,
        metricTransformations=_metric_transformations(plan),
    )
    plan.did(f"metric filter {plan.alarm} written")


def _alarm_settings(plan: Plan, actions: list[str]) -> dict[str, Any]:
    return {
        "AlarmName": plan.alarm,
        "AlarmDescription": "CIS 4.4: an IAM policy was changed",
        "MetricName": plan.alarm,
        "Namespace": METRIC_NAMESPACE,
        "Statistic": "Sum",
        "Period": 300,
        "EvaluationPeriods": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "ActionsEnabled": True,
        "AlarmActions": actions,
    }


def _ensure_alarm(ctx: StepContext, plan: Plan) -> None:
    cloudwatch = ctx.clients.cloudwatch
    alarms = paginate(
        cloudwatch, "describe_alarms", "MetricAlarms", AlarmNames=[plan.alarm]
    )
    found = next(iter(alarms), None)
    actions = sorted({*(found or {}).get("AlarmActions", []), plan.topic_arn})
    wanted = _alarm_settings(plan, actions)
    checked = [k for k in wanted if k != "AlarmDescription"]
    if found is not None and all(found.get(k) == wanted[k] for k in checked):
        return
    cloudwatch.put_metric_alarm(**wanted)
    plan.did(f"alarm {plan.alarm} written")
