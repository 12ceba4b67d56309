"""Transports to remote replicas: SSH connections, the agent protocol, the event loop thread."""
