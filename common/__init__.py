"""What the gateway and the worker share: wire protocol, configs, key names, errors. No torch."""
