"""The `edgeproxy` command: one subcommand per job, each implemented by the module named in COMMANDS.

Each command module exposes `configure(parser)` (its flags) and `run(args) -> int` (exit code). A module that
is not there yet is skipped, so the command grows with the project. Only the module of the command being run is
imported (`edgeproxy copy-credentials`, run by a root unit on every kubelet rotation, starts in tens of milliseconds,
not the half second importing every command takes); `edgeproxy --help` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("edgeproxy.server", "run the caching proxy in front of the API server(s) of a kubeconfig"),
    "demo": ("edgeproxy.commands.demo", "simulator + proxy + a watching client, narrated; then the same offline"),
    "sim": ("edgeproxy.sim.main", "run the Kubernetes API simulator (TLS, JSON and protobuf, fault switches)"),
    "kubeconfig": ("edgeproxy.commands.kubeconfig", "write a kubeconfig that points a component at the local proxy"),
    "cache": ("cache.cli", "inspect the cache: ls, show, get, stats, verify, purge"),
    "debug": ("edgeproxy.commands.debug", "check, diagnose, collect: what an operator runs when something is off"),
    "install-systemd": ("edgeproxy.commands.install",
                        "install the systemd units, environment file and kubelet drop-in"),
    "uninstall-systemd": ("edgeproxy.host.uninstall", "stop, disable and remove what install-systemd put in place; "
                                                       "say what state remains"),
    "copy-credentials": ("edgeproxy.host.credentials", "copy kubelet's rotated client certificate and the cluster CA "
                                                        "for the proxy (run by edgeproxy-credentials.service)"),
    "companion": ("edgeproxy.companion.main", "the cloud-side autonomy companion: tolerations for autonomous nodes"),
}
_GLOBAL_WITH_VALUE = ("--log-level", "--log-format")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv, if it is a known one (skipping the global options and their values)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error (env EDGEPROXY_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help="env EDGEPROXY_LOG_FORMAT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, description=help_text)  # listed, not imported
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue  # not built yet
            raise
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(cmd)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from edgeproxy import logs
    except ImportError:  # `from package import missing` raises ImportError, not ModuleNotFoundError
        import logging

        logging.basicConfig(level=(args.log_level or "INFO").upper())
    else:
        logs.setup(level=args.log_level, fmt=args.log_format)
    return int(args.run(args) or 0)
