"""The OpenAI-compatible HTTP gateway (see __main__ for usage)."""

from services.gateway.config import GatewayConfig
from services.gateway.service import Gateway

__all__ = ["Gateway", "GatewayConfig"]
