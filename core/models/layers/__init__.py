"""The shared layers every family's forward is built from (one block recipe, many families).

Parameter names match the checkpoints' (transformers') so weights load and export without
renaming; a family's differences are fields of its ModelSpec and a few names it declares.
"""
