"""The top floor: the tools that drive the whole mesh (the `tiermesh` command, the local
mesh's supervisor, validate, load, cost, dashboards, the demo, certificates, a client).
They may import every floor below; nothing imports them (pyproject.toml's import-linter
contracts)."""
