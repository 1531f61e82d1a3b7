"""One file per architecture family; importing this package registers all of them.

To add a family: a file here with a class that inherits from its nearest neighbour,
decorated with @register, plus its tiny config in tests/architectures.py. See README.md.
"""

from . import gemma2, gemma3, granite, llama, mistral, mixtral, olmo2, phi3, qwen2, qwen3, qwen3_moe  # noqa: F401
