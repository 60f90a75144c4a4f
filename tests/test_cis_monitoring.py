"""The Monitored step against the CIS AWS Foundations Benchmark v5 logging rules.

Each rule has a test where the rule holds after the step, and one where a
violation is planted in moto by hand first and the step repairs it in place.
moto checks neither bucket nor key policies, so the documents and the order
of the calls are asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID

from engine.aws import build_clients
from engine.config import AwsConfig
from engine.errors import ConfigError
from engine.sandbox import Sandbox
from steps import monitored
from steps.base import AccountFacts, Clients, StepContext
from tests.conftest import StepKit, load_file, moto_server_running, write_workflows

ALICE: dict[str, Any] = {"name": "alice"}
TRAIL = "test-trail"
ALIAS = "alias/iam-onboarding-trail"
GROUP = "iam-onboarding-trail"
ALARM = "iam-onboarding-iam-policy-changes"


def _again(ctx: StepContext) -> dict[str, Any]:
    """Run the step as a later run would, with nothing verified yet."""
    ctx.account.verified.clear()
    return monitored.run(ctx)


def _trail(clients: Clients) -> dict[str, Any]:
    trails = clients.cloudtrail.describe_trails()["trailList"]
    assert len(trails) == 1, "exactly one trail"
    found: dict[str, Any] = trails[0]
    return found


def _policy(clients: Clients, bucket: str) -> dict[str, dict[str, Any]]:
    policy = json.loads(clients.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    return {s["Sid"]: s for s in policy["Statement"]}


def _key_arn(clients: Clients) -> str:
    return str(clients.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["Arn"])


def _record_calls(clients: Clients) -> list[str]:
    """Record every AWS operation the clients make, with the bucket for S3."""
    calls: list[str] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        bucket = params.get("Bucket")
        calls.append(f"{model.name} {bucket}" if bucket else model.name)

    for field in dataclasses.fields(clients):
        client = getattr(clients, field.name)
        client.meta.events.register("provide-client-params", note)
    return calls


def _plant_trail(clients: Clients, bucket: str, **settings: Any) -> None:
    clients.s3.create_bucket(Bucket=bucket)
    clients.cloudtrail.create_trail(Name=TRAIL, S3BucketName=bucket, **settings)


# --- CIS 3.1: multi-region trail with read and write management events -------


def test_trail_is_multi_region_with_every_management_event(kit: StepKit) -> None:
    monitored.run(kit.context(ALICE))

    trail = _trail(kit.clients)
    selectors = kit.clients.cloudtrail.get_event_selectors(TrailName=TRAIL)
    assert trail["IsMultiRegionTrail"] and trail["IncludeGlobalServiceEvents"]
    assert {"ReadWriteType": "All", "IncludeManagementEvents": True} in selectors[
        "EventSelectors"
    ]


def test_a_planted_single_region_trail_is_repaired_not_duplicated(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    _plant_trail(kit.clients, monitored.bucket_name(ctx), IsMultiRegionTrail=False)
    calls = _record_calls(kit.clients)

    detail = monitored.run(ctx)

    assert _trail(kit.clients)["IsMultiRegionTrail"] is True
    assert "CreateTrail" not in calls and "UpdateTrail" in calls
    assert any("IsMultiRegionTrail" in a for a in detail["actions"])


def test_another_trail_in_the_account_is_left_alone_and_ours_is_made(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    kit.clients.s3.create_bucket(Bucket="someone-elses-trail-bucket")
    kit.clients.cloudtrail.create_trail(
        Name="someone-elses-trail", S3BucketName="someone-elses-trail-bucket"
    )
    calls = _record_calls(kit.clients)

    monitored.run(ctx)

    trails = {
        t["Name"]: t for t in kit.clients.cloudtrail.describe_trails()["trailList"]
    }
    assert "CreateTrail" in calls
    assert trails[TRAIL]["IsMultiRegionTrail"] is True
    assert trails["someone-elses-trail"]["IsMultiRegionTrail"] is False


def test_a_planted_read_only_management_selector_is_widened(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    data = {"Type": "AWS::S3::Object", "Values": ["arn:aws:s3"]}
    kit.clients.cloudtrail.put_event_selectors(
        TrailName=TRAIL,
        EventSelectors=[
            {
                "ReadWriteType": "ReadOnly",
                "IncludeManagementEvents": True,
                "DataResources": [data],
            }
        ],
    )

    _again(ctx)

    selectors = kit.clients.cloudtrail.get_event_selectors(TrailName=TRAIL)
    assert selectors["EventSelectors"][0] == {
        "ReadWriteType": "All",
        "IncludeManagementEvents": True,
    }
    assert selectors["EventSelectors"][1]["DataResources"] == [data]
    assert selectors["EventSelectors"][1]["IncludeManagementEvents"] is False


def test_a_planted_partial_advanced_management_selector_is_replaced(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    write_only = {
        "Name": "writes only",
        "FieldSelectors": [
            {"Field": "eventCategory", "Equals": ["Management"]},
            {"Field": "readOnly", "Equals": ["false"]},
        ],
    }
    kit.clients.cloudtrail.put_event_selectors(
        TrailName=TRAIL, AdvancedEventSelectors=[write_only]
    )

    _again(ctx)

    advanced = kit.clients.cloudtrail.get_event_selectors(TrailName=TRAIL)[
        "AdvancedEventSelectors"
    ]
    assert advanced == [monitored.MANAGEMENT_ADVANCED]


# --- CIS 3.2: log file validation ---------------------------------------------


def test_log_file_validation_is_on(kit: StepKit) -> None:
    monitored.run(kit.context(ALICE))

    assert _trail(kit.clients)["LogFileValidationEnabled"] is True


def test_a_planted_unvalidated_trail_gets_validation(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    _plant_trail(
        kit.clients,
        monitored.bucket_name(ctx),
        IsMultiRegionTrail=True,
        EnableLogFileValidation=False,
    )

    detail = monitored.run(ctx)

    assert _trail(kit.clients)["LogFileValidationEnabled"] is True
    assert any("LogFileValidationEnabled" in a for a in detail["actions"])


# --- CIS 3.5: logs encrypted with a customer managed KMS key ------------------


def test_the_trail_is_encrypted_with_the_customer_managed_key(kit: StepKit) -> None:
    detail = monitored.run(kit.context(ALICE))

    key = kit.clients.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert key["KeyManager"] == "CUSTOMER" and key["KeyState"] == "Enabled"
    assert _trail(kit.clients)["KmsKeyId"] == key["Arn"] == detail["kms_key_arn"]


def test_the_key_policy_lets_cloudtrail_encrypt_and_the_account_decrypt(
    kit: StepKit,
) -> None:
    monitored.run(kit.context(ALICE))

    account = kit.account.account_id
    text = kit.clients.kms.get_key_policy(
        KeyId=_key_arn(kit.clients), PolicyName="default"
    )["Policy"]
    by_sid = {s["Sid"]: s for s in json.loads(text)["Statement"]}
    context = {
        "kms:EncryptionContext:aws:cloudtrail:arn": f"arn:aws:cloudtrail:*:{account}:trail/*"
    }
    encrypt = by_sid["CloudTrailEncryptsLogs"]
    assert encrypt["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
    assert encrypt["Action"] == "kms:GenerateDataKey*"
    assert encrypt["Condition"] == {
        "StringEquals": {
            "aws:SourceArn": f"arn:aws:cloudtrail:us-east-1:{account}:trail/{TRAIL}"
        },
        "StringLike": context,
    }
    decrypt = by_sid["AccountDecryptsLogs"]
    assert decrypt["Action"] == ["kms:Decrypt", "kms:ReEncryptFrom"]
    assert decrypt["Condition"]["StringEquals"] == {"kms:CallerAccount": account}
    assert by_sid["AccountAdministersKey"]["Principal"] == {
        "AWS": f"arn:aws:iam::{account}:root"
    }
    assert by_sid["CloudTrailDescribesKey"]["Action"] == "kms:DescribeKey"


def test_a_planted_unencrypted_trail_gets_the_key(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    _plant_trail(kit.clients, monitored.bucket_name(ctx), IsMultiRegionTrail=True)

    monitored.run(ctx)

    assert _trail(kit.clients)["KmsKeyId"] == _key_arn(kit.clients)


def test_a_planted_key_policy_without_cloudtrail_is_repaired_keeping_others(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    account = kit.account.account_id
    theirs = {
        "Sid": "Theirs",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    key = kit.clients.kms.create_key(
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]})
    )["KeyMetadata"]
    kit.clients.kms.create_alias(AliasName=ALIAS, TargetKeyId=key["KeyId"])

    detail = monitored.run(ctx)

    text = kit.clients.kms.get_key_policy(
        KeyId=_key_arn(kit.clients), PolicyName="default"
    )["Policy"]
    sids = [s["Sid"] for s in json.loads(text)["Statement"]]
    assert sids[0] == "Theirs" and "CloudTrailEncryptsLogs" in sids
    assert detail["kms_key_arn"] == key["Arn"]
    assert len(kit.clients.kms.list_keys()["Keys"]) == 1


def test_a_key_made_by_an_interrupted_run_is_adopted_not_duplicated(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    plan = monitored.plan_for(ctx)
    orphan = kit.clients.kms.create_key(
        Policy=json.dumps(monitored.key_policy(plan)),
        Tags=[{"TagKey": monitored.ALIAS_TAG, "TagValue": ALIAS}],
    )["KeyMetadata"]

    monitored.run(ctx)

    assert _key_arn(kit.clients) == orphan["Arn"]
    assert len(kit.clients.kms.list_keys()["Keys"]) == 1


def test_an_alias_on_an_aws_managed_or_asymmetric_key_is_refused(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    key = kit.clients.kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")[
        "KeyMetadata"
    ]
    kit.clients.kms.create_alias(AliasName=ALIAS, TargetKeyId=key["KeyId"])

    with pytest.raises(Exception, match="customer managed symmetric key"):
        monitored.run(ctx)


# --- CIS 3.6: key rotation ----------------------------------------------------


def test_the_key_rotates(kit: StepKit) -> None:
    monitored.run(kit.context(ALICE))

    status = kit.clients.kms.get_key_rotation_status(KeyId=_key_arn(kit.clients))
    assert status["KeyRotationEnabled"] is True


def test_planted_rotation_off_is_turned_back_on(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    kit.clients.kms.disable_key_rotation(KeyId=_key_arn(kit.clients))

    detail = _again(ctx)

    status = kit.clients.kms.get_key_rotation_status(KeyId=_key_arn(kit.clients))
    assert status["KeyRotationEnabled"] is True
    assert f"rotation of {ALIAS} enabled" in detail["actions"]


def test_a_planted_key_deletion_is_cancelled(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    key_id = kit.clients.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]
    kit.clients.kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    _again(ctx)

    key = kit.clients.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert key["KeyState"] == "Enabled"


# --- CloudWatch Logs delivery (Config rule cloud-trail-cloud-watch-logs-enabled) -


def test_the_trail_delivers_to_cloudwatch_logs_through_its_role(
    kit: StepKit,
) -> None:
    detail = monitored.run(kit.context(ALICE))

    account = kit.account.account_id
    group_arn = f"arn:aws:logs:us-east-1:{account}:log-group:{GROUP}"
    trail = _trail(kit.clients)
    assert trail["CloudWatchLogsLogGroupArn"] == f"{group_arn}:*"
    assert trail["CloudWatchLogsRoleArn"] == detail["logs_role_arn"]
    role = kit.clients.iam.get_role(RoleName="iam-onboarding-trail-to-logs")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    policy = kit.clients.iam.get_role_policy(
        RoleName=role["RoleName"], PolicyName=monitored.LOGS_ROLE_POLICY
    )["PolicyDocument"]
    assert policy["Statement"][0]["Action"] == [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ]
    assert policy["Statement"][0]["Resource"] == f"{group_arn}:log-stream:*"


def test_a_planted_trail_without_cloudwatch_logs_is_connected(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    _plant_trail(kit.clients, monitored.bucket_name(ctx), IsMultiRegionTrail=True)

    detail = monitored.run(ctx)

    trail = _trail(kit.clients)
    assert trail["CloudWatchLogsLogGroupArn"].endswith(f":log-group:{GROUP}:*")
    assert trail["CloudWatchLogsRoleArn"] == detail["logs_role_arn"]
    groups = kit.clients.logs.describe_log_groups()["logGroups"]
    assert [g["logGroupName"] for g in groups] == [GROUP]


def test_a_planted_wrong_trust_and_missing_role_policy_are_repaired(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    wrong = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    kit.clients.iam.create_role(
        RoleName="iam-onboarding-trail-to-logs",
        AssumeRolePolicyDocument=json.dumps(wrong),
    )

    detail = monitored.run(ctx)

    role = kit.clients.iam.get_role(RoleName="iam-onboarding-trail-to-logs")["Role"]
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "cloudtrail.amazonaws.com"}
    assert "policy of role iam-onboarding-trail-to-logs written" in detail["actions"]


def test_a_role_cloudtrail_cannot_assume_yet_is_waited_for(
    kit: StepKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IAM takes seconds to let CloudTrail assume a new role; moto does not."""
    monkeypatch.setattr(monitored, "ROLE_WAIT_SECONDS", (0.0, 0.0))
    ctx = kit.context(ALICE)
    real = kit.clients.cloudtrail
    refusals = [0]

    class NotYet:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def create_trail(self, **kwargs: Any) -> Any:
            if refusals[0] < 2:
                refusals[0] += 1
                raise ClientError(
                    {"Error": {"Code": "InvalidCloudWatchLogsRoleArnException"}},
                    "CreateTrail",
                )
            return real.create_trail(**kwargs)

    ctx.clients = dataclasses.replace(kit.clients, cloudtrail=NotYet())

    monitored.run(ctx)

    assert refusals[0] == 2 and _trail(kit.clients)["Name"] == TRAIL


