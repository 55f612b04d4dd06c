"""nodefence agent: heartbeats, leader election, failure detection and fencing."""

__version__ = "0.1.0"
