"""One module per command. Each declares its command-line signature (a Typer function) and does its part
around the shared layers: `job` and `engines` for anything that classifies, `writers` for output.

A new command is a new module here plus one line in `COMMANDS` below; `cli.py` registers them all.
"""

from __future__ import annotations

from . import arch, classify, embed, evaluate, explain, models, serve, similar, train

# (name, function, takes no arguments -> show help); the first is the default command.
COMMANDS = (
    ("classify", classify.command, True),
    ("explain", explain.command, True),
    ("evaluate", evaluate.command, True),
    ("embed", embed.command, True),
    ("similar", similar.command, True),
    ("train", train.command, True),
    ("serve", serve.command, False),
    ("models", models.models_command, False),
    ("download", models.download_command, True),
    ("arch", arch.command, True),
)
