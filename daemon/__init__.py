"""wasmrund, the loader daemon: a trio server on a Unix socket that runs
``wasmrun run``/``wasmrun call`` requests on one warm :class:`Runtime`, with
the clients' own descriptors as the guests' stdio and directories.

Modules: ``config`` (the TOML file), ``systemd`` (socket activation,
sd_notify), ``peer`` (SO_PEERCRED and access rules), ``stdio`` (the guest's
stdio over the client's descriptors), ``execute`` (one request in a worker
thread), ``server`` (the trio shell), ``__main__`` (the command line).
"""
