"""A Kubernetes API simulator that speaks JSON and protobuf as a real kube-apiserver does (see tests/fixtures)."""
