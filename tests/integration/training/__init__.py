"""Training service with a real nats-server, real gRPC and real worker processes."""
