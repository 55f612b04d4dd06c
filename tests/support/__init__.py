"""What tests share: waits with a deadline, a fake clock, short timings, servers in fixtures."""
