"""Capacity planning: hardware and model catalogs and the memory arithmetic a plan starts from.

Pure Python (no torch): plans run in seconds on any machine. The step-time model, the
simulator and the search build on `catalog` and `memory`; they are not here yet.
"""
