"""Weight-only quantization: RTN / GPTQ / AWQ, checkpoint formats, calibration, perplexity."""
