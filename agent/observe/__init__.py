"""What nodefence tells operators' tools: metrics and build information."""
