"""Pretrained weights without a network: a one-line error in about a second, not after the
download clients' retries (the Hugging Face Hub client spends ~50 s retrying before timm
gives up; urllib waits for ever behind a firewall that drops packets).

Before the first download: weights already in the cache are used as usual (offline or
not); otherwise HF_HUB_OFFLINE is honoured and a sub-second TCP connect to the server (or
to the proxy the environment names) decides whether a download is worth trying. The timm
check needs no torch, so `edgecls export mobilenet_v1` fails before torch is even imported.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from edgecls.errors import WeightsError

#: how long the connect probe may take (DNS included)
PROBE_SECONDS = 0.8
#: timm's pretrained files on the Hub, in the order timm tries them
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_unavailable(name: str, why: str) -> WeightsError:
    """THE error for pretrained weights that cannot be had, whatever found it."""
    return WeightsError(f"pretrained weights for {name} cannot be had ({why}); pass "
                        "--weights PATH or --weights none")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _proxy(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy if "://" in proxy else f"http://{proxy}"
    return None


def _endpoint(url: str) -> tuple[str, int]:
    """(host, port) a download of `url` connects to first: its proxy when one applies."""
    parts = urllib.parse.urlsplit(_proxy(url) or url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _server(url: str) -> str:
    """How an error names where a download would go."""
    host = urllib.parse.urlsplit(url).hostname
    proxy = _proxy(url)
    return f"{host} (through the proxy {urllib.parse.urlsplit(proxy).netloc})" if proxy else str(host)


def reachable(url: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the server of `url` (or its proxy) opens within
    `seconds`. In a thread, because name resolution has no timeout of its own."""
    host, port = _endpoint(url)
    opened = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            opened.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True, name="edgecls-probe").start()
    return opened.wait(seconds)


def require_timm_weights(name: str, builder: str) -> None:
    """Torch-free: timm's weights for `builder` are cached, or can be downloaded now."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:   # timm brings huggingface_hub: without it timm's own error follows
        return
    repo = f"timm/{builder}"   # where timm keeps a tagged model (pretrained_cfg.hf_hub_id)
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in TIMM_FILES):
        return
    if hub_offline():
        raise weights_unavailable(name, "HF_HUB_OFFLINE is set and they are not in the "
                                        "Hugging Face cache")
    if not reachable(constants.ENDPOINT):
        raise weights_unavailable(name, f"offline: {_server(constants.ENDPOINT)} cannot be "
                                        "reached and they are not in the Hugging Face cache")


def require_url_weights(name: str, url: str, cache: Path) -> None:
    """A weights file that torch.hub keeps in `cache` under its URL's file name: there, or
    its server reachable now."""
    if (cache / Path(urllib.parse.urlsplit(url).path).name).is_file():
        return
    if not reachable(url):
        raise weights_unavailable(name, f"offline: {_server(url)} cannot be reached and "
                                        f"they are not in the torch cache {cache}")


__all__ = ["weights_unavailable", "hub_offline", "reachable", "require_timm_weights",
           "require_url_weights"]
