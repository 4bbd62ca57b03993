"""A discrete-event simulator of a tokenpool pool: the router's real policy, simulated GPUs.

events.py    the virtual clock and event queue
cost.py      what steps, copies and swaps cost on a GPU (documented sources)
device.py    one GPU's memory: resident weights, KV pages, copy links
worker.py    a simulated gpu_worker executing RunTurns
workload.py  the Workload every source gives (loaders in workload_*.py: paper CSV, synthetic, Azure, ServeGen)
run.py       one workload under one policy setting -> SLO attainment and counters
"""
