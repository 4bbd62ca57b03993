"""The router: takes accepted requests from JetStream, queues them per model, assigns each
to a worker that has its model warm, follows their tokens, and moves the requests of a
dead worker elsewhere. policy.py decides (pure); service.py does the I/O."""
