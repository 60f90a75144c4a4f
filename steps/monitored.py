"""Monitored: a multi-region trail with validated logs, logging, once per account.

The trail's bucket gets the policy CloudTrail needs before the trail is
created: real AWS refuses create_trail without it, even though moto does not.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from steps.base import StepContext, dumps, is_code

ACL_SID = "AWSCloudTrailAclCheck"
WRITE_SID = "AWSCloudTrailWrite"


def run(ctx: StepContext) -> dict[str, Any]:
    """Make sure the account's trail exists, is sound and is logging."""
    with ctx.account.lock:
        known = ctx.account.verified.get("trail")
        if known is not None:
            return {**known, "action": "verified earlier in this run"}
        detail = _ensure_trail(ctx)
        ctx.account.verified["trail"] = {
            "trail_arn": detail["trail_arn"],
            "bucket": detail["bucket"],
        }
    return detail


def bucket_name(ctx: StepContext) -> str:
    """Return the trail bucket: the file's name, or one derived from the account."""
    configured = ctx.loaded.config.monitoring.bucket
    return (
        configured
        or f"iam-onboarding-trail-{ctx.account.account_id}-{ctx.account.region}"
    )


def trail_arn(ctx: StepContext) -> str:
    """Return the ARN the account's trail has, or will have."""
    account, region = ctx.account.account_id, ctx.account.region
    name = ctx.loaded.config.monitoring.trail_name
    return f"arn:aws:cloudtrail:{region}:{account}:trail/{name}"


def bucket_policy(bucket: str, account_id: str, trail: str) -> dict[str, Any]:
    """Return the statements that let CloudTrail check the ACL and write logs."""
    service = {"Service": "cloudtrail.amazonaws.com"}
    source = {"aws:SourceArn": trail}
    return {
        "Version": "2012-10-17",
        "Statement": [
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
        ],
    }


def _ensure_trail(ctx: StepContext) -> dict[str, Any]:
    bucket = bucket_name(ctx)
    actions = _ensure_bucket(ctx, bucket)
    actions += _ensure_bucket_policy(ctx, bucket)
    actions += _ensure_trail_settings(ctx, bucket)
    actions += _ensure_logging(ctx)
    return {
        "trail_arn": trail_arn(ctx),
        "bucket": bucket,
        "actions": actions or ["none needed"],
    }


def _ensure_bucket(ctx: StepContext, bucket: str) -> list[str]:
    s3 = ctx.clients.s3
    try:
        s3.head_bucket(Bucket=bucket)
        return []
    except ClientError as err:
        if not is_code(err, "404", "NoSuchBucket", "NotFound"):
            raise
    request: dict[str, Any] = {"Bucket": bucket}
    if ctx.account.region != "us-east-1":
        request["CreateBucketConfiguration"] = {
            "LocationConstraint": ctx.account.region
        }
    s3.create_bucket(**request)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return ["bucket created"]


def _ensure_bucket_policy(ctx: StepContext, bucket: str) -> list[str]:
    s3 = ctx.clients.s3
    wanted = bucket_policy(bucket, ctx.account.account_id, trail_arn(ctx))
    current = _current_policy(ctx, bucket)
    ours = {statement["Sid"] for statement in wanted["Statement"]}
    present = [s for s in current.get("Statement", []) if s.get("Sid") in ours]
    if sorted(present, key=lambda s: s["Sid"]) == wanted["Statement"]:
        return []
    others = [s for s in current.get("Statement", []) if s.get("Sid") not in ours]
    merged = {**wanted, "Statement": others + wanted["Statement"]}
    s3.put_bucket_policy(Bucket=bucket, Policy=dumps(merged))
    return ["bucket policy written"]


def _current_policy(ctx: StepContext, bucket: str) -> dict[str, Any]:
    try:
        text = ctx.clients.s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as err:
        if is_code(err, "NoSuchBucketPolicy"):
            return {}
        raise
    policy: dict[str, Any] = json.loads(text)
    return policy


def _ensure_trail_settings(ctx: StepContext, bucket: str) -> list[str]:
    cloudtrail = ctx.clients.cloudtrail
    name = ctx.loaded.config.monitoring.trail_name
    settings = {
        "Name": name,
        "S3BucketName": bucket,
        "IsMultiRegionTrail": True,
        "IncludeGlobalServiceEvents": True,
        "EnableLogFileValidation": True,
    }
    trails = cloudtrail.describe_trails(
        trailNameList=[name], includeShadowTrails=False
    )["trailList"]
    if not trails:
        cloudtrail.create_trail(**settings)
        return ["trail created"]
    trail = trails[0]
    sound = (
        trail.get("IsMultiRegionTrail")
        and trail.get("LogFileValidationEnabled")
        and trail.get("IncludeGlobalServiceEvents")
        and trail.get("S3BucketName") == bucket
    )
    if sound:
        return []
    cloudtrail.update_trail(**settings)
    return ["trail settings repaired"]


def _ensure_logging(ctx: StepContext) -> list[str]:
    cloudtrail = ctx.clients.cloudtrail
    name = ctx.loaded.config.monitoring.trail_name
    if cloudtrail.get_trail_status(Name=name).get("IsLogging"):
        return []
    cloudtrail.start_logging(Name=name)
    return ["logging started"]
