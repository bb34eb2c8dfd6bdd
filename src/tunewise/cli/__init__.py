"""The command line: shared options and error handling, one module per command group."""