# --- case 4: logging started ------------------------------------------------


def test_logging_is_started(kit: StepKit) -> None:
    monitored.run(kit.context(ALICE))

    assert kit.clients.cloudtrail.get_trail_status(Name=TRAIL)["IsLogging"] is True


def test_a_planted_stopped_trail_is_started(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    _plant_trail(kit.clients, monitored.bucket_name(ctx), IsMultiRegionTrail=True)

    detail = monitored.run(ctx)

    assert kit.clients.cloudtrail.get_trail_status(Name=TRAIL)["IsLogging"] is True
    assert "logging started" in detail["actions"]


# --- case 3: the bucket policy before the trail -----------------------------


def test_everything_the_trail_needs_exists_before_create_trail(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    bucket = monitored.bucket_name(ctx)
    calls = _record_calls(kit.clients)

    monitored.run(ctx)

    trail_at = calls.index("CreateTrail")
    for needed in (
        f"PutBucketPolicy {bucket}",
        "CreateKey",
        "CreateAlias",
        "PutKeyPolicy" if "PutKeyPolicy" in calls else "CreateKey",
        "CreateLogGroup",
        "CreateRole",
        "PutRolePolicy",
    ):
        assert calls.index(needed) < trail_at, needed
    assert calls.index("StartLogging") > trail_at


def test_the_trail_bucket_policy_document(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)

    bucket, account = monitored.bucket_name(ctx), kit.account.account_id
    trail_arn = f"arn:aws:cloudtrail:us-east-1:{account}:trail/{TRAIL}"
    by_sid = _policy(kit.clients, bucket)
    assert by_sid["AWSCloudTrailAclCheck"] == {
        "Sid": "AWSCloudTrailAclCheck",
        "Effect": "Allow",
        "Principal": {"Service": "cloudtrail.amazonaws.com"},
        "Action": "s3:GetBucketAcl",
        "Resource": f"arn:aws:s3:::{bucket}",
        "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}},
    }
    assert by_sid["AWSCloudTrailWrite"] == {
        "Sid": "AWSCloudTrailWrite",
        "Effect": "Allow",
        "Principal": {"Service": "cloudtrail.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/AWSLogs/{account}/*",
        "Condition": {
            "StringEquals": {
                "aws:SourceArn": trail_arn,
                "s3:x-amz-acl": "bucket-owner-full-control",
            }
        },
    }


def test_a_planted_bucket_without_policy_gets_it_before_the_trail(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    bucket = monitored.bucket_name(ctx)
    kit.clients.s3.create_bucket(Bucket=bucket)
    calls = _record_calls(kit.clients)

    monitored.run(ctx)

    assert calls.index(f"PutBucketPolicy {bucket}") < calls.index("CreateTrail")
    assert "CreateBucket " + bucket not in calls
    assert {"AWSCloudTrailAclCheck", "AWSCloudTrailWrite"} <= set(
        _policy(kit.clients, bucket)
    )


# --- CIS 2.1.1: both buckets refuse plain HTTP -------------------------------


def test_both_buckets_deny_insecure_transport(kit: StepKit) -> None:
    detail = monitored.run(kit.context(ALICE))

    for bucket in (detail["bucket"], detail["access_log_bucket"]):
        deny = _policy(kit.clients, bucket)["DenyInsecureTransport"]
        assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"] == [
            f"arn:aws:s3:::{bucket}",
            f"arn:aws:s3:::{bucket}/*",
        ]


def test_a_planted_policy_without_the_tls_statement_gets_it(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    detail = monitored.run(ctx)
    bucket = detail["bucket"]
    statements = _policy(kit.clients, bucket)
    del statements["DenyInsecureTransport"]
    kit.clients.s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {"Version": "2012-10-17", "Statement": list(statements.values())}
        ),
    )

    _again(ctx)

    assert "DenyInsecureTransport" in _policy(kit.clients, bucket)


# --- CIS 2.1.4: public access blocked on both buckets -------------------------


def test_both_buckets_block_all_public_access(kit: StepKit) -> None:
    detail = monitored.run(kit.context(ALICE))

    for bucket in (detail["bucket"], detail["access_log_bucket"]):
        block = kit.clients.s3.get_public_access_block(Bucket=bucket)
        assert block["PublicAccessBlockConfiguration"] == monitored.PUBLIC_ACCESS_BLOCK


def test_a_planted_bucket_with_public_access_allowed_is_locked(
    kit: StepKit,
) -> None:
    ctx = kit.context(ALICE)
    bucket = monitored.bucket_name(ctx)
    kit.clients.s3.create_bucket(Bucket=bucket)
    kit.clients.s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            **monitored.PUBLIC_ACCESS_BLOCK,
            "BlockPublicPolicy": False,
        },
    )

    monitored.run(ctx)

    block = kit.clients.s3.get_public_access_block(Bucket=bucket)
    assert block["PublicAccessBlockConfiguration"] == monitored.PUBLIC_ACCESS_BLOCK


