"""regionlock.service: decision engine, policy, override stores, gRPC servicers, settings and CLI."""
