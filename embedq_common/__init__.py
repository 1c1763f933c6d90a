"""What the server and the worker share without depending on each other: settings from the
environment, the systemd notify protocol, log formats, and the worker protocol's media type."""
