"""GGUF files: reading them fast (reader.py); the HF -> GGUF writer and quantizers come next."""
