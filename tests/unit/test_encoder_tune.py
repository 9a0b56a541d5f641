"""What Gold's intent encoder is tuned on: the personas' guides and the labelled set's dev
split, never the splits that choose settings (val) or score the result (held_out)."""

from __future__ import annotations

from pathlib import Path

import yaml

from router.backends.intent_encoder import guide_texts
from services.gold.encoder_tune import described, tuning_set

CONFIG = Path("config/mesh.yaml")
LABELLED = Path("eval/intents.yaml")


def test_no_situation_is_in_two_splits() -> None:
    situations = yaml.safe_load(LABELLED.read_text())["situations"]
    texts = [s["text"] for s in situations]
    assert len(set(texts)) == len(texts), sorted(t for t in set(texts) if texts.count(t) > 1)


def test_only_the_dev_split_and_the_guides_are_trained_on() -> None:
    data = tuning_set(CONFIG, LABELLED)
    situations = yaml.safe_load(LABELLED.read_text())["situations"]
    trained = {e.text for e in data.examples}
    for split in ("val", "held_out"):
        scored = {s["text"] for s in situations if s["split"] == split}
        assert scored, split
        assert not scored & trained, split
    dev = {s["text"] for s in situations if s["split"] == "dev"}
    assert dev <= trained
    personas = yaml.safe_load(CONFIG.read_text())["personas"]
    guide_examples = {
        text
        for persona in personas.values()
        for guide in (persona.get("intent_guides") or {}).values()
        for text in guide.get("examples") or ()
    }
    assert guide_examples <= trained
    assert trained == dev | guide_examples


def test_each_example_is_judged_among_its_own_personas_intents(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "personas": {
                    "guard": {
                        "system": "a guard",
                        "intents": ["GREET", "RAISE_ALARM"],
                        "intent_guides": {"GREET": {"description": "hello", "examples": ["hi there"]}},
                    },
                    "cat": {"system": "a cat", "intents": ["PURR"]},
                }
            }
        )
    )
    labelled = tmp_path / "intents.yaml"
    labelled.write_text(
        yaml.safe_dump(
            {
                "situations": [
                    {"npc": "guard", "split": "dev", "label": "RAISE_ALARM", "text": "smoke"},
                    {"npc": "guard", "split": "dev", "label": "PURR", "text": "not the guard's"},
                    {"npc": "nobody", "split": "dev", "label": "GREET", "text": "no such persona"},
                    {"npc": "guard", "split": "held_out", "label": "GREET", "text": "scored only"},
                ]
            }
        )
    )
    data = tuning_set(config, labelled)
    assert [(e.npc, e.text, e.label) for e in data.examples] == [
        ("guard", "hi there", "GREET"),
        ("guard", "smoke", "RAISE_ALARM"),
    ]
    assert data.intents == {"guard": ("GREET", "RAISE_ALARM"), "cat": ("PURR",)}
    # A label without a guide is pulled toward its name, as the router describes it.
    assert data.descriptions[("guard", "RAISE_ALARM")] == "raise alarm"
    assert data.descriptions[("cat", "PURR")] == guide_texts(None, "PURR")[0] == described("PURR")
