"""Prefect settings prefpipe applies before Prefect is imported (the user's environment wins)."""

from __future__ import annotations

import os

DEFAULTS = {
    # Prefect's only outbound attempt is a telemetry lookup; this machine has no internet.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A loaded 2-core machine needs longer than the default to start the ephemeral API.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Quiet by default: the CLI prints progress and the result itself.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # vLLM logs every engine detail at INFO; the CLI shows progress itself.
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def configure() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
