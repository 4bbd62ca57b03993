"""tokenpool services: gateway, router, gpu_worker, autoscaler and the CLI."""
