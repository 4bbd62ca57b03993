"""Connectors: what starts and releases gpu_workers when the planner says ScaleUp or Release."""

from services.autoscaler.connectors.base import Connector, ConnectorError
from services.autoscaler.connectors.compose import ComposeConnector, compose_worker_id, run_command
from services.autoscaler.connectors.local import LocalConnector

__all__ = ["ComposeConnector", "Connector", "ConnectorError", "LocalConnector", "compose_worker_id", "run_command"]
