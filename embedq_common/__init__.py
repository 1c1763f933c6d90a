"""What the server and the worker share without depending on each other: settings from the
environment, the systemd notify protocol, and log formats."""
