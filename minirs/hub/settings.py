"""The hub client's settings from the environment, read on every call as huggingface_hub reads them: where the
cache is (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME), which hub to ask (HF_ENDPOINT), whether to go online at all
(HF_HUB_OFFLINE) and whether to draw progress bars (HF_HUB_DISABLE_PROGRESS_BARS)."""

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}


def hf_home() -> Path:
    """$HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (as huggingface_hub)."""
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """The hub cache root: $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE), else hf_home()/hub."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    return hf_home() / "hub"


def hub_endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE is 1/ON/YES/TRUE: then nothing in minirs.hub touches the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _progress_disabled() -> bool:
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().upper() in _TRUE
