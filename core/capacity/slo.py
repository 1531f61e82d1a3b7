"""Latency SLOs a plan must meet, and the presets users ask for by name.

A plan's SLOs are percentiles of per-request TTFT, TPOT or E2E from the simulation; the
bench command's richer `--slo` expressions (core/bench/slo.py) gate measured runs.
"""

from dataclasses import dataclass

from ..errors import UsageError
from .simulator import SimResult

METRICS = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class LatencySLO:
    metric: str  # ttft | tpot | e2e
    percentile: float  # e.g. 95
    ms: float  # upper bound

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UsageError(f"unknown SLO metric '{self.metric}': valid are {', '.join(METRICS)}")
        if not 0 < self.percentile <= 100 or self.ms <= 0:
            raise UsageError(f"bad SLO {self.name}={self.ms}: percentile in (0, 100], bound > 0 ms")

    @property
    def name(self) -> str:
        return f"{self.metric}_p{self.percentile:g}_ms"

    def value_ms(self, result: SimResult) -> float:
        return 1000 * result.percentile(self.metric, self.percentile)

    def holds(self, result: SimResult) -> bool:
        return self.value_ms(result) <= self.ms


# "interactive" is ours, the default: a chat user sees the first token within half a second,
# and the rest arrive at 20 tokens/s or more, ahead of reading speed (a common serving
# target; p95, like --ttft-p95 and --tpot-p95). The MLPerf ones are MLPerf Inference v5.0's Llama-2-70B scenarios: bounds on
# p99 TTFT and p99 TPOT.
PRESETS: dict[str, tuple[LatencySLO, ...]] = {
    "interactive": (LatencySLO("ttft", 95, 500), LatencySLO("tpot", 95, 50)),
    "mlperf-interactive": (LatencySLO("ttft", 99, 450), LatencySLO("tpot", 99, 40)),
    "mlperf-server": (LatencySLO("ttft", 99, 2000), LatencySLO("tpot", 99, 200)),
}


DEFAULT_PRESET = "interactive"  # what a plan is held to when no SLO is given


def preset(name: str) -> tuple[LatencySLO, ...]:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown SLO preset '{name}': valid are {', '.join(PRESETS)}") from None
