"""SLO arithmetic for token-level scheduling: turn quotas and the time estimates they need.

Pure code (no I/O, no clock of its own), shared by the router policy and the simulator.
"""
