"""The parts of the docs that the code writes, so that they cannot drift from it:
docs/router.md's stack, from router/app.py's lists of layers.

    python -m ops.docs      # rewrite them; tests/unit/test_docs.py fails while they are stale
"""

from __future__ import annotations

from pathlib import Path

from router.app import call_layers, tier_layers
from router.estimates import TierEstimates
from router.pipeline import Layer
from router.settings import RouterConfig

ROUTER_DOC = Path("docs/router.md")
START, END = "<!-- stack -->", "<!-- /stack -->"


def stack() -> str:
    """The stack as a list, outermost first, each layer with why it sits there."""
    config = RouterConfig()

    def rows(layers: list[Layer], indent: str) -> list[str]:
        return [f"{indent}- **{layer.name}**: {layer.why}." for layer in layers]

    tier = tier_layers(config, "silver", TierEstimates(0.2, 0.05), {})
    return "\n".join(
        [
            "- **edge** (router/edge/): the caller's connection, deadline and status; the servicer "
            "validates the request into a Call.",
            *rows(call_layers(config, None, None), ""),
            "- **fallback** over the planned tiers (policies/planner.py decides, policies/fallback.py "
            "does; then the canned answer). Per tier:",
            *rows(tier, "  "),
            "  - **balancer**: one available replica (p2c over peak-EWMA × load, round-robin, or "
            "prefix-affine: a conversation where its prefix is cached); its breaker and outlier "
            "ejection learn from each call.",
            "  - **replica adapter** (router/backends/): the tier's protocol, deadline, cancellation.",
        ]
    )


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{stack()}\n{END}{tail}"


def write() -> None:
    ROUTER_DOC.write_text(render(ROUTER_DOC.read_text()))


if __name__ == "__main__":
    write()
