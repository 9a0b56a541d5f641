"""Bronze's settings: the `bronze` section of the mesh's configuration."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BronzeSettings(BaseModel):
    """The Bronze bridge to a SageMaker asynchronous endpoint, and (locally) the
    AWS stand-ins it talks to: moto for S3/SNS/SQS/SageMaker control plane, the
    project's async-endpoint emulator, and the inference container."""

    listen: str = "127.0.0.1:50071"
    region: str = "us-east-1"
    endpoint_name: str = "tiermesh-bronze"
    bucket: str = "tiermesh-bronze"
    # SNS topics the endpoint config notifies; SQS queues subscribed to them.
    success_topic: str = "tiermesh-bronze-success"
    error_topic: str = "tiermesh-bronze-error"
    success_queue: str = "tiermesh-bronze-success"
    error_queue: str = "tiermesh-bronze-error"
    # Learn outcomes from notifications; polling S3 finishes jobs either way.
    notifications: bool = True
    poll_initial_s: float = Field(default=0.5, gt=0)
    poll_max_s: float = Field(default=10.0, gt=0)
    # SageMaker async accepts payloads up to 1 GB; jobs are text: keep them small.
    max_payload_bytes: int = Field(default=256 * 1024, gt=0)
    invocation_timeout_s: int = Field(default=900, ge=1, le=3600)
    # Per-service endpoint URLs (boto3); empty: AWS itself.
    s3_url: str = ""
    sns_url: str = ""
    sqs_url: str = ""
    sagemaker_url: str = ""
    runtime_url: str = ""
    # Local stand-ins started by `tiermesh up` when set (0: not started).
    moto_port: int = Field(default=0, ge=0, le=65535)
    emulator_port: int = Field(default=0, ge=0, le=65535)
    container_port: int = Field(default=0, ge=0, le=65535)
    # Create the bucket, topics, queues and the endpoint when missing (local only).
    provision: bool = False
    # Prometheus /metrics of the bridge (jobs by state, backlog age); 0 turns it off.
    metrics_port: int = Field(default=9466, ge=0, le=65535)
