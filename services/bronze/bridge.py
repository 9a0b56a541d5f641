"""The Bronze bridge: durable jobs on a SageMaker asynchronous endpoint.

submit: record the job in S3 (QUEUED), upload its payload, InvokeEndpointAsync
(RUNNING); then learn the outcome from the SNS→SQS notification, or by polling the
output/failure locations with backoff (a lost notification only delays the job).
A restarted bridge resumes every unfinished record it finds in S3. Finished text is
also stored under the request's content key for the router's result cache.

Serves tiermesh.tier.v1.Jobs (what the router forwards the public job calls to)
and TierService.Generate (submit and wait, for long-form calls routed to Bronze).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf import json_format
from prometheus_client import Counter, Gauge, Histogram

from services.bronze.aws import client, provision
from services.bronze.settings import BronzeSettings
from services.bronze.store import TERMINAL, JobRecord, JobStore
from tiermesh.chat import from_tier
from tiermesh.errors import StatusError
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2

log = logging.getLogger("tiermesh.bronze")
JOBS = Counter("tiermesh_bronze_jobs", "Jobs entering each state", ["state"])
JOB_SECONDS = Histogram(
    "tiermesh_bronze_job_duration_seconds",
    "From submission to the end state (its sum is the endpoint's busy time for cost)",
    ["state"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
BACKLOG = Gauge("tiermesh_bronze_backlog_jobs", "Jobs submitted and not finished (QUEUED or RUNNING)")
OLDEST = Gauge(
    "tiermesh_bronze_oldest_unfinished_job_age_seconds", "Age of the oldest unfinished job (0: none)"
)
STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
# SageMaker answers these when it is busy: try again later, the job stays QUEUED.
RETRYABLE = frozenset(
    {"ThrottlingException", "ServiceUnavailable", "InternalFailure", "ModelNotReadyException"}
)


def to_job(record: JobRecord) -> mesh_pb2.Job:
    job = mesh_pb2.Job(
        job_id=record.job_id,
        state=mesh_pb2.JobState.Value(f"JOB_STATE_{record.state}"),
        request=json_format.ParseDict(record.request, mesh_pb2.GenerateRequest()),
        text=record.text,
        error=record.error,
    )
    job.created_at.FromNanoseconds(int(record.created_at * 1e9))
    job.updated_at.FromNanoseconds(int(record.updated_at * 1e9))
    job.usage.prompt_tokens = record.usage.get("prompt_tokens", 0)
    job.usage.completion_tokens = record.usage.get("completion_tokens", 0)
    return job


class Bridge:
    def __init__(self, settings: BronzeSettings) -> None:
        self._settings = settings
        self._store = JobStore(client(settings, "s3"), settings.bucket)
        self._runtime = client(settings, "sagemaker-runtime")
        self._sqs = client(settings, "sqs")
        self._records: dict[str, JobRecord] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------

    def backlog(self) -> list[JobRecord]:
        return [record for record in self._records.values() if not record.finished]

    def export_metrics(self) -> None:
        """Backlog gauges read at scrape time; every state's counter from zero."""
        BACKLOG.set_function(lambda: len(self.backlog()))
        OLDEST.set_function(lambda: max((time.time() - r.created_at for r in self.backlog()), default=0.0))
        for state in STATES:
            JOBS.labels(state)
            if state in TERMINAL:
                JOB_SECONDS.labels(state)

    async def start(self) -> None:
        if self._settings.provision:
            await asyncio.to_thread(provision, self._settings)
        for record in await asyncio.to_thread(self._store.unfinished):
            log.info("resuming job %s (%s)", record.job_id, record.state)
            self._records[record.job_id] = record
            self._spawn(self._drive(record.job_id))
        if self._settings.notifications:
            for queue in (self._settings.success_queue, self._settings.error_queue):
                self._spawn(self._consume(queue))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the job API -------------------------------------------------------------

    async def submit(self, request: tier_pb2.SubmitJobRequest) -> JobRecord:
        submit = request.submit
        payload = {
            "messages": [{"role": m.role, "content": m.content} for m in from_tier(request.messages)],
            "max_tokens": request.max_tokens,
        }
        if submit.request.sampling.HasField("temperature"):
            payload["temperature"] = submit.request.sampling.temperature
        if submit.request.sampling.HasField("seed"):
            payload["seed"] = submit.request.sampling.seed
        size = len(json.dumps(payload).encode())
        if size > self._settings.max_payload_bytes:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job payload is {size} bytes; the limit is {self._settings.max_payload_bytes}",
            )
        key = submit.idempotency_key
        if key and (owner := await self._s3(self._store.owner, key)):
            return await self.get(owner)
        now = time.time()
        record = JobRecord(
            job_id=uuid.uuid4().hex,
            state="QUEUED",
            request=json_format.MessageToDict(submit.request),
            payload=payload,
            content_key=request.content_key,
            created_at=now,
            updated_at=now,
        )
        await self._s3(self._store.put_input, record.job_id, payload)
        await self._s3(self._store.put, record)  # from here on, the job is never lost
        JOBS.labels("QUEUED").inc()
        if key and (owner := await self._s3(self._store.claim, key, record.job_id)) != record.job_id:
            await self._update(record, state="CANCELLED", error=f"duplicate of {owner}")
            return await self.get(owner)
        self._records[record.job_id] = record
        await self._invoke(record.job_id)
        if not self._records[record.job_id].finished:
            self._spawn(self._drive(record.job_id))
        return self._records[record.job_id]

    async def get(self, job_id: str) -> JobRecord:
        record = self._records.get(job_id) or await self._s3(self._store.get, job_id)
        if record is None:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        return record

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        record = await self.get(job_id)
        yield record
        while not record.finished:
            event = self._changed.setdefault(job_id, asyncio.Event())
            await event.wait()
            record = await self.get(job_id)
            yield record

    async def cancel(self, job_id: str) -> JobRecord:
        record = await self.get(job_id)
        if record.finished:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f"job {job_id} already {record.state.lower()}"
            )
        # SageMaker async has no cancel: the endpoint may still run it; its result is
        # then ignored and not cached.
        return await self._update(record, state="CANCELLED", error="cancelled by the client")

    async def lookup(self, content_key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._s3(self._store.get_result, content_key)
        return found

    # --- driving a job to its end ------------------------------------------------

    async def _invoke(self, job_id: str) -> None:
        record = self._records[job_id]
        try:
            response = await asyncio.to_thread(
                self._runtime.invoke_endpoint_async,
                EndpointName=self._settings.endpoint_name,
                InputLocation=f"s3://{self._settings.bucket}/inputs/{job_id}.json",
                InferenceId=job_id,
                ContentType="application/json",
                InvocationTimeoutSeconds=self._settings.invocation_timeout_s,
            )
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in RETRYABLE:
                log.warning("endpoint busy for job %s (%s); will retry", job_id, code)
                return  # stays QUEUED; _drive retries
            await self._update(record, state="FAILED", error=f"endpoint refused the job: {code}: {e}")
            return
        except BotoCoreError as e:
            log.warning("endpoint unreachable for job %s: %s; will retry", job_id, e)
            return
        await self._update(
            record,
            state="RUNNING",
            output_location=response["OutputLocation"],
            failure_location=response.get("FailureLocation", ""),
        )

    async def _drive(self, job_id: str) -> None:
        """Until the job is finished: (re)invoke while QUEUED, poll while RUNNING."""
        delay = self._settings.poll_initial_s
        while not (record := self._records[job_id]).finished:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.poll_max_s)
            try:
                if record.state == "QUEUED":
                    await self._invoke(job_id)
                elif record.state == "RUNNING":
                    await self._check(job_id)
            except StatusError as e:  # S3 unreachable: the record is safe, try again later
                log.warning("job %s: %s; retrying", job_id, e.message)

    async def _check(self, job_id: str) -> None:
        record = self._records[job_id]
        output = await self._s3(self._store.read, record.output_location)
        if output is not None:
            await self._succeed(record, output)
            return
        if record.failure_location:
            failure = await self._s3(self._store.read, record.failure_location)
            if failure is not None:
                await self._update(record, state="FAILED", error=failure.decode(errors="replace"))

    async def _succeed(self, record: JobRecord, output: bytes) -> None:
        if record.finished:
            return
        try:
            answer = json.loads(output)
            text, usage = str(answer["text"]), dict(answer.get("usage", {}))
        except (ValueError, KeyError, TypeError) as e:
            await self._update(record, state="FAILED", error=f"unreadable endpoint output: {e}")
            return
        if record.content_key:
            await self._s3(self._store.put_result, record.content_key, text, usage)
        await self._update(record, state="SUCCEEDED", text=text, usage=usage)

    async def _consume(self, queue: str) -> None:
        """SNS→SQS notifications: finish the job they name at once."""
        url = (await asyncio.to_thread(self._sqs.get_queue_url, QueueName=queue))["QueueUrl"]
        while True:
            try:
                reply = await asyncio.to_thread(
                    self._sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                )
            except (ClientError, BotoCoreError) as e:
                log.warning("notifications from %s unavailable: %s", queue, e)
                await asyncio.sleep(self._settings.poll_max_s)
                continue
            for message in reply.get("Messages", []):
                await self._notified(message["Body"])
                await asyncio.to_thread(
                    self._sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
                )

    async def _notified(self, body: str) -> None:
        notice = json.loads(body)
        if "Message" in notice and notice.get("Type") == "Notification":  # SNS envelope
            notice = json.loads(notice["Message"])
        job_id = notice.get("inferenceId", "")
        record = self._records.get(job_id) or await self._s3(self._store.get, job_id)
        if record is None or record.finished:
            return
        self._records[job_id] = record
        response = notice.get("responseParameters", {})
        if notice.get("invocationStatus") == "Completed" and (location := response.get("outputLocation")):
            output = await self._s3(self._store.read, location)
            if output is not None:
                await self._succeed(record, output)
        elif notice.get("invocationStatus") == "Failed":
            await self._update(record, state="FAILED", error=notice.get("failureReason", "inference failed"))

    async def _update(self, record: JobRecord, **changes: Any) -> JobRecord:
        updated = replace(record, **changes, updated_at=time.time())
        await self._s3(self._store.put, updated)
        self._records[record.job_id] = updated
        if updated.state != record.state:
            JOBS.labels(updated.state).inc()
            if updated.finished:
                JOB_SECONDS.labels(updated.state).observe(updated.updated_at - updated.created_at)
        event = self._changed.pop(record.job_id, None)
        if event is not None:
            event.set()
        return updated

    @staticmethod
    async def _s3(function: Any, *args: Any) -> Any:
        """A store call off the event loop; S3 trouble is UNAVAILABLE to callers."""
        try:
            return await asyncio.to_thread(function, *args)
        except (ClientError, BotoCoreError) as e:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE, f"bronze job store (S3) unavailable: {e}"
            ) from None
