"""llmtool's shared core: models, engine, and everything the commands share.

Never imports Typer or Rich: the CLI renders, the core computes.
"""
