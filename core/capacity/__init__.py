"""Capacity planning: hardware and model catalogs, the memory arithmetic a plan starts from,
and the per-step time model (roofline with efficiency factors, TP all-reduce, MoE traffic).

Pure Python (no torch): plans run in seconds on any machine. The simulator and the search
build on `catalog`, `memory` and `step_time`; they are not here yet.
"""
