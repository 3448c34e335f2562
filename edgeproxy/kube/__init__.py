"""The Kubernetes wire, as pure functions: bytes in, values out; no I/O, no asyncio, no sockets.

request    RequestInfo from (method, path, query, headers), as the API server's RequestInfoFactory derives it
protobuf   schema-less reader/writer for the "k8s\\0" envelope, lists, watch frames, ObjectMeta, selector fields
jsonwire   the same for JSON
watch      incremental splitters for JSON and protobuf watch streams
selectors  label and field selectors: parse, canonical form, match
status     metav1.Status errors
meta       Meta, the ObjectMeta value both encodings yield
errors     KubeError and its leaves; each carries the HTTP status to answer with
"""
