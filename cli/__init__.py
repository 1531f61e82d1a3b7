"""llmtool's command line: parse flags, call one core function, render with Rich."""
