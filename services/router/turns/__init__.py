"""Token-level turn scheduling for one worker: which model computes next, for which requests,
for how long. Pure code driven by the router policy and by the simulator."""
