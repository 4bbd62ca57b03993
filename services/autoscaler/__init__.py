"""The autoscaler: plans which models each worker keeps in host memory (planner.py, pure)
and keeps that Placement in the JetStream KV bucket (service.py)."""
