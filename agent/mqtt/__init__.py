"""The brokers: client options, the leader's subscribe-only ingest, N brokers at once."""
