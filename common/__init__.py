"""What sfu-gateway and sfu-worker share that is not messaging: the settings machinery and
the worker's settings table, the recording sidecar contract, the log formatter.

Depends only on the standard library and msgspec.
"""
