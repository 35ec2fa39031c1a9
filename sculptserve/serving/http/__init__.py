"""REST front end: the BentoML service and the ASGI guard in front of it."""
