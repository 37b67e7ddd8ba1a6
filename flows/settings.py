"""Prefect settings prefpipe applies before Prefect is imported (the user's environment wins)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

from flows.server import ensure_server, prefect_home

DEFAULTS = {
    # Prefect's only outbound attempt is a telemetry lookup; this machine has no internet.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A loaded 2-core machine needs longer than the default to start the local API server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Quiet by default: the CLI prints progress and the result itself.
    "PREFECT_LOGGING_LEVEL": "INFO",  # run logs reach the API; the CLI sends the terminal's share to a file
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # vLLM logs every engine detail at INFO; the CLI shows progress itself.
    "VLLM_LOGGING_LEVEL": "WARNING",
}
LOG_FILE = "prefpipe.log"
TERMINAL_HANDLERS = ("console", "debug")  # the handlers of Prefect's logging config writing to stderr


def configure() -> None:
    """Apply DEFAULTS and, unless PREFECT_API_URL names a server, point Prefect at the local server
    every prefpipe process shares (`flows.server`), starting it if needed."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    ensure_server(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))


def log_file() -> Path:
    return prefect_home() / LOG_FILE


def log_to_file() -> None:
    """Make Prefect write to `log_file()` what it would print on the terminal; run logs still go
    to the API too. Done with a logging config derived from Prefect's default one, unless the user
    has their own ($PREFECT_LOGGING_SETTINGS_PATH or PREFECT_HOME/logging.yml)."""
    home = prefect_home()
    if (os.environ.get("PREFECT_LOGGING_SETTINGS_PATH") or os.environ.get("PREFECT_LOGGING_CONFIG_PATH")
            or (home / "logging.yml").exists()):
        return
    default = Path(importlib.util.find_spec("prefect").origin).parent / "logging" / "logging.yml"
    config = yaml.safe_load(default.read_text())
    handlers = {name: h for name, h in config["handlers"].items() if name not in TERMINAL_HANDLERS}
    config["handlers"] = handlers | {"file": {"class": "logging.FileHandler", "formatter": "standard",
                                              "filename": str(log_file()).replace("$", "$$"),  # a template
                                              "delay": True}}
    for logger in [config["root"], *config["loggers"].values()]:
        if "handlers" in logger:
            logger["handlers"] = list(dict.fromkeys("file" if h in TERMINAL_HANDLERS else h
                                                    for h in logger["handlers"]))
    path = home / "prefpipe-logging.yml"
    text = yaml.safe_dump(config, sort_keys=False)
    try:
        if not path.is_file() or path.read_text() != text:
            home.mkdir(parents=True, exist_ok=True)
            tmp = home / f".prefpipe-logging-{os.getpid()}.yml"
            tmp.write_text(text)
            os.replace(tmp, path)
    except OSError:
        return  # PREFECT_HOME not writable: Prefect keeps logging to the terminal
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(path)
