"""`edge-ipam-snapshot inspect [--network N]`: what the snapshot holds, for an operator at a terminal.

Read-only: it takes no locks and moves nothing aside (files are only ever replaced by rename, so each read is
whole). Prints one line per record (key, state, IPs, container, lease owner, age) and the pending journal, or JSON.
Neighbours: records.py and journal.py (the files), main.py (dispatches here when run with arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cni_plugin import config, journal, records, result


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=config.DEFAULT_DATA_DIR, help="the plugin's dataDir")
    parser.add_argument("--network", help="only this network (the CNI config's name)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _age(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def collect(data_dir: str, network: str | None) -> dict:
    try:
        names = [network] if network else sorted(n for n in os.listdir(data_dir)
                                                 if os.path.isdir(os.path.join(data_dir, n)))
    except FileNotFoundError:
        names = []
    out = {}
    for name in names:
        store = records.Store(os.path.join(data_dir, name))
        store.quarantine = False
        out[name] = {
            "records": [r.as_dict() for r in store.all()],
            "journal": [e.as_dict() for e in journal.Journal(store).pending()],
            "corrupt": store.corrupt(),
        }
    return out


def run(args: argparse.Namespace) -> int:
    data = collect(args.data_dir, args.network)
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not data:
        print(f"no snapshot under {args.data_dir}")
        return 0
    for network, part in data.items():
        print(f"network {network}: {len(part['records'])} records, {len(part['journal'])} pending releases")
        print(f"  {'KEY':40} {'STATE':8} {'IPS':34} {'CONTAINER':14} {'OWNER':14} IN STATE")
        for r in part["records"]:
            ips = ",".join(ip["address"] for ip in r["result"]["ips"])
            print(f"  {r['key']:40} {r['state']:8} {ips:34} {r['container'][:12]:14} {r['owner'][:12]:14} "
                  f"{_age(r['since'])}")
        for e in part["journal"]:
            error = f": {e['last_error']}" if e["last_error"] else ""
            print(f"  pending release: owner {e['owner'][:12]} {e['ifname']} ({e['key'] or 'no record'}), "
                  f"{e['attempts']} attempts, {_age(e['created'])} old{error}")
        for c in part["corrupt"]:
            print(f"  corrupt (moved aside): {c}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-ipam-snapshot",
                                     description="CNI IPAM plugin keeping pod IPs across offline restarts. "
                                                 "Run by the container runtime with CNI_COMMAND set.")
    sub = parser.add_subparsers(dest="command", required=True)
    configure(sub.add_parser("inspect", help="list the snapshot's records and their states"))
    sub.add_parser("version", help="print the CNI versions supported")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(" ".join(result.SUPPORTED))
        return 0
    return run(args)
