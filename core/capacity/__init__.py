"""Capacity planning: hardware and model catalogs, memory arithmetic, a roofline step-time
model, a discrete-event simulator that drives the engine's own Scheduler and BlockManager,
the search for the fewest GPUs under SLOs, and calibration of hardware profiles.

Pure Python (no torch) except `probe`, which measures a CPU for a calibrated profile.
"""
