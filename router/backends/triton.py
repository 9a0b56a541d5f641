"""Adapter for Gold: Triton Inference Server hosting TensorRT-LLM's `ensemble`, and
beside it, when configured, an intent encoder.

Speaks exactly the ensemble's text signature over Triton's gRPC streaming API
(decoupled model): `text_input`, `max_tokens`, `stream`, sampling inputs, and
TensorRT-LLM's guided decoding inputs for intents → `text_output` deltas. The
ensemble takes a finished prompt, so the chat template (ChatML) is applied here.
With `intent_encoder` set, intents are labelled by that model instead (`text` →
`embedding`, intent_encoder.py): a small encoder answers them better and faster than the
LLM's guided decoding.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from router.backends import attempt_span, tier_failed
from router.backends.intent_encoder import IntentLabeller
from router.call import Call
from tiermesh import tracing
from tiermesh.chat import chatml
from tiermesh.errors import StatusError
from tiermesh.tls import TlsSettings, channel_options, read_pem
from tiermesh.v1 import mesh_pb2


def tensor(name: str, value: Any, datatype: str) -> InferInput:
    """One [1, 1] input: batch of one request, one element (TensorRT-LLM's shapes)."""
    dtype = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64,
             "BOOL": np.bool_}[datatype]  # fmt: skip
    data: np.ndarray[Any, Any] = np.array([[value]], dtype=dtype)
    item = InferInput(name, list(data.shape), datatype)
    item.set_data_from_numpy(data)
    return item


def ensemble_inputs(call: Call) -> list[InferInput]:
    s = call.sampling
    inputs = [
        tensor("text_input", chatml(call.messages).encode(), "BYTES"),
        tensor("max_tokens", call.max_tokens, "INT32"),
        tensor("stream", True, "BOOL"),
    ]
    if s.HasField("temperature"):
        inputs.append(tensor("temperature", s.temperature, "FP32"))
    if s.HasField("top_p"):
        inputs.append(tensor("top_p", s.top_p, "FP32"))
    if s.top_k:
        inputs.append(tensor("top_k", s.top_k, "INT32"))
    if s.HasField("seed"):
        inputs.append(tensor("random_seed", s.seed, "UINT64"))
    if call.intents:
        # TensorRT-LLM guided decoding (xgrammar): the answer matches one label.
        guide = "(" + "|".join(re.escape(intent) for intent in call.intents) + ")"
        inputs.append(tensor("guided_decoding_guide_type", b"regex", "BYTES"))
        inputs.append(tensor("guided_decoding_guide", guide.encode(), "BYTES"))
    return inputs


def give_up_times(call: Call) -> dict[str, int]:
    """When the router stops waiting, as request parameters (Unix ms): for the first
    response (`tiermesh_start_by_ms`) and for the last (`tiermesh_end_by_ms`). Triton in
    production cancels a TensorRT-LLM request when the router cancels its stream; the
    local Gold (PyTriton) sees no cancellation, and uses these to drop work nobody waits
    for. Other backends ignore them."""
    to_unix = time.time() - time.monotonic()
    end_by = call.deadline
    start_by = end_by if call.first_token_by is None else min(end_by, call.first_token_by)
    return {
        "tiermesh_start_by_ms": int((start_by + to_unix) * 1000),
        "tiermesh_end_by_ms": int((end_by + to_unix) * 1000),
    }


def triton_client(address: str, tls: TlsSettings | None) -> InferenceServerClient:
    """Triton's gRPC client, over mutual TLS when the mesh has it."""
    if tls is None or not tls.enabled:
        return InferenceServerClient(address)
    return InferenceServerClient(
        address,
        ssl=True,
        root_certificates=read_pem(tls.ca),
        private_key=read_pem(tls.key),
        certificate_chain=read_pem(tls.cert),
        channel_args=channel_options(tls),
    )


log = logging.getLogger(__name__)
# Texts per encoder request: the intent_encoder's max_batch_size.
ENCODER_BATCH = 64
# Encoding every persona's intent guides when a replica comes up.
WARM_TIMEOUT_S = 30.0


