"""A SageMaker asynchronous endpoint, locally: the `sagemaker-runtime`
InvokeEndpointAsync HTTP API, behaving the way SageMaker does.

moto serves S3, SNS, SQS and the SageMaker control plane, but its
InvokeEndpointAsync only returns canned data. This emulator is the data plane:

- accepts at once (202) with `InferenceId` and the output/failure locations;
- refuses endpoints that do not exist or are not InService (ValidationError);
- queues the request; a worker reads the input from S3, POSTs it to the inference
  container's `/invocations`, writes the answer under the endpoint config's
  S3OutputPath (or the error under S3FailurePath), and publishes SageMaker's
  notification to the config's success (or error) SNS topic.

    python -m services.bronze.emulator --config config/mesh.yaml

It is a test double for AWS, used for the local mesh and tests only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from services.bronze.aws import client, parse_s3
from services.bronze.settings import BronzeSettings
from tiermesh.config import load_section
from tiermesh.logs import setup_logging

log = logging.getLogger("tiermesh.bronze.emulator")


@dataclass
class Invocation:
    endpoint: str
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str
    success_topic: str
    error_topic: str
    timeout_s: float
    received: str


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def error(status: int, kind: str, message: str) -> web.Response:
    # rest-json errors as botocore parses them.
    return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": kind})


class Emulator:
    def __init__(self, settings: BronzeSettings, container_url: str, workers: int = 4) -> None:
        self._settings = settings
        self._container_url = container_url
        self._queue: asyncio.Queue[Invocation] = asyncio.Queue()
        self._workers = workers
        self._s3 = client(settings, "s3")
        self._sns = client(settings, "sns")
        self._sm = client(settings, "sagemaker")

    async def invoke_async(self, request: web.Request) -> web.Response:
        name = request.match_info["endpoint"]
        input_location = request.headers.get("X-Amzn-SageMaker-InputLocation", "")
        if not input_location.startswith("s3://"):
            return error(400, "ValidationError", "InputLocation must be an s3:// URI")
        try:
            endpoint = await asyncio.to_thread(self._sm.describe_endpoint, EndpointName=name)
            config = await asyncio.to_thread(
                self._sm.describe_endpoint_config, EndpointConfigName=endpoint["EndpointConfigName"]
            )
        except Exception:
            return error(400, "ValidationError", f"Endpoint {name} not found.")
        if endpoint["EndpointStatus"] != "InService":
            return error(
                400, "ValidationError", f"Endpoint {name} is {endpoint['EndpointStatus']}, not InService."
            )
        async_config = config.get("AsyncInferenceConfig")
        if not async_config:
            return error(400, "ValidationError", f"Endpoint {name} is not an asynchronous endpoint.")
        output = async_config["OutputConfig"]
        inference_id = request.headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        result_id = str(uuid.uuid4())
        failures = output.get("S3FailurePath", output["S3OutputPath"]).rstrip("/")
        topics = output.get("NotificationConfig", {})
        invocation = Invocation(
            endpoint=name,
            inference_id=inference_id,
            input_location=input_location,
            output_location=f"{output['S3OutputPath'].rstrip('/')}/{result_id}.out",
            failure_location=f"{failures}/{result_id}-error.out",
            success_topic=topics.get("SuccessTopic", ""),
            error_topic=topics.get("ErrorTopic", ""),
            timeout_s=float(request.headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds", 900)),
            received=now(),
        )
        self._queue.put_nowait(invocation)
        return web.json_response(
            {"InferenceId": inference_id},
            status=202,
            headers={
                "X-Amzn-SageMaker-OutputLocation": invocation.output_location,
                "X-Amzn-SageMaker-FailureLocation": invocation.failure_location,
            },
        )

    async def ping(self, request: web.Request) -> web.Response:
        """Liveness, for whoever starts the emulator (not part of SageMaker's API)."""
        return web.json_response({"status": "healthy"})

    async def work(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                invocation = await self._queue.get()
                try:
                    await self._run(session, invocation)
                except Exception:
                    log.exception("invocation %s could not be completed", invocation.inference_id)

    async def _run(self, session: aiohttp.ClientSession, inv: Invocation) -> None:
        bucket, key = parse_s3(inv.input_location)
        try:
            body = await asyncio.to_thread(lambda: self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            timeout = aiohttp.ClientTimeout(total=inv.timeout_s)
            async with session.post(
                f"{self._container_url}/invocations", data=body, timeout=timeout
            ) as response:
                answer = await response.read()
                failure = (
                    None
                    if response.status == 200
                    else f"container answered {response.status}: {answer.decode()}"
                )
        except TimeoutError:
            failure, answer = f"invocation timed out after {inv.timeout_s:.0f} s", b""
        except aiohttp.ClientError as e:
            failure, answer = f"container unreachable: {e}", b""
        location = inv.failure_location if failure else inv.output_location
        out_bucket, out_key = parse_s3(location)
        content = failure.encode() if failure else answer
        await asyncio.to_thread(self._s3.put_object, Bucket=out_bucket, Key=out_key, Body=content)
        topic = inv.error_topic if failure else inv.success_topic
        if topic:
            await asyncio.to_thread(
                self._sns.publish, TopicArn=topic, Message=json.dumps(self._notice(inv, failure))
            )

    def _notice(self, inv: Invocation, failure: str | None) -> dict[str, Any]:
        """SageMaker's async inference notification."""
        response: dict[str, Any] = {"contentType": "application/json"}
        if failure:
            response["failureLocation"] = inv.failure_location
        else:
            response["outputLocation"] = inv.output_location
        notice = {
            "awsRegion": self._settings.region,
            "eventTime": now(),
            "receivedTime": inv.received,
            "invocationStatus": "Failed" if failure else "Completed",
            "requestParameters": {
                "contentType": "application/json",
                "endpointName": inv.endpoint,
                "inputLocation": inv.input_location,
            },
            "responseParameters": response,
            "inferenceId": inv.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if failure:
            notice["failureReason"] = failure
        return notice

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/endpoints/{endpoint}/async-invocations", self.invoke_async)
        app.router.add_get("/ping", self.ping)

        async def start_workers(app: web.Application) -> Any:
            tasks = [asyncio.create_task(self.work()) for _ in range(self._workers)]
            yield
            for task in tasks:
                task.cancel()

        app.cleanup_ctx.append(start_workers)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", "-c", default=None)
    args = parser.parse_args()
    setup_logging()
    settings = load_section(BronzeSettings, "bronze", path=args.config)
    emulator = Emulator(settings, f"http://127.0.0.1:{settings.container_port}")
    web.run_app(emulator.app(), host="127.0.0.1", port=settings.emulator_port, print=None)


if __name__ == "__main__":
    main()
