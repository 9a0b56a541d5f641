"""Gold, locally: a real Triton Inference Server (PyTriton) serving TensorRT-LLM's
`ensemble` signature from llama.cpp on CPU, and the intent encoder beside it.

    .venv-gold/bin/python -m services.gold.server [--config config/mesh.yaml]

The model is decoupled (streaming): one response per generated token, as
TensorRT-LLM streams. Intents come through TensorRT-LLM's guided decoding inputs
(`guided_decoding_guide_type` = "regex", guide = an alternation of labels).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sysconfig
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from services.gold.encoder import DIMENSIONS, IntentEncoder
from services.gold.engine import GaveUp, GiveUp, LlamaPool, PromptTokens
from services.gold.settings import GoldSettings, Personas
from services.gold.stopping import (
    STRAGGLERS_GRACE_S,
    StopWhileStarting,
    close_clients_once_triton_exits,
    remove_orphaned_regions,
)
from tiermesh.chat import opening
from tiermesh.config import load_section
from tiermesh.logs import setup_logging
from tiermesh.process_exit import skip_exit_collection
from tiermesh.process_group import end_own_group
from tiermesh.tls import TlsSettings

log = logging.getLogger("tiermesh.gold")
MODEL = "ensemble"
ENCODER = "intent_encoder"
# The guides the router sends for intents: ( LABEL | LABEL | ... ), labels escaped.
_ALTERNATION = re.compile(r"\((?:[A-Z0-9_]+)(?:\|[A-Z0-9_]+)*\)")


def labels_from_guide(guide: str) -> list[str]:
    if not _ALTERNATION.fullmatch(guide):
        raise ValueError(
            f"this Gold (llama.cpp stand-in) supports only label alternations as regex guides, got {guide!r}"
        )
    return guide[1:-1].split("|")


def scalar(request: Any, name: str, default: Any = None) -> Any:
    """The single value of an optional [1, 1] input, or `default` when absent."""
    if name not in request.data:
        return default
    value = request.data[name].reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value.item()


def give_up_of(request: Any) -> GiveUp | None:
    """The router's give-up times, when it sent them (request parameters, Unix ms)."""
    parameters = getattr(request, "parameters", None) or {}
    if "tiermesh_start_by_ms" not in parameters or "tiermesh_end_by_ms" not in parameters:
        return None
    return GiveUp(
        int(parameters["tiermesh_start_by_ms"]) / 1000, int(parameters["tiermesh_end_by_ms"]) / 1000
    )


def text_output(text: str, prompt_tokens: int = 0) -> list[dict[str, np.ndarray[Any, Any]]]:
    return [
        {
            "text_output": np.array([[text.encode()]], dtype=np.object_),
            "prompt_tokens": np.array([[prompt_tokens]], dtype=np.int32),
        }
    ]


class Ensemble:
    """The infer function: an async generator, so one event loop serves every stream."""

    def __init__(self, pool: LlamaPool, settings: GoldSettings) -> None:
        self._pool = pool
        self._settings = settings

    async def __call__(self, requests: list[Any]) -> AsyncIterator[list[dict[str, np.ndarray[Any, Any]]]]:
        from pytriton.exceptions import PyTritonBadParameterError

        # No dynamic batcher: Triton hands over one request at a time, so independent
        # streams never advance in lockstep.
        [request] = requests
        give_up = give_up_of(request)
        prompt = scalar(request, "text_input")
        max_tokens = int(scalar(request, "max_tokens"))
        if not 0 < max_tokens <= self._settings.max_tokens_limit:
            raise PyTritonBadParameterError(
                f"max_tokens {max_tokens} is outside Gold's range 1..{self._settings.max_tokens_limit}"
            )
        if scalar(request, "guided_decoding_guide_type") is not None:
            if scalar(request, "guided_decoding_guide_type") != "regex":
                raise PyTritonBadParameterError("only regex guides are supported")
            try:
                labels = labels_from_guide(scalar(request, "guided_decoding_guide", ""))
            except ValueError as e:
                raise PyTritonBadParameterError(str(e)) from None
            try:
                label = await self._pool.choose(prompt, labels, self._settings.intent_method, give_up)
            except GaveUp:
                return  # nobody reads it
            yield text_output(label)
            return
        pieces = self._pool.stream(
            prompt,
            max_tokens,
            temperature=float(scalar(request, "temperature", 0.7)),
            top_k=int(scalar(request, "top_k", 40)),
            top_p=float(scalar(request, "top_p", 0.95)),
            seed=scalar(request, "random_seed"),
            give_up=give_up,
        )
        prompt_tokens = 0
        with contextlib.suppress(GaveUp):  # nobody reads the rest
            async for piece in pieces:
                if isinstance(piece, PromptTokens):
                    prompt_tokens = piece.count
                elif piece:  # llama.cpp ends with an empty piece; TensorRT-LLM sends none
                    yield text_output(piece, prompt_tokens)


