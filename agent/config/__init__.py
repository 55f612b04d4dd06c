"""The files an operator writes (agent config, BMC inventory, key files), declared and read."""
