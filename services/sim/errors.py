"""The one error a simulation raises for bad input: its message names the problem and the fix."""


class SimError(ValueError):
    """A workload, GPU profile or setting the simulator cannot use."""
