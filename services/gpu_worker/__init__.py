"""The GPU worker: runs the engine and executes the router's step jobs."""
