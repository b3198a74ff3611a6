"""``segserve serve``'s lifecycle: the supervisor in the terminal, the service process in a session of
its own, port checks before Ray starts, and the processes of a session (docs/operations.md,
"Running it by hand")."""
