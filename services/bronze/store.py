"""Durable job records in S3.

S3 is the store because the job's inputs and outputs live there already: one
dependency, no second system to keep consistent, and records survive any bridge
restart. Layout under the bucket:

    jobs/<job_id>.json          the record (state, request, result locations)
    inputs/<job_id>.json        the payload handed to the endpoint
    idempotency/<key>           the job id first submitted under a client key
    results/<content_key>.json  finished text, for the router's result cache

Blocking boto3 calls: callers run them in a thread.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


@dataclass
class JobRecord:
    job_id: str
    state: str  # QUEUED | RUNNING | SUCCEEDED | FAILED | CANCELLED
    request: dict[str, Any]  # the public GenerateRequest, as JSON
    payload: dict[str, Any]  # what the container gets
    content_key: str
    created_at: float
    updated_at: float
    output_location: str = ""
    failure_location: str = ""
    text: str = ""
    error: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class JobStore:
    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def _get_json(self, key: str) -> Any:
        try:
            return json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
        except ClientError as e:
            if _missing(e):
                return None
            raise

    def put(self, record: JobRecord) -> None:
        self._s3.put_object(
            Bucket=self._bucket, Key=f"jobs/{record.job_id}.json", Body=json.dumps(asdict(record))
        )

    def get(self, job_id: str) -> JobRecord | None:
        data = self._get_json(f"jobs/{job_id}.json")
        return JobRecord(**data) if data else None

    def unfinished(self) -> list[JobRecord]:
        records = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix="jobs/"):
            for item in page.get("Contents", []):
                record = self.get(item["Key"].removeprefix("jobs/").removesuffix(".json"))
                if record is not None and not record.finished:
                    records.append(record)
        return records

    def put_input(self, job_id: str, payload: dict[str, Any]) -> str:
        key = f"inputs/{job_id}.json"
        self._s3.put_object(
            Bucket=self._bucket, Key=key, Body=json.dumps(payload), ContentType="application/json"
        )
        return f"s3://{self._bucket}/{key}"

    def claim(self, idempotency_key: str, job_id: str) -> str:
        """The job id that owns `idempotency_key`: ours, unless another got there first.
        A conditional put (If-None-Match) makes the first writer win."""
        key = f"idempotency/{idempotency_key}"
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=job_id.encode(), IfNoneMatch="*")
            return job_id
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
        return str(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read().decode())

    def owner(self, idempotency_key: str) -> str | None:
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=f"idempotency/{idempotency_key}")["Body"]
            return str(body.read().decode())
        except ClientError as e:
            if _missing(e):
                return None
            raise

    def read(self, uri: str) -> bytes | None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            return bytes(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as e:
            if _missing(e):
                return None
            raise

    def put_result(self, content_key: str, text: str, usage: dict[str, int]) -> None:
        body = json.dumps({"text": text, "usage": usage})
        self._s3.put_object(Bucket=self._bucket, Key=f"results/{content_key}.json", Body=body)

    def get_result(self, content_key: str) -> dict[str, Any] | None:
        data = self._get_json(f"results/{content_key}.json")
        return dict(data) if data else None