def encoder_infer(encoder: IntentEncoder) -> Any:
    """The encoder's infer function: Triton's dynamic batcher hands over what queued
    together (`text`: [batch, 1] bytes) and gets one embedding row per text."""
    from pytriton.decorators import batch

    @batch  # type: ignore[untyped-decorator]
    def infer(text: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        texts = [bytes(row[0]).decode("utf-8", "replace") for row in text]
        return {"embedding": encoder.encode(texts)}

    return infer


def openings(settings: GoldSettings, personas: Personas) -> list[str]:
    """The prompt openings Gold warms: the first `warm_personas` personas' system texts
    as the router's prompts begin with them."""
    texts = [persona.system for persona in personas.root.values() if persona.system]
    return [opening(text) for text in texts[: settings.warm_personas]]


def serve(settings: GoldSettings, tls: TlsSettings | None = None, warm: Sequence[str] = ()) -> None:
    # Until Triton serves, a stop unwinds the start-up (stopping.py); what Triton leaves
    # is cleared below, as after any stop.
    starting = StopWhileStarting()
    signal.signal(signal.SIGTERM, starting)
    signal.signal(signal.SIGINT, starting)
    try:
        _start_and_serve(settings, tls, warm, starting)
    except KeyboardInterrupt:
        log.info("stopped while starting")
    finally:
        # Triton has exited; a model stub it gave up on may not have (stopping.py).
        end_own_group(STRAGGLERS_GRACE_S)
        remove_orphaned_regions()


def _start_and_serve(
    settings: GoldSettings, tls: TlsSettings | None, warm: Sequence[str], starting: StopWhileStarting
) -> None:
    # Triton's Python stub links libpython: point it at this interpreter's, or the
    # system's (another patch release) fails model load with an RLock error.
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    pool = LlamaPool(settings)
    pool.load(warm)
    starting.check()
    log.info("gold: %d llama.cpp instances, %d persona openings kept on each", settings.instances, len(warm))
    encoder = (
        IntentEncoder(settings.intent_encoder, settings.encoder_threads, settings.encoder_precision)
        if settings.intent_encoder
        else None
    )
    if encoder is not None:
        encoder.encode(["warm up"])  # the first run allocates; no caller should pay for it
    starting.check()
    config = TritonConfig(
        grpc_address=settings.host,
        grpc_port=settings.grpc_port,
        http_address=settings.host,
        http_port=settings.http_port,
        metrics_port=settings.metrics_port,
        # Triton waits this long for requests in flight and for its models to unload when
        # it stops (30 s by default), then PyTriton takes its own time to close: the mesh's
        # Ctrl-C must be over in under 5 s (#28). An unload that PyTriton's stub holds up
        # (now and then, after a burst, it keeps a finished stream open) is not waited for
        # past this.
        exit_timeout_secs=2,
    )
    if tls is not None and tls.cert:
        # Triton's own TLS on gRPC; mutual when the mesh requires client certificates.
        config.grpc_use_ssl = True
        config.grpc_use_ssl_mutual = tls.require_client_cert
        config.grpc_server_cert, config.grpc_server_key = tls.cert, tls.key
        config.grpc_root_cert = tls.ca
    optional = [
        Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
        Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="random_seed", dtype=np.uint64, shape=(1,), optional=True),
        Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
        Tensor(name="guided_decoding_guide_type", dtype=bytes, shape=(1,), optional=True),
        Tensor(name="guided_decoding_guide", dtype=bytes, shape=(1,), optional=True),
    ]
    # Triton is started and stopped by PyTriton's context only: a stop now waits for
    # the next check inside it (stopping.py).
    starting.defer()
    with Triton(config=config) as triton:
        starting.check()
        triton.bind(
            model_name=MODEL,
            infer_func=Ensemble(pool, settings),
            inputs=[
                Tensor(name="text_input", dtype=bytes, shape=(-1,)),
                Tensor(name="max_tokens", dtype=np.int32, shape=(-1,)),
                *optional,
            ],
            outputs=[
                Tensor(name="text_output", dtype=bytes, shape=(-1,)),
                # The ensemble's preprocessing count (REQUEST_INPUT_LEN) in production.
                Tensor(name="prompt_tokens", dtype=np.int32, shape=(1,)),
            ],
            config=ModelConfig(decoupled=True, batching=True, max_batch_size=8, batcher=None),
            strict=True,
        )
        if encoder is not None:
            starting.check()
            triton.bind(
                model_name=ENCODER,
                infer_func=encoder_infer(encoder),
                inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="embedding", dtype=np.float32, shape=(DIMENSIONS,))],
                config=ModelConfig(batching=True, max_batch_size=64),
                strict=True,
            )

        def stop(signum: int, frame: Any) -> None:
            log.info("stopping Triton (signal %d)", signum)
            close_clients_once_triton_exits(triton)
            triton.stop()

        # A stray SIGINT/SIGTERM must still stop Triton cleanly, or its shared-memory
        # regions and workspace stay behind. A stop that came before this handler did is
        # raised after it is set, so none falls between the two.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        starting.check()
        log.info(
            "gold: Triton on %s (gRPC), models %r",
            settings.grpc_address,
            [MODEL, ENCODER] if encoder else [MODEL],
        )
        triton.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", "-c", default=None)
    args = parser.parse_args()
    setup_logging()
    settings = load_section(GoldSettings, "gold", path=args.config)
    serve(
        settings,
        load_section(TlsSettings, "security", "mesh_tls", path=args.config),
        openings(settings, load_section(Personas, "personas", path=args.config)),
    )
    skip_exit_collection()


if __name__ == "__main__":
    main()
