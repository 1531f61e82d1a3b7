"""Model layer: resolve a reference, load weights and tokenizer, run the Llama-family forward."""
