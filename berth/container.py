"""What berth can tell about the container it runs in (grown by the sizing work)."""

from __future__ import annotations

import os


def in_container(environ=os.environ) -> tuple[bool, str]:
    """(inside a container?, why). `BERTH_IN_CONTAINER=0|1` overrides the detection."""
    override = environ.get("BERTH_IN_CONTAINER")
    if override is not None and override.strip() != "":
        inside = override.strip().lower() not in ("0", "false", "no", "off")
        return inside, f"BERTH_IN_CONTAINER={override}"
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return True, "KUBERNETES_SERVICE_HOST is set"
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if os.path.exists(marker):
            return True, f"{marker} exists"
    return False, "no container marker found"


def default_bind(environ=os.environ) -> tuple[str, str]:
    """(address, reason) when no --bind is given, as Gunicorn does with $PORT."""
    port = environ.get("PORT")
    if port:
        return f"0.0.0.0:{port}", "$PORT is set"
    inside, why = in_container(environ)
    if inside:
        return "0.0.0.0:8000", f"inside a container ({why}): listening on all interfaces"
    return "127.0.0.1:8000", f"not in a container ({why})"
