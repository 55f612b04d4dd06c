"""What every node runs: the agent, its watchdog, its health endpoint, its watch of itself."""
