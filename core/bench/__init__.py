"""The load generator and its report: workloads, arrival schedules, streaming clients (HTTP
and in-process), metric math as REFERENCE.md defines it, and SLO gates."""
