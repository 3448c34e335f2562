"""`edgeproxy cache ls | show VIEW | get VIEW NAME | stats | verify | purge`: the operator's view of the cache.

Opens an existing cache (never creates one) next to a running proxy: LMDB lets readers and one writer share it.
Secret values are never printed: sealed resources show metadata only, JSON `data`/`stringData` values are redacted.
Does not decode protobuf objects (only the metadata the store keeps). Neighbours: store, edgeproxy.cli (dispatch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cache import errors, seal, store

DEFAULT_DIR = "/var/lib/edgeproxy/cache"  # where the service keeps it (systemd/edgeproxy.env)
REDACTED_KEYS = ("data", "stringData")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=os.environ.get("EDGEPROXY_CACHE_DIR") or DEFAULT_DIR,
                        help=f"the cache directory (default: $EDGEPROXY_CACHE_DIR, else {DEFAULT_DIR})")
    parser.add_argument("--key-file", default=None, help="the sealing key (default <cache-dir>/seal.key)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        return p

    ls = action("ls", "list the views (per client and query), objects and discovery blobs")
    ls.add_argument("--client", default=None, help="only this client (e.g. kubelet, coredns@ab12cd34ef56)")
    show = action("show", "a view's metadata and its objects (names, resourceVersions, labels)")
    show.add_argument("view", help="a view id (or a unique prefix of one) from `ls`")
    get = action("get", "one object of a view (secret values redacted)")
    get.add_argument("view", help="a view id (or a unique prefix of one) from `ls`")
    get.add_argument("name", help="NAME or NAMESPACE/NAME")
    action("stats", "counters and sizes")
    action("verify", "read every record: checksums, seals, counts (exit 1 on a problem)")
    purge = action("purge", "delete everything cached (or one client's part)")
    purge.add_argument("--client", default=None, help="only this client's views, objects and blobs")


def run(args: argparse.Namespace) -> int:
    try:
        st = store.Store.open(args.cache_dir, create=False, key_file=args.key_file)
    except errors.CacheError as e:
        print(f"edgeproxy cache: {e}", file=sys.stderr)
        return 2
    try:
        return _ACTIONS[args.cache_command](st, args)
    except errors.CacheError as e:
        print(f"edgeproxy cache: {e}", file=sys.stderr)
        return 1
    finally:
        st.close()


def _view_id(key: store.ViewKey) -> str:
    return key.view_id().hex()[:12]


def _find(st: store.Store, prefix: str) -> tuple[store.ViewKey, store.ViewMeta]:
    found = [(k, m) for k, m in st.views() if k.view_id().hex().startswith(prefix.lower())]
    if not found:
        raise errors.CacheError(f"no view {prefix!r} (see `edgeproxy cache ls`)")
    if len(found) > 1:
        raise errors.CacheError(f"view id {prefix!r} is ambiguous: {', '.join(_view_id(k) for k, _ in found)}")
    return found[0]


def _age(t: float) -> str:
    s = max(0, int(time.time() - t))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _view_doc(key: store.ViewKey, meta: store.ViewMeta) -> dict:
    return {"id": _view_id(key), "client": key.client, "group": key.group, "version": key.version,
            "resource": key.resource, "namespace": key.namespace, "labelSelector": key.label_selector,
            "fieldSelector": key.field_selector, "shape": key.shape, "encoding": key.encoding, "kind": meta.kind,
            "resourceVersion": meta.resource_version, "complete": meta.complete, "items": meta.count,
            "bytes": meta.size, "updatedAt": meta.updated_at}


def _ls(st: store.Store, args: argparse.Namespace) -> int:
    views = st.views(args.client)
    objects = st.objects(args.client)
    blobs = st.blobs(args.client)
    if args.json:
        print(json.dumps({"views": [_view_doc(k, m) for k, m in views],
                          "objects": [{**dict(zip(_OBJECT_FIELDS, k.fields(), strict=True)), "bytes": n}
                                      for k, n in objects],
                          "blobs": [{"client": c, "name": name, "bytes": n} for c, name, n in blobs]}, indent=1))
        return 0
    rows = [("ID", "CLIENT", "RESOURCE", "NAMESPACE", "SELECTORS", "AS", "ITEMS", "RV", "COMPLETE", "UPDATED")]
    for k, m in views:
        sel = ",".join(s for s in (k.label_selector, k.field_selector) if s) or "-"
        gvr = f"{k.group}/{k.version}/{k.resource}" if k.group else f"{k.version}/{k.resource}"
        rows.append((_view_id(k), k.client, gvr, k.namespace or "-", sel, k.shape or k.encoding, str(m.count),
                     m.resource_version, "yes" if m.complete else "NO", _age(m.updated_at)))
    _table(rows)
    if objects:
        print()
        _table([("CLIENT", "OBJECT", "AS", "BYTES")] + [
            (k.client, "/".join(p for p in (k.group, k.version, k.resource, k.namespace, k.name) if p),
             k.shape or k.encoding, str(n)) for k, n in objects])
    if blobs:
        print()
        _table([("CLIENT", "PATH", "BYTES")] + [(c, name, str(n)) for c, name, n in blobs])
    return 0


_OBJECT_FIELDS = ("client", "group", "version", "resource", "namespace", "name", "shape", "encoding")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _show(st: store.Store, args: argparse.Namespace) -> int:
    key, _ = _find(st, args.view)
    got = st.read_view(key)
    if got is None:
        raise errors.CacheError("the view went away")
    meta, items = got
    if args.json:
        doc = _view_doc(key, meta)
        doc["objects"] = [{"namespace": i.namespace, "name": i.name, "resourceVersion": i.resource_version,
                           "labels": i.labels, "fields": i.fields, "bytes": len(i.raw)} for i in items]
        print(json.dumps(doc, indent=1))
        return 0
    print(f"view       {_view_id(key)}  {key.describe()}")
    print(f"kind       {meta.kind} ({meta.api_version})")
    print(f"rv         {meta.resource_version}")
    print(f"complete   {'yes' if meta.complete else 'NO (offline lists of it are refused)'}")
    print(f"items      {meta.count} ({meta.size} bytes)   updated {_age(meta.updated_at)} ago")
    if st.sealer is None and key.resource in st.sealed_resources:
        print("sealed     (no key: sealed items are not shown)")
    print()
    rows = [("NAMESPACE", "NAME", "RV", "BYTES", "LABELS")]
    for i in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(i.labels.items()))
        rows.append((i.namespace or "-", i.name, i.resource_version, str(len(i.raw)), labels or "-"))
    _table(rows)
    return 0


def _get(st: store.Store, args: argparse.Namespace) -> int:
    key, _ = _find(st, args.view)
    namespace, _, name = args.name.rpartition("/")
    item = st.item(key, namespace, name)
    if item is None and not namespace:
        matches = [i for i in st.items(key) if i.name == name]
        item = matches[0] if len(matches) == 1 else None
    if item is None:
        raise errors.CacheError(f"{args.name} is not in view {_view_id(key)}")
    secret = key.resource in st.sealed_resources
    doc: dict = {"namespace": item.namespace, "name": item.name, "resourceVersion": item.resource_version,
                 "labels": item.labels, "fields": item.fields, "bytes": len(item.raw)}
    if key.encoding == "json":
        try:
            obj = json.loads(item.raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and secret:
            obj = redact(obj)
        doc["object"] = obj
    else:
        doc["object"] = "(protobuf: not decoded; sealed resource, redacted)" if secret else "(protobuf: not decoded)"
    print(json.dumps(doc, indent=1 if args.json else 2))
    return 0


def redact(obj: dict) -> dict:
    """A Secret with every value replaced by its size (keys kept: they say what the secret is for)."""
    out = dict(obj)
    for field in REDACTED_KEYS:
        if isinstance(out.get(field), dict):
            out[field] = {k: f"<redacted {len(str(v))} bytes>" for k, v in out[field].items()}
    ann = out.get("metadata", {}).get("annotations") if isinstance(out.get("metadata"), dict) else None
    if isinstance(ann, dict) and "kubectl.kubernetes.io/last-applied-configuration" in ann:
        out["metadata"] = {**out["metadata"], "annotations": {
            **ann, "kubectl.kubernetes.io/last-applied-configuration": "<redacted>"}}
    return out


def _stats(st: store.Store, args: argparse.Namespace) -> int:
    stats = st.stats()
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        for k, v in stats.items():
            print(f"{k:<16} {v}")
    return 0


def _verify(st: store.Store, args: argparse.Namespace) -> int:
    report = st.verify()
    problems = list(report.problems)
    key_problem = _key_problem(args)
    if key_problem is not None:
        problems.append(store.Problem("seal", b"seal.key", f"{key_problem}: the proxy cannot open this cache (it "
                                                          "forwards without one) until the key is restored or the "
                                                          "cache purged"))
    if args.json:
        print(json.dumps({"ok": not problems, "views": report.views, "items": report.items,
                          "objects": report.objects, "blobs": report.blobs, "sealedUnopened": report.sealed_unopened,
                          "problems": [{"db": p.db, "key": p.key.hex(), "what": p.what} for p in problems]},
                         indent=1))
    else:
        print(f"{report.views} views, {report.items} items, {report.objects} objects, {report.blobs} blobs checked")
        if report.sealed_unopened:
            print(f"{report.sealed_unopened} sealed records not checked (no key)")
        for p in problems:
            print(f"PROBLEM {p.db} {p.key!r}: {p.what}")
        print("ok" if not problems else f"{len(problems)} problem(s): the proxy skips these records")
    return 0 if not problems else 1


def _key_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a sealing key this operator can read (an unreadable one is not theirs to check)."""
    path = args.key_file or os.path.join(args.cache_dir, store.KEY_FILE)
    if not os.path.exists(path) or not os.access(path, os.R_OK):
        return None
    try:
        seal.load_or_create_key(path, create=False)
    except errors.SealError as e:
        return str(e)
    return None


def _purge(st: store.Store, args: argparse.Namespace) -> int:
    n = st.purge(args.client)
    print(f"purged {n} views/objects/blobs" + (f" of {args.client}" if args.client else ""))
    return 0


_ACTIONS = {"ls": _ls, "show": _show, "get": _get, "stats": _stats, "verify": _verify, "purge": _purge}
