"""wasmrund, the loader daemon: a trio front on a Unix socket that hands
each ``wasmrun run``/``wasmrun call`` request to a worker process holding
the client's own credentials (docs/daemon.md).

Modules, front: ``__main__`` (the command line, start-up order and the
privilege drop), ``config`` (the TOML file), ``systemd`` (socket
activation, sd_notify), ``peer`` (SO_PEERCRED, SO_PEERGROUPS), ``server``
(connections and their limits), ``scheduler`` (per-uid queues and worker
pools), ``workers`` (the front's side of the zygote and the workers),
``codestore`` (compiled code as sealed memfds), ``channel`` (the private
socketpair protocol). Zygote and workers: ``zygote`` (forks workers),
``identity`` (becoming a client), ``worker`` (the job loop), ``execute``
(one request), ``stdio`` (the guest's stdio over the client's descriptors).
"""
