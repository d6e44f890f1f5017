"""The `genfleet` command: serve (a local fleet), gateway, worker."""
