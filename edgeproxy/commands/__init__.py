"""The subcommands besides `serve`, one module each, dispatched to by edgeproxy.cli (imported only when run).

    demo        `edgeproxy demo`: simulator + proxy + a kubelet-style client, narrated online then offline
    kubeconfig  `edgeproxy kubeconfig`: the kubeconfig that points one component at the local proxy
    install     `edgeproxy install-systemd`: units, env file, kubelet drop-in, tmpfiles and sysusers in place
    debug       `edgeproxy debug check | diagnose | collect`: what an operator runs when something is off
They build on the service's modules (server, config, tls, upstream, autonomy/); nothing imports them but cli,
host.uninstall (install's paths) and install (kubeconfig). No re-exports.
"""