class TritonTier:
    """One Triton replica over one gRPC channel."""

    def __init__(
        self,
        name: str,
        address: str,
        model: str,
        health_retry_s: float = 1.0,
        tls: TlsSettings | None = None,
        labeller: IntentLabeller | None = None,
        encoder: str = "",
    ) -> None:
        self.name = name
        self.address = address
        self._model = model
        self._health_retry_s = health_retry_s
        self._client = triton_client(address, tls)
        self._outputs = [InferRequestedOutput("text_output"), InferRequestedOutput("prompt_tokens")]
        self._labeller = labeller if encoder else None
        self._encoder = encoder

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        remaining = call.remaining()
        if remaining <= 0:
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the Gold call")
        if call.intents and self._labeller is not None:
            yield await self._intent(call, self._labeller)
            return

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": self._model,
                "inputs": ensemble_inputs(call),
                "outputs": self._outputs,
                "request_id": call.request_id,
                "parameters": give_up_times(call),
            }

        span = attempt_span(self.name, self.address, call)
        responses = self._client.stream_infer(
            one_request(), stream_timeout=remaining, headers=tracing.inject_headers(span)
        )
        call.tier_calls.add(responses.cancel)
        sent = prompt_tokens = 0
        try:
            async for result, error in responses:
                if error is not None:
                    raise self._status(str(error), sent)
                # The ensemble sends the prompt's token count in a response of its own (its
                # preprocessing step's); the local Gold with every piece.
                count = result.as_numpy("prompt_tokens")
                if count is not None:
                    prompt_tokens = int(count.reshape(-1)[0]) or prompt_tokens
                output = result.as_numpy("text_output")
                if output is None:
                    continue
                text = output.reshape(-1)[0]
                sent += 1
                yield mesh_pb2.GenerateResponse(
                    text=text.decode() if isinstance(text, bytes) else str(text), tier=mesh_pb2.TIER_GOLD
                )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise StatusError(e.code(), "deadline exceeded waiting for Gold") from None
            raise self._status(f"{e.code().name}: {e.details()}", sent) from None
        except InferenceServerException as e:
            raise self._status(str(e), sent) from None
        finally:
            call.tier_calls.discard(responses.cancel)
            responses.cancel()  # no-op when finished; otherwise Triton cancels the request
            span.set_attribute("messages", sent)
            span.end()
        # TensorRT-LLM marks no last delta: the finish reason follows as an empty message.
        final = mesh_pb2.GenerateResponse(tier=mesh_pb2.TIER_GOLD)
        final.finish_reason = (
            mesh_pb2.FINISH_REASON_LENGTH if sent >= call.max_tokens else mesh_pb2.FINISH_REASON_STOP
        )
        final.usage.completion_tokens = sent  # one token per streamed response
        final.usage.prompt_tokens = prompt_tokens
        yield final

    async def _encode(
        self, texts: Sequence[str], within_s: float, headers: Mapping[str, str] | None = None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Embeddings from the intent encoder, one row per text, within `within_s`."""
        parts = []
        for start in range(0, len(texts), ENCODER_BATCH):
            chunk = texts[start : start + ENCODER_BATCH]
            batch = np.array([[t.encode()] for t in chunk], dtype=np.object_)
            item = InferInput("text", list(batch.shape), "BYTES")
            item.set_data_from_numpy(batch)
            result = await self._client.infer(
                self._encoder,
                [item],
                outputs=[InferRequestedOutput("embedding")],
                client_timeout=max(within_s, 0.001),
                headers=dict(headers or {}),
            )
            parts.append(result.as_numpy("embedding"))
        return np.asarray(np.concatenate(parts), dtype=np.float32)

    async def _intent(self, call: Call, labeller: IntentLabeller) -> mesh_pb2.GenerateResponse:
        span = attempt_span(self.name, self.address, call)
        headers = tracing.inject_headers(span)
        try:
            label, score = await labeller.label(
                call, lambda texts: self._encode(texts, call.remaining(), headers)
            )
        except InferenceServerException as e:
            if "Deadline" in str(e):
                raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded at Gold") from None
            raise self._status(str(e), 0) from None
        finally:
            span.end()
        answer = mesh_pb2.GenerateResponse(
            text=label, tier=mesh_pb2.TIER_GOLD, finish_reason=mesh_pb2.FINISH_REASON_STOP, score=score
        )
        answer.usage.completion_tokens = 1
        return answer

    def _status(self, detail: str, sent: int) -> StatusError:
        return tier_failed(self.name, self.address, sent, detail)

    async def warm(self) -> None:
        """Builds every persona's intent prototypes (nothing without an encoder)."""
        if self._labeller is not None:
            await self._labeller.warm(lambda texts: self._encode(texts, WARM_TIMEOUT_S))

    async def health(self) -> AsyncIterator[bool]:
        """Triton has no grpc.health.v1: poll server and model readiness instead. The
        first time the replica is ready, the personas' intent prototypes are built, so no
        caller pays for them."""
        warmed = False
        while True:
            try:
                ready = await self._client.is_server_ready() and await self._client.is_model_ready(
                    self._model
                )
            except (InferenceServerException, grpc.aio.AioRpcError):
                ready = False
            if ready and not warmed:
                try:
                    await self.warm()
                    warmed = True
                except (InferenceServerException, grpc.aio.AioRpcError) as e:
                    # Barks still work; intents build their prototypes on first use.
                    log.warning("%s at %s: intent encoder %r not ready: %s", self.name, self.address,
                                self._encoder, e)  # fmt: skip
            yield bool(ready)
            await asyncio.sleep(self._health_retry_s)

    async def close(self) -> None:
        await self._client.close()
