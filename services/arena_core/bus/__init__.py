"""NATS JetStream for the services: connection, streams and consumers, publishing, consuming,
and KV / object-store helpers. Subjects and streams are derived from protobuf message types."""
