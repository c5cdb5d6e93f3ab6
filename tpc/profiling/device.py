"""What a profile ran on: CPU model and threads, or GPU name, driver and provider."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict | None:
    """Name, driver and compute capability of GPU 0 from nvidia-smi, or None."""
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, capability = (part.strip() for part in (out[0].split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "compute_capability": capability}


def describe_device(runtime_info: dict, threads: int | None = None) -> dict:
    provider = runtime_info.get("provider", "")
    on_gpu = provider not in ("", "CPUExecutionProvider")
    info = {
        "kind": "gpu" if on_gpu else "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads or os.cpu_count(),
        "platform": platform.platform(),
        "runtime": runtime_info.get("runtime"),
        "execution_provider": provider,
        "requested_provider": runtime_info.get("requested_provider", provider),
        "fell_back_to_cpu": bool(runtime_info.get("fell_back", False)),
    }
    gpu = gpu_info() if on_gpu else None
    if gpu:
        info["gpu"] = gpu
    return info
