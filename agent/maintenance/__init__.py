"""Maintenance mode and live migration: pure decisions and the executors around them."""
