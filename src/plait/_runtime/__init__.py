"""The engine: compiling step trees, running them, batches, and ``plait.run``."""
