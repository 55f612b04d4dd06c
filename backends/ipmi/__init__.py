"""IPMI over LAN (pyghmi), each BMC session in a worker process of its own."""
