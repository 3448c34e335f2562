"""One HTTP(S) request, run by the systemd tier inside the booted container's network namespace
(`nsenter --net=/proc/PID/ns/net python -m tests.systemd.client ...`); prints the answer as one JSON object."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--cacert")
    p.add_argument("--cert", help="client certificate and key in one PEM (kubelet's)")
    p.add_argument("--user-agent", default="kubelet/v1.32.0 (linux/amd64) kubernetes/abc")
    args = p.parse_args()
    ctx = None
    if args.url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=args.cacert)
        if args.cert:
            ctx.load_cert_chain(args.cert)
    request = urllib.request.Request(args.url, headers={"User-Agent": args.user_agent, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20, context=ctx) as resp:
            status, headers, body = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, dict(e.headers), e.read()
    out = {"status": status, "headers": headers, "text": body.decode(errors="replace")}
    try:
        out["items"] = [i["metadata"]["name"] for i in json.loads(body)["items"]]
    except (ValueError, KeyError, TypeError):
        pass
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
