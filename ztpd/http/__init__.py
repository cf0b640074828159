"""HTTP: the server, and the route modules that plug into it."""
