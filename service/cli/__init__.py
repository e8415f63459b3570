"""The `regionlock` command: one module per subcommand, one error path (exit 2, one line)."""
