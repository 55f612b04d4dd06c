"""`nodefence-hwsim chaos`: seeded fault schedules against a running simulated cluster."""
