"""The `nodefence` command: one module per sub-command, its parser and its handler."""
