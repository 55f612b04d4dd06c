"""Emulated hardware and cluster for nodefence's tests, demos and benchmarks.

Everything here listens on 127.0.0.1 only.
"""
