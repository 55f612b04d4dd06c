"""What `nodefence` exits with: one meaning per code, shared by every sub-command."""

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and what it checks is not well (or its action failed)
EXIT_USAGE = 2  # bad arguments or input: nothing was changed
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
