"""The serving engine: paged KV cache, prefix caching, continuous batching, sampling.

sequence, block_manager and scheduler import no torch: capacity planning drives the same
Scheduler with a virtual clock.
"""
