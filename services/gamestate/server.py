"""An example MCP game-state server for the local mesh and tests (the `mcp` SDK's
server side, stdio transport). A real game would answer from its own world state.

    python -m services.gamestate.server
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

INVENTORIES = {
    "merchant-1": ["healing potion (12 silver)", "rope (2 silver)", "map of the north road (5 silver)"],
    "guard-1": ["spear", "ring of gate keys"],
    "innkeeper-1": ["room key 3", "loaf of bread", "ale"],
}
QUESTS = {
    "guard-1": ["find the thief who stole the mayor's purse"],
    "innkeeper-1": ["bring firewood from the mill"],
}

app = MCPServer("game-state")


@app.tool()
def get_inventory(npc_id: str) -> str:
    """What the NPC carries or sells."""
    items = INVENTORIES.get(npc_id)
    return ", ".join(items) if items else f"{npc_id} carries nothing of note"


@app.tool()
def get_quest_log(npc_id: str) -> str:
    """The quests the NPC can give or knows about."""
    return "; ".join(QUESTS.get(npc_id, [])) or "no open quests"


@app.tool()
def world_time() -> str:
    """The time in the game world."""
    return "dusk on the 12th day of harvest"


if __name__ == "__main__":
    app.run()
