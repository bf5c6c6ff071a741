"""HTTP in: the ASGI app and one module of operations per Pinpoint resource."""
