"""Hardware profiles: calibrated hardware (e.g. `cpu-local`) stored beside the catalog.

A profile is a GPU catalog entry (same keys as catalogs/gpus.toml) plus the fitted
`[NAME.efficiency]` and the engine knobs it was measured with (`[NAME.engine]`). It lives in
`profiles.toml` under the user's config dir ($LLMTOOL_CONFIG_DIR, else
$XDG_CONFIG_HOME/llmtool, else ~/.config/llmtool); `--gpu NAME` finds it there.
"""

import math
import os
import tomllib
from dataclasses import asdict
from pathlib import Path

from ..errors import UsageError
from ..files import write_text
from .catalog import GPUSpec
from .step_time import Efficiency


def profiles_path() -> Path:
    if os.environ.get("LLMTOOL_CONFIG_DIR"):
        return Path(os.environ["LLMTOOL_CONFIG_DIR"]) / "profiles.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "llmtool" / "profiles.toml"


def load_profiles() -> dict[str, dict]:
    path = profiles_path()
    if not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read the hardware profiles in {path}: {e}") from None


def efficiency_for(gpu_name: str) -> Efficiency | None:
    """The calibrated efficiency of a profile, or None for catalog hardware."""
    entry = next((v for k, v in load_profiles().items() if k.lower() == gpu_name.lower()), None)
    if entry is None or "efficiency" not in entry:
        return None
    try:
        return Efficiency(**entry["efficiency"])
    except TypeError as e:
        raise UsageError(
            f"profile '{gpu_name}' in {profiles_path()} has a bad [efficiency] table: {e}"
        ) from None


def engine_for(gpu_name: str) -> dict:
    entry = next((v for k, v in load_profiles().items() if k.lower() == gpu_name.lower()), None)
    return dict((entry or {}).get("engine", {}))


def save_profile(name: str, gpu: GPUSpec, eff: Efficiency, engine: dict) -> Path:
    """Add or replace one profile; the file is rewritten atomically."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"profile name '{name}' must be letters, digits, '-' or '_'")
    profiles = {k: v for k, v in load_profiles().items() if k.lower() != name.lower()}
    profiles[name] = {
        "memory_gib": gpu.memory_bytes / 2**30,
        "hbm_bandwidth_tbps": gpu.hbm_bandwidth / 1e12,
        "bf16_tflops": gpu.bf16_flops / 1e12,
        "int8_tops": gpu.int8_ops / 1e12,
        "link_gbps": gpu.link_bandwidth / 1e9,
        "price_per_hour": gpu.price_per_hour,
        "source": gpu.source,
        "efficiency": asdict(eff),
        "engine": engine,
    }
    if gpu.fp8_flops is not None:
        profiles[name]["fp8_tflops"] = gpu.fp8_flops / 1e12
    path = profiles_path()
    text = "# Hardware profiles written by `llmtool plan-capacity --calibrate`.\n"
    text += "".join(_table(key, entry) for key, entry in profiles.items())
    write_text(path, text)
    return path


def _table(key: str, entry: dict) -> str:
    scalars = {k: v for k, v in entry.items() if not isinstance(v, dict)}
    lines = [f'\n["{key}"]'] + [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for sub, table in entry.items():
        if isinstance(table, dict):
            lines.append(f'\n["{key}".{sub}]')
            lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UsageError(f"cannot store a non-finite value {v} in a profile")
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