# --- default encryption (Config rule s3-bucket-server-side-encryption-enabled) -


def _algorithm(clients: Clients, bucket: str) -> str:
    rules = clients.s3.get_bucket_encryption(Bucket=bucket)[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    return str(rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"])


def test_both_buckets_are_encrypted_by_default(kit: StepKit) -> None:
    detail = monitored.run(kit.context(ALICE))

    assert _algorithm(kit.clients, detail["bucket"]) == "AES256"
    assert _algorithm(kit.clients, detail["access_log_bucket"]) == "AES256"


def test_planted_missing_encryption_is_restored(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    detail = monitored.run(ctx)
    kit.clients.s3.delete_bucket_encryption(Bucket=detail["bucket"])

    again = _again(ctx)

    assert _algorithm(kit.clients, detail["bucket"]) == "AES256"
    assert f"default encryption turned on for {detail['bucket']}" in again["actions"]


# --- CIS 3.4: server access logging on the trail bucket -----------------------


def test_the_trail_bucket_logs_access_to_a_separate_bucket(kit: StepKit) -> None:
    detail = monitored.run(kit.context(ALICE))

    bucket, target = detail["bucket"], detail["access_log_bucket"]
    logging_ = kit.clients.s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
    assert target != bucket
    assert logging_ == {"TargetBucket": target, "TargetPrefix": f"{bucket}/"}
    delivery = _policy(kit.clients, target)["S3ServerAccessLogsDelivery"]
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery["Resource"] == f"arn:aws:s3:::{target}/{bucket}/*"
    assert delivery["Condition"] == {
        "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
        "StringEquals": {"aws:SourceAccount": kit.account.account_id},
    }


def test_planted_access_logging_off_is_turned_back_on(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    detail = monitored.run(ctx)
    bucket = detail["bucket"]
    kit.clients.s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})

    _again(ctx)

    logging_ = kit.clients.s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
    assert logging_["TargetBucket"] == detail["access_log_bucket"]


# --- CIS 4.4: metric filter and alarm on IAM policy changes -------------------


def test_the_iam_policy_change_filter_and_alarm_notify_the_topic(
    kit: StepKit,
) -> None:
    detail = monitored.run(kit.context(ALICE))

    (found,) = kit.clients.logs.describe_metric_filters(logGroupName=GROUP)[
        "metricFilters"
    ]
    names = [
        part.removeprefix("($.eventName=").removesuffix(")")
        for part in found["filterPattern"].strip("{}").split("||")
    ]
    assert sorted(names) == sorted(
        [
            "DeleteGroupPolicy", "DeleteRolePolicy", "DeleteUserPolicy",
            "PutGroupPolicy", "PutRolePolicy", "PutUserPolicy",
            "CreatePolicy", "DeletePolicy", "CreatePolicyVersion",
            "DeletePolicyVersion", "AttachRolePolicy", "DetachRolePolicy",
            "AttachUserPolicy", "DetachUserPolicy", "AttachGroupPolicy",
            "DetachGroupPolicy",
        ]
    )  # fmt: skip
    metric = found["metricTransformations"][0]
    (alarm,) = kit.clients.cloudwatch.describe_alarms(AlarmNames=[ALARM])[
        "MetricAlarms"
    ]
    assert (alarm["MetricName"], alarm["Namespace"]) == (
        metric["metricName"],
        metric["metricNamespace"],
    )
    assert alarm["Threshold"] == 1.0 and alarm["Statistic"] == "Sum"
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["AlarmActions"] == [detail["topic_arn"]]
    assert kit.clients.sns.get_topic_attributes(TopicArn=detail["topic_arn"])


def test_a_planted_narrow_filter_and_silent_alarm_are_repaired(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    detail = monitored.run(ctx)
    kit.clients.logs.delete_metric_filter(logGroupName=GROUP, filterName=ALARM)
    kit.clients.logs.put_metric_filter(
        logGroupName=GROUP,
        filterName=ALARM,
        filterPattern="{($.eventName=PutUserPolicy)}",
        metricTransformations=[
            {"metricName": ALARM, "metricNamespace": "CISBenchmark", "metricValue": "1"}
        ],
    )
    kit.clients.cloudwatch.put_metric_alarm(
        AlarmName=ALARM,
        MetricName=ALARM,
        Namespace="CISBenchmark",
        Statistic="Sum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        AlarmActions=[],
    )

    calls = _record_calls(kit.clients)

    again = _again(ctx)

    # Real AWS replaces a filter put under the same name; moto keeps both.
    filters = kit.clients.logs.describe_metric_filters(logGroupName=GROUP)
    patterns = [f["filterPattern"] for f in filters["metricFilters"]]
    assert patterns[-1] == monitored.IAM_POLICY_PATTERN
    assert calls.count("PutMetricFilter") == 1
    (alarm,) = kit.clients.cloudwatch.describe_alarms(AlarmNames=[ALARM])[
        "MetricAlarms"
    ]
    assert alarm["AlarmActions"] == [detail["topic_arn"]]
    assert {f"metric filter {ALARM} written", f"alarm {ALARM} written"} <= set(
        again["actions"]
    )


def test_an_alarm_email_is_subscribed_once(kit: StepKit) -> None:
    ctx = kit.context(
        ALICE, monitoring={"trail_name": TRAIL, "alarm_email": "sec@example.com"}
    )
    detail = monitored.run(ctx)
    _again(ctx)

    subscriptions = kit.clients.sns.list_subscriptions_by_topic(
        TopicArn=detail["topic_arn"]
    )["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [
        ("email", "sec@example.com")
    ]


# --- idempotence, concurrency, targets ----------------------------------------


def test_a_second_run_changes_nothing(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    monitored.run(ctx)
    calls = _record_calls(kit.clients)

    detail = _again(ctx)

    assert detail["actions"] == ["none needed"]
    changing = [
        c for c in calls if c.split()[0].startswith(("Create", "Put", "Update"))
    ]
    assert changing == []


def test_later_onboardings_in_a_run_find_it_done(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    first = monitored.run(ctx)

    later = monitored.run(ctx)

    assert later["action"] == "verified earlier in this run"
    assert later["trail_arn"] == first["trail_arn"] and "actions" not in later


def test_concurrent_workers_set_the_account_up_once(kit: StepKit) -> None:
    ctx = kit.context(ALICE)
    calls = _record_calls(kit.clients)
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(monitored.run(ctx)))
        for _ in range(4)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert calls.count("CreateTrail") == 1 and calls.count("CreateKey") == 1
    assert sum(r.get("action") == "verified earlier in this run" for r in results) == 3


def test_the_step_works_against_a_moto_server_over_http(tmp_path: Path) -> None:
    with moto_server_running() as url:
        session = boto3.Session(region_name="us-east-1")
        clients = build_clients(session, AwsConfig(endpoint_url=url))
        kit = StepKit(tmp_path, clients)
        ctx = kit.context(ALICE)

        monitored.run(ctx)
        detail = _again(ctx)

        assert detail["actions"] == ["none needed"]
        trail = _trail(clients)
        assert trail["KmsKeyId"] == _key_arn(clients)
        assert clients.cloudtrail.get_trail_status(Name=TRAIL)["IsLogging"]


def test_the_sandbox_keeps_the_new_services_between_runs(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.pickle"
    first = _sandbox_run(tmp_path, state)

    second = _sandbox_run(tmp_path, state)

    assert first["actions"] != ["none needed"]
    assert second["actions"] == ["none needed"]
    assert second["kms_key_arn"] == first["kms_key_arn"]


def _sandbox_run(folder: Path, state: Path) -> dict[str, Any]:
    sandbox = Sandbox(state, "us-east-1")
    sandbox.start()
    try:
        session = boto3.Session(
            aws_access_key_id="sandbox",
            aws_secret_access_key="sandbox",
            region_name="us-east-1",
        )
        clients = build_clients(session, AwsConfig(), endpoint=False)
        kit = StepKit(folder, clients)
        kit.account = AccountFacts(account_id=DEFAULT_ACCOUNT_ID, region="us-east-1")
        return monitored.run(kit.context(ALICE))
    finally:
        sandbox.stop()


# --- configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitoring", "message"),
    [
        (
            {"kms_key_alias": "alias/aws/cloudtrail"},
            "monitoring.kms_key_alias: alias/aws/",
        ),
        ({"kms_key_alias": "trail-key"}, "monitoring.kms_key_alias: a KMS alias"),
        (
            {"bucket": "trail-logs", "access_log_bucket": "trail-logs"},
            "monitoring.access_log_bucket: must differ",
        ),
        ({"alarm_email": "not-an-address"}, "monitoring.alarm_email: an email"),
        ({"log_group": "bad group"}, "monitoring.log_group: 1-512"),
    ],
)
def test_bad_monitoring_keys_are_refused_with_file_line_and_field(
    tmp_path: Path, monitoring: dict[str, Any], message: str
) -> None:
    path = write_workflows(tmp_path, monitoring=monitoring)

    with pytest.raises(ConfigError) as caught:
        load_file(path)

    assert f"{path}:" in str(caught.value) and message in str(caught.value)
