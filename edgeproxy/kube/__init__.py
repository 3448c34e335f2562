"""The Kubernetes wire, as pure functions: bytes in, values out; no I/O, no asyncio, no sockets.

request    RequestInfo from (method, path, query, headers), as the API server's RequestInfoFactory derives it;
           Accept negotiation for what a cache can serve; the client (component, token identity)
protobuf   schema-less reader/writer for the "k8s\\0" envelope, lists, watch frames, ObjectMeta, selector fields
jsonwire   the same for JSON
watch      incremental splitters for JSON and protobuf watch streams
selectors  label and field selectors: parse, canonical form, match, per-resource fields, covers()
status     metav1.Status errors, JSON or protobuf, and watch ERROR events, byte-identical to the server's
goquote    Go's %q, so error messages read exactly as kube-apiserver's
duration   Go's time.ParseDuration, for the `timeout` query parameter
meta       Meta, the ObjectMeta value both encodings yield
errors     KubeError and its leaves; each carries the HTTP status to answer with
"""
