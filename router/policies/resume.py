"""Mid-stream failure: continue on another replica, or end with a precise status.

Resuming re-sends the conversation with the text already streamed as the start of
the assistant's answer; the tier continues that message instead of starting a new
one (Silver: `continue_final_message`). The caller sees one unbroken stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from tiermesh.chat import Message
from tiermesh.config import TaskName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class Resume:
    def __init__(
        self,
        inner: Backend,
        tier: str,
        policy: Mapping[TaskName, str],
        max_resumes: int = 2,
    ) -> None:
        self._inner = inner
        self._tier = tier
        self._policy = policy
        self._max_resumes = max_resumes

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        if self._policy.get(call.task, "fail") != "resume":
            return self._inner.generate(call)  # fails mid-stream: not in this call's path
        return self._resumed(call)

    async def _resumed(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        streamed: list[str] = []
        current = call
        resumes = 0
        while True:
            try:
                async for response in self._inner.generate(current):
                    streamed.append(response.text)
                    yield response
                return
            except StatusError as e:
                budget_left = call.max_tokens - len(streamed)  # ≈ one token per delta
                if (
                    not streamed
                    or e.code != grpc.StatusCode.UNAVAILABLE
                    or resumes >= self._max_resumes
                    or budget_left <= 0
                    or call.remaining() <= 0
                ):
                    raise
                resumes += 1
                metrics.RESUMES.labels(self._tier).inc()
                prefix = Message("assistant", "".join(streamed))
                current = dataclasses.replace(call, messages=(*call.messages, prefix), max_tokens=budget_left)
                # Same `tried` set: the replica that failed is avoided.
                current.tried.update(call.tried)
