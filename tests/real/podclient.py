"""A pod-like API client for the real tier: in-cluster config, then a list and a watch of ConfigMaps, forever.

It reads what a pod has: KUBERNETES_SERVICE_HOST/PORT from its environment and the ServiceAccount's token, CA and
namespace under /var/run/secrets/kubernetes.io/serviceaccount (the test mounts them there, in the client's own
mount namespace). It behaves as an informer does: list, then watch from the list's resourceVersion, re-watch from
the last one seen when a watch ends, relist on 410; every step is one JSON line on stdout, which the test reads.

    python -m tests.real.podclient
"""

from __future__ import annotations

import json
import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def say(**what: object) -> None:
    print(json.dumps({"t": round(time.time(), 3), **what}), flush=True)


def main() -> int:
    config.load_incluster_config()
    api_client = client.ApiClient()
    api_client.user_agent = "podclient/1.0"
    api = client.CoreV1Api(api_client)
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
        namespace = f.read().strip()
    say(event="start", host=api_client.configuration.host)
    rv = None
    while True:
        try:
            if rv is None:
                got = api.list_namespaced_config_map(namespace, _request_timeout=15)
                rv = got.metadata.resource_version
                say(event="list", rv=rv, names=sorted(i.metadata.name for i in got.items))
            stream = watch.Watch().stream(api.list_namespaced_config_map, namespace, resource_version=rv,
                                          allow_watch_bookmarks=True, timeout_seconds=60, _request_timeout=90)
            for ev in stream:
                obj = ev["raw_object"]
                rv = obj["metadata"]["resourceVersion"]
                say(event=ev["type"], rv=rv, name=obj["metadata"].get("name", ""))
            say(event="rewatch", rv=rv)
        except ApiException as e:
            say(event="error", status=e.status)
            if e.status == 410:
                rv = None
            time.sleep(1)
        except Exception as e:  # connection refused, reset, timeout: what a pod sees when its API is gone
            say(event="error", error=type(e).__name__)
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
