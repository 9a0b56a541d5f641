"""boto3 clients for the bridge, local provisioning, and endpoint status checks.

The bridge's code is the same against AWS and against the local stand-ins: only the
per-service endpoint URLs differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from services.bronze.settings import BronzeSettings

# Local stand-ins accept any credentials; on AWS the usual chain (IRSA) applies.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client(settings: BronzeSettings, service: str) -> Any:
    url = {
        "s3": settings.s3_url,
        "sns": settings.sns_url,
        "sqs": settings.sqs_url,
        "sagemaker": settings.sagemaker_url,
        "sagemaker-runtime": settings.runtime_url,
    }[service]
    extra = {"endpoint_url": url, **_LOCAL_CREDENTIALS} if url else {}
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10)
    return boto3.client(service, region_name=settings.region, config=config, **extra)


def parse_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def provision(settings: BronzeSettings) -> None:
    """Create what the endpoint needs, where missing (the local mesh; on AWS this is
    infrastructure-as-code's job). Idempotent."""
    s3, sns, sqs, sm = (client(settings, s) for s in ("s3", "sns", "sqs", "sagemaker"))
    s3.create_bucket(Bucket=settings.bucket)
    topics = {}
    for topic, queue in ((settings.success_topic, settings.success_queue),
                         (settings.error_topic, settings.error_queue)):  # fmt: skip
        topics[topic] = sns.create_topic(Name=topic)["TopicArn"]
        queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(
            TopicArn=topics[topic],
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
    if settings.endpoint_name in {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}:
        return
    sm.create_model(
        ModelName=settings.endpoint_name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/tiermesh-bronze",
        PrimaryContainer={"Image": "tiermesh/bronze-container:local"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=settings.endpoint_name,
        ProductionVariants=[
            {
                "VariantName": "main",
                "ModelName": settings.endpoint_name,
                "InstanceType": "ml.g4dn.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        AsyncInferenceConfig={
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
            "OutputConfig": {
                "S3OutputPath": f"s3://{settings.bucket}/outputs",
                "S3FailurePath": f"s3://{settings.bucket}/failures",
                "NotificationConfig": {
                    "SuccessTopic": topics[settings.success_topic],
                    "ErrorTopic": topics[settings.error_topic],
                },
            },
        },
    )
    sm.create_endpoint(EndpointName=settings.endpoint_name, EndpointConfigName=settings.endpoint_name)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class EndpointStatus:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        return "; ".join(f"{c.name}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in self.checks)


def endpoint_status(settings: BronzeSettings) -> EndpointStatus:
    """The seed's Bronze validation: endpoint InService, an async config with output
    path and notification topics, S3 reachable."""
    status = EndpointStatus()
    sm, s3 = client(settings, "sagemaker"), client(settings, "s3")
    try:
        endpoint = sm.describe_endpoint(EndpointName=settings.endpoint_name)
        state = endpoint["EndpointStatus"]
        status.checks.append(Check("endpoint in service", state == "InService", state))
        config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        async_config = config.get("AsyncInferenceConfig")
        status.checks.append(
            Check("async inference config", async_config is not None, "AsyncInferenceConfig")
        )
        output = (async_config or {}).get("OutputConfig", {})
        status.checks.append(
            Check("output path", bool(output.get("S3OutputPath")), str(output.get("S3OutputPath")))
        )
        topics = output.get("NotificationConfig", {})
        status.checks.append(
            Check("notification topics", bool(topics.get("SuccessTopic") and topics.get("ErrorTopic")),
                  json.dumps(topics))
        )  # fmt: skip
    except Exception as e:  # any failure to describe is the finding itself
        status.checks.append(Check("endpoint", False, f"{type(e).__name__}: {e}"))
    try:
        s3.head_bucket(Bucket=settings.bucket)
        status.checks.append(Check("s3 bucket", True, settings.bucket))
    except Exception as e:
        status.checks.append(Check("s3 bucket", False, f"{type(e).__name__}: {e}"))
    return status
