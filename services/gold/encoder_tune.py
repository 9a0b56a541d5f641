"""Tunes the intent encoder to the game's intents before it is exported.

all-MiniLM-L6-v2 was trained to put sentences on the same topic together, and a situation's
intent is often not its topic: an armed stranger who walks past and one who charges share
their words, and a merchant offered stolen goods reads like a sale. Out of the box, nearest
guide chose the intent a designer expects for about three situations in four.

So the encoder is taught, before export, what the router asks of it: a situation's
embedding nearest to its intent's description among its persona's intents (and cut to its
first four layers, which that task does not miss). The examples are the personas' guide
examples (config/mesh.yaml) and the `dev` split of eval/intents.yaml; the `val` split
chooses the settings below and the `held_out` split is only ever scored, so neither is
trained on. The router is unchanged: it still averages a label's description and
examples into one prototype and picks the nearest, so a persona added later, with intents
the tuning never saw, is labelled as before, only by a model that has learned what an intent
is. Deterministic: one seed, one order.

Runs in the main venv (torch comes with vLLM); see encoder_export.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.gold.encoder import MAX_TOKENS

# Chosen on eval/intents.yaml's `val` split (docs/history.md): 4, 8 and 12 epochs, and
# learning rates 1e-5 and 3e-5, all landed within one situation of each other there.
# The first 4 of the model's 6 layers chose as all 6 did there (3 layers: two fewer right)
# at two thirds of the compute, which is the cost of an intent under load.
LAYERS = 4
EPOCHS = 8
LEARNING_RATE = 3e-5
BATCH = 16
# Cosine similarities times this are the logits: the spread of a softmax over cosines
# in [-1, 1] is otherwise too flat to learn from.
SCALE = 20.0
SEED = 0
TRAIN_SPLIT = "dev"


@dataclass(frozen=True)
class Example:
    """A situation in front of a persona, and the intent expected of it."""

    npc: str
    text: str
    label: str


@dataclass(frozen=True)
class TuningSet:
    """The examples; per persona its intents, and per persona and intent the description
    its examples are pulled toward."""

    examples: list[Example]
    intents: dict[str, tuple[str, ...]]
    descriptions: dict[tuple[str, str], str]


def described(label: str) -> str:
    """A label without a guide is described by its name, as the router describes it."""
    return label.replace("_", " ").lower()


def tuning_set(config: Path, labelled: Path, split: str = TRAIN_SPLIT) -> TuningSet:
    """The personas' guides from the mesh's configuration and one split of the labelled
    situations (plain YAML: Gold's tooling does not import the router's settings)."""
    personas: dict[str, Any] = (yaml.safe_load(config.read_text()) or {}).get("personas") or {}
    intents = {npc: tuple(p.get("intents") or ()) for npc, p in personas.items()}
    descriptions: dict[tuple[str, str], str] = {}
    examples: list[Example] = []
    for npc, persona in personas.items():
        guides = persona.get("intent_guides") or {}
        for label in intents[npc]:
            guide = guides.get(label) or {}
            descriptions[(npc, label)] = guide.get("description") or described(label)
            examples += [Example(npc, text, label) for text in guide.get("examples") or ()]
    for item in yaml.safe_load(labelled.read_text())["situations"]:
        if item["split"] == split and item["label"] in intents.get(item["npc"], ()):
            examples.append(Example(item["npc"], item["text"], item["label"]))
    return TuningSet(examples, intents, descriptions)


def tune(bert: Any, tokenizer: Any, data: TuningSet, layers: int = LAYERS) -> Any:
    """Fine-tunes `bert` (a transformers BertModel), cut to its first `layers` layers, in
    place and returns it in eval mode.

    Each step encodes every description and a batch of examples with the model being
    tuned, so both sides move; an example's loss is the cross-entropy of its expected
    intent among its own persona's intents only, as the router will choose."""
    import torch

    torch.manual_seed(SEED)
    bert.encoder.layer = bert.encoder.layer[:layers]
    bert.config.num_hidden_layers = len(bert.encoder.layer)
    order = random.Random(SEED)
    anchors = list(data.descriptions)
    # Per example: the rows of its own persona's descriptions, and its label's place there.
    rows: list[tuple[str, list[int], int]] = []
    for example in data.examples:
        own = data.intents[example.npc]
        rows.append(
            (
                example.text,
                [anchors.index((example.npc, label)) for label in own],
                own.index(example.label),
            )
        )
    descriptions = [data.descriptions[key] for key in anchors]
    optimiser = torch.optim.AdamW(bert.parameters(), lr=LEARNING_RATE)
    bert.train()
    for _ in range(EPOCHS):
        order.shuffle(rows)
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            anchor = embed(bert, tokenizer, descriptions)
            situation = embed(bert, tokenizer, [text for text, _, _ in batch])
            losses = [
                torch.nn.functional.cross_entropy(
                    (SCALE * (anchor[own] @ x)).unsqueeze(0), torch.tensor([right])
                )
                for x, (_, own, right) in zip(situation, batch, strict=True)
            ]
            loss = torch.stack(losses).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return bert.eval()


def embed(bert: Any, tokenizer: Any, texts: list[str]) -> Any:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return sentence_embedding(bert(**batch).last_hidden_state, batch["attention_mask"])


def sentence_embedding(states: Any, attention_mask: Any) -> Any:
    """all-MiniLM-L6-v2's sentence embedding, as sentence-transformers computes it: the
    mean of the real tokens' last states, at unit length. The exported graph ends with it."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)
