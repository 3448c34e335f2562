"""JSON ⇄ protobuf for the kinds the simulator serves, driven by field tables that mirror k8s.io/api.

`to_protobuf(obj)` gives the bare message bytes (no "k8s\\0" envelope) that a kube-apiserver's gogo-generated
marshaller writes for the same object; `to_json(kind, raw)` gives the dict its JSON encoder would. Pure, no I/O.
Neighbours: protobuf (envelope, lists, watch frames: wraps what this module encodes), jsonwire (JSON bytes).

The tables follow k8s.io/api `*/generated.proto` (field numbers) and `types.go` (JSON names, Go pointer-ness,
omitempty) at the server version of tests/fixtures (v1.32). One line per field:

    <number> <jsonName> <type>[[]] [flags]     type: string bool int32 int64 bytes Time MicroTime Quantity
                                                     IntOrString FieldsV1 map:<valuetype> or a message name
    flags: *  a Go pointer (or optional): written only when set; other scalars and structs are always written,
              empty or zero, as gogo's generated Marshal does
           n  JSON without omitempty: written even when empty ("ready": false, "endpoints": null)
           i  inline (Go `json:",inline"`): the message's JSON fields sit in the parent object

Fields the tables do not know: protobuf → JSON skips them (and keeps going); JSON → protobuf drops them. A message
type the tables do not define makes its field unknown in both directions (Affinity, most volume plugins,
ephemeral containers, ...): enough for the objects kubelet, kube-proxy and CoreDNS read, not a full API schema.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeproxy.kube import errors, protobuf

# kind -> (apiVersion, message)
KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("v1", "Pod"),
    "Node": ("v1", "Node"),
    "Service": ("v1", "Service"),
    "ConfigMap": ("v1", "ConfigMap"),
    "Secret": ("v1", "Secret"),
    "Namespace": ("v1", "Namespace"),
    "Event": ("v1", "Event"),
    "EndpointSlice": ("discovery.k8s.io/v1", "EndpointSlice"),
    "Lease": ("coordination.k8s.io/v1", "Lease"),
    "RuntimeClass": ("node.k8s.io/v1", "RuntimeClass"),
    "CSIDriver": ("storage.k8s.io/v1", "CSIDriver"),
    "Status": ("v1", "Status"),
    "ServiceAccount": ("v1", "ServiceAccount"),
    "CSINode": ("storage.k8s.io/v1", "CSINode"),
    "TokenRequest": ("authentication.k8s.io/v1", "TokenRequest"),
    "DeleteOptions": ("meta.k8s.io/v1", "DeleteOptions"),
}
# kinds whose name another group also uses: (apiVersion, kind) -> message
GROUP_KINDS: dict[tuple[str, str], str] = {("events.k8s.io/v1", "Event"): "EventsV1Event"}

_TABLES = """
ObjectMeta
  1 name string
  2 generateName string
  3 namespace string
  4 selfLink string
  5 uid string
  6 resourceVersion string
  7 generation int64
  8 creationTimestamp Time
  9 deletionTimestamp Time *
  10 deletionGracePeriodSeconds int64 *
  11 labels map:string
  12 annotations map:string
  13 ownerReferences OwnerReference[]
  14 finalizers string[]
  17 managedFields ManagedFieldsEntry[]
OwnerReference
  5 apiVersion string n
  1 kind string n
  3 name string n
  4 uid string n
  6 controller bool *
  7 blockOwnerDeletion bool *
ManagedFieldsEntry
  1 manager string
  2 operation string
  3 apiVersion string
  4 time Time *
  6 fieldsType string
  7 fieldsV1 FieldsV1 *
  8 subresource string
ListMeta
  1 selfLink string
  2 resourceVersion string
  3 continue string
  4 remainingItemCount int64 *
Status
  1 metadata ListMeta
  2 status string
  3 message string
  4 reason string
  5 details StatusDetails *
  6 code int32
StatusDetails
  1 name string
  2 group string
  3 kind string
  6 uid string
  4 causes StatusCause[]
  5 retryAfterSeconds int32
StatusCause
  1 reason string
  2 message string
  3 field string
Condition
  1 type string n
  2 status string n
  3 observedGeneration int64
  4 lastTransitionTime Time
  5 reason string n
  6 message string n

Pod
  1 metadata ObjectMeta
  2 spec PodSpec
  3 status PodStatus
PodSpec
  1 volumes Volume[]
  20 initContainers Container[]
  2 containers Container[] n
  3 restartPolicy string
  4 terminationGracePeriodSeconds int64 *
  5 activeDeadlineSeconds int64 *
  6 dnsPolicy string
  7 nodeSelector map:string
  8 serviceAccountName string
  9 serviceAccount string
  21 automountServiceAccountToken bool *
  10 nodeName string
  11 hostNetwork bool
  12 hostPID bool
  13 hostIPC bool
  27 shareProcessNamespace bool *
  14 securityContext PodSecurityContext *
  15 imagePullSecrets LocalObjectReference[]
  16 hostname string
  17 subdomain string
  19 schedulerName string
  22 tolerations Toleration[]
  23 hostAliases HostAlias[]
  24 priorityClassName string
  25 priority int32 *
  28 readinessGates PodReadinessGate[]
  29 runtimeClassName string *
  30 enableServiceLinks bool *
  31 preemptionPolicy string *
  32 overhead map:Quantity
  35 setHostnameAsFQDN bool *
  36 os PodOS *
  37 hostUsers bool *
  38 schedulingGates PodSchedulingGate[]
  40 resources ResourceRequirements *
Container
  1 name string n
  2 image string
  3 command string[]
  4 args string[]
  5 workingDir string
  6 ports ContainerPort[]
  19 envFrom EnvFromSource[]
  7 env EnvVar[]
  8 resources ResourceRequirements
  23 resizePolicy ContainerResizePolicy[]
  24 restartPolicy string *
  9 volumeMounts VolumeMount[]
  21 volumeDevices VolumeDevice[]
  10 livenessProbe Probe *
  11 readinessProbe Probe *
  22 startupProbe Probe *
  12 lifecycle Lifecycle *
  13 terminationMessagePath string
  20 terminationMessagePolicy string
  14 imagePullPolicy string
  15 securityContext SecurityContext *
  16 stdin bool
  17 stdinOnce bool
  18 tty bool
ContainerPort
  1 name string
  2 hostPort int32
  3 containerPort int32 n
  4 protocol string
  5 hostIP string
EnvFromSource
  1 prefix string
  2 configMapRef ConfigMapEnvSource *
  3 secretRef SecretEnvSource *
ConfigMapEnvSource
  1 localObjectReference LocalObjectReference i
  2 optional bool *
SecretEnvSource
  1 localObjectReference LocalObjectReference i
  2 optional bool *
EnvVar
  1 name string n
  2 value string
  3 valueFrom EnvVarSource *
EnvVarSource
  1 fieldRef ObjectFieldSelector *
  2 resourceFieldRef ResourceFieldSelector *
  3 configMapKeyRef ConfigMapKeySelector *
  4 secretKeyRef SecretKeySelector *
ObjectFieldSelector
  1 apiVersion string
  2 fieldPath string n
ResourceFieldSelector
  1 containerName string
  2 resource string n
  3 divisor Quantity
ConfigMapKeySelector
  1 localObjectReference LocalObjectReference i
  2 key string n
  3 optional bool *
SecretKeySelector
  1 localObjectReference LocalObjectReference i
  2 key string n
  3 optional bool *
LocalObjectReference
  1 name string
ResourceRequirements
  1 limits map:Quantity
  2 requests map:Quantity
  3 claims ResourceClaim[]
ResourceClaim
  1 name string n
  2 request string
ContainerResizePolicy
  1 resourceName string n
  2 restartPolicy string n
VolumeMount
  1 name string n
  2 readOnly bool
  7 recursiveReadOnly string *
  3 mountPath string n
  4 subPath string
  5 mountPropagation string *
  6 subPathExpr string
VolumeDevice
  1 name string n
  2 devicePath string n
Probe
  1 handler ProbeHandler i
  2 initialDelaySeconds int32
  3 timeoutSeconds int32
  4 periodSeconds int32
  5 successThreshold int32
  6 failureThreshold int32
  7 terminationGracePeriodSeconds int64 *
ProbeHandler
  1 exec ExecAction *
  2 httpGet HTTPGetAction *
  3 tcpSocket TCPSocketAction *
  4 grpc GRPCAction *
ExecAction
  1 command string[]
HTTPGetAction
  1 path string
  2 port IntOrString
  3 host string
  4 scheme string
  5 httpHeaders HTTPHeader[]
HTTPHeader
  1 name string n
  2 value string n
TCPSocketAction
  1 port IntOrString
  2 host string
GRPCAction
  1 port int32 n
  2 service string *
Lifecycle
  1 postStart LifecycleHandler *
  2 preStop LifecycleHandler *
LifecycleHandler
  1 exec ExecAction *
  2 httpGet HTTPGetAction *
  3 tcpSocket TCPSocketAction *
  4 sleep SleepAction *
SleepAction
  1 seconds int64 n
SecurityContext
  1 capabilities Capabilities *
  2 privileged bool *
  3 seLinuxOptions SELinuxOptions *
  4 runAsUser int64 *
  8 runAsGroup int64 *
  5 runAsNonRoot bool *
  6 readOnlyRootFilesystem bool *
  7 allowPrivilegeEscalation bool *
  9 procMount string *
  11 seccompProfile SeccompProfile *
  12 appArmorProfile AppArmorProfile *
Capabilities
  1 add string[]
  2 drop string[]
SELinuxOptions
  1 user string
  2 role string
  3 type string
  4 level string
SeccompProfile
  1 type string n
  2 localhostProfile string *
AppArmorProfile
  1 type string n
  2 localhostProfile string *
PodSecurityContext
  1 seLinuxOptions SELinuxOptions *
  2 runAsUser int64 *
  6 runAsGroup int64 *
  3 runAsNonRoot bool *
  4 supplementalGroups int64[]
  12 supplementalGroupsPolicy string *
  5 fsGroup int64 *
  7 sysctls Sysctl[]
  9 fsGroupChangePolicy string *
  10 seccompProfile SeccompProfile *
  11 appArmorProfile AppArmorProfile *
  13 seLinuxChangePolicy string *
Sysctl
  1 name string n
  2 value string n
Volume
  1 name string n
  2 volumeSource VolumeSource i
VolumeSource
  1 hostPath HostPathVolumeSource *
  2 emptyDir EmptyDirVolumeSource *
  6 secret SecretVolumeSource *
  7 nfs NFSVolumeSource *
  10 persistentVolumeClaim PersistentVolumeClaimVolumeSource *
  16 downwardAPI DownwardAPIVolumeSource *
  19 configMap ConfigMapVolumeSource *
  26 projected ProjectedVolumeSource *
  28 csi CSIVolumeSource *
  30 image ImageVolumeSource *
HostPathVolumeSource
  1 path string n
  2 type string *
EmptyDirVolumeSource
  1 medium string
  2 sizeLimit Quantity *
SecretVolumeSource
  1 secretName string
  2 items KeyToPath[]
  3 defaultMode int32 *
  4 optional bool *
NFSVolumeSource
  1 server string n
  2 path string n
  3 readOnly bool
PersistentVolumeClaimVolumeSource
  1 claimName string n
  2 readOnly bool
DownwardAPIVolumeSource
  1 items DownwardAPIVolumeFile[]
  2 defaultMode int32 *
ConfigMapVolumeSource
  1 localObjectReference LocalObjectReference i
  2 items KeyToPath[]
  3 defaultMode int32 *
  4 optional bool *
ProjectedVolumeSource
  1 sources VolumeProjection[] n
  2 defaultMode int32 *
VolumeProjection
  1 secret SecretProjection *
  2 downwardAPI DownwardAPIProjection *
  3 configMap ConfigMapProjection *
  4 serviceAccountToken ServiceAccountTokenProjection *
SecretProjection
  1 localObjectReference LocalObjectReference i
  2 items KeyToPath[]
  4 optional bool *
ConfigMapProjection
  1 localObjectReference LocalObjectReference i
  2 items KeyToPath[]
  4 optional bool *
DownwardAPIProjection
  1 items DownwardAPIVolumeFile[]
ServiceAccountTokenProjection
  1 audience string
  2 expirationSeconds int64 *
  3 path string n
KeyToPath
  1 key string n
  2 path string n
  3 mode int32 *
DownwardAPIVolumeFile
  1 path string n
  2 fieldRef ObjectFieldSelector *
  3 resourceFieldRef ResourceFieldSelector *
  4 mode int32 *
CSIVolumeSource
  1 driver string n
  2 readOnly bool *
  3 fsType string *
  4 volumeAttributes map:string
  5 nodePublishSecretRef LocalObjectReference *
ImageVolumeSource
  1 reference string
  2 pullPolicy string
Toleration
  1 key string
  2 operator string
  3 value string
  4 effect string
  5 tolerationSeconds int64 *
HostAlias
  1 ip string n
  2 hostnames string[]
PodReadinessGate
  1 conditionType string n
PodOS
  1 name string n
PodSchedulingGate
  1 name string n
PodStatus
  1 phase string
  2 conditions PodCondition[]
  3 message string
  4 reason string
  11 nominatedNodeName string
  5 hostIP string
  16 hostIPs HostIP[]
  6 podIP string
  12 podIPs PodIP[]
  7 startTime Time *
  10 initContainerStatuses ContainerStatus[]
  8 containerStatuses ContainerStatus[]
  9 qosClass string
  13 ephemeralContainerStatuses ContainerStatus[]
  14 resize string
PodCondition
  1 type string n
  2 status string n
  3 lastProbeTime Time
  4 lastTransitionTime Time
  5 reason string
  6 message string
HostIP
  1 ip string n
PodIP
  1 ip string n
ContainerStatus
  1 name string n
  2 state ContainerState
  3 lastState ContainerState
  4 ready bool n
  5 restartCount int32 n
  6 image string n
  7 imageID string n
  8 containerID string
  9 started bool *
  10 allocatedResources map:Quantity
  11 resources ResourceRequirements *
  12 volumeMounts VolumeMountStatus[]
VolumeMountStatus
  1 name string n
  2 mountPath string n
  3 readOnly bool
  4 recursiveReadOnly string *
ContainerState
  1 waiting ContainerStateWaiting *
  2 running ContainerStateRunning *
  3 terminated ContainerStateTerminated *
ContainerStateWaiting
  1 reason string
  2 message string
ContainerStateRunning
  1 startedAt Time
ContainerStateTerminated
  1 exitCode int32 n
  2 signal int32
  3 reason string
  4 message string
  5 startedAt Time
  6 finishedAt Time
  7 containerID string

Node
  1 metadata ObjectMeta
  2 spec NodeSpec
  3 status NodeStatus
NodeSpec
  1 podCIDR string
  7 podCIDRs string[]
  3 providerID string
  4 unschedulable bool
  5 taints Taint[]
  2 externalID string
Taint
  1 key string n
  2 value string
  3 effect string n
  4 timeAdded Time *
NodeStatus
  1 capacity map:Quantity
  2 allocatable map:Quantity
  3 phase string
  4 conditions NodeCondition[]
  5 addresses NodeAddress[]
  6 daemonEndpoints NodeDaemonEndpoints
  7 nodeInfo NodeSystemInfo
  8 images ContainerImage[]
  9 volumesInUse string[]
  10 volumesAttached AttachedVolume[]
  12 runtimeHandlers NodeRuntimeHandler[]
  13 features NodeFeatures *
NodeCondition
  1 type string n
  2 status string n
  3 lastHeartbeatTime Time
  4 lastTransitionTime Time
  5 reason string
  6 message string
NodeAddress
  1 type string n
  2 address string n
NodeDaemonEndpoints
  1 kubeletEndpoint DaemonEndpoint
DaemonEndpoint
  1 Port int32 n
NodeSystemInfo
  1 machineID string n
  2 systemUUID string n
  3 bootID string n
  4 kernelVersion string n
  5 osImage string n
  6 containerRuntimeVersion string n
  7 kubeletVersion string n
  8 kubeProxyVersion string n
  9 operatingSystem string n
  10 architecture string n
ContainerImage
  1 names string[] n
  2 sizeBytes int64
AttachedVolume
  1 name string n
  2 devicePath string n
NodeRuntimeHandler
  1 name string n
  2 features NodeRuntimeHandlerFeatures *
NodeRuntimeHandlerFeatures
  1 recursiveReadOnlyMounts bool *
  2 userNamespaces bool *
NodeFeatures
  1 supplementalGroupsPolicy bool *

Service
  1 metadata ObjectMeta
  2 spec ServiceSpec
  3 status ServiceStatus
ServiceSpec
  1 ports ServicePort[]
  2 selector map:string
  3 clusterIP string
  18 clusterIPs string[]
  4 type string
  5 externalIPs string[]
  7 sessionAffinity string
  8 loadBalancerIP string
  9 loadBalancerSourceRanges string[]
  10 externalName string
  11 externalTrafficPolicy string
  12 healthCheckNodePort int32
  13 publishNotReadyAddresses bool
  14 sessionAffinityConfig SessionAffinityConfig *
  19 ipFamilies string[]
  17 ipFamilyPolicy string *
  20 allocateLoadBalancerNodePorts bool *
  21 loadBalancerClass string *
  22 internalTrafficPolicy string *
  23 trafficDistribution string *
ServicePort
  1 name string
  2 protocol string
  6 appProtocol string *
  3 port int32 n
  4 targetPort IntOrString
  5 nodePort int32
SessionAffinityConfig
  1 clientIP ClientIPConfig *
ClientIPConfig
  1 timeoutSeconds int32 *
ServiceStatus
  1 loadBalancer LoadBalancerStatus
  2 conditions Condition[]
LoadBalancerStatus
  1 ingress LoadBalancerIngress[]
LoadBalancerIngress
  1 ip string
  2 hostname string
  3 ipMode string *
  4 ports PortStatus[]
PortStatus
  1 port int32 n
  2 protocol string n
  3 error string *

ConfigMap
  1 metadata ObjectMeta
  4 immutable bool *
  2 data map:string
  3 binaryData map:bytes
Secret
  1 metadata ObjectMeta
  5 immutable bool *
  2 data map:bytes
  4 stringData map:string
  3 type string
Namespace
  1 metadata ObjectMeta
  2 spec NamespaceSpec
  3 status NamespaceStatus
NamespaceSpec
  1 finalizers string[]
NamespaceStatus
  1 phase string
  2 conditions NamespaceCondition[]
NamespaceCondition
  1 type string n
  2 status string n
  4 lastTransitionTime Time
  5 reason string
  6 message string
Event
  1 metadata ObjectMeta
  2 involvedObject ObjectReference
  3 reason string
  4 message string
  5 source EventSource
  6 firstTimestamp Time
  7 lastTimestamp Time
  8 count int32
  9 type string
  10 eventTime MicroTime
  11 series EventSeries *
  12 action string
  13 related ObjectReference *
  14 reportingComponent string n
  15 reportingInstance string n
EventSource
  1 component string
  2 host string
EventSeries
  1 count int32
  2 lastObservedTime MicroTime
ObjectReference
  1 kind string
  2 namespace string
  3 name string
  4 uid string
  5 apiVersion string
  6 resourceVersion string
  7 fieldPath string

EndpointSlice
  1 metadata ObjectMeta
  4 addressType string n
  2 endpoints Endpoint[] n
  3 ports EndpointPort[] n
Endpoint
  1 addresses string[] n
  2 conditions EndpointConditions
  3 hostname string *
  4 targetRef ObjectReference *
  5 deprecatedTopology map:string
  6 nodeName string *
  7 zone string *
  8 hints EndpointHints *
EndpointConditions
  1 ready bool *
  2 serving bool *
  3 terminating bool *
EndpointHints
  1 forZones ForZone[]
  2 forNodes ForNode[]
ForZone
  1 name string n
ForNode
  1 name string n
EndpointPort
  1 name string *
  2 protocol string *
  3 port int32 *
  4 appProtocol string *

Lease
  1 metadata ObjectMeta
  2 spec LeaseSpec
LeaseSpec
  1 holderIdentity string *
  2 leaseDurationSeconds int32 *
  3 acquireTime MicroTime *
  4 renewTime MicroTime *
  5 leaseTransitions int32 *
  6 strategy string *
  7 preferredHolder string *
RuntimeClass
  1 metadata ObjectMeta
  2 handler string n
  3 overhead Overhead *
  4 scheduling Scheduling *
Overhead
  1 podFixed map:Quantity
Scheduling
  1 nodeSelector map:string
  2 tolerations Toleration[]
CSIDriver
  1 metadata ObjectMeta
  2 spec CSIDriverSpec
CSIDriverSpec
  1 attachRequired bool *
  2 podInfoOnMount bool *
  3 volumeLifecycleModes string[]
  4 storageCapacity bool *
  5 fsGroupPolicy string *
  6 tokenRequests CSIDriverTokenRequest[]
  7 requiresRepublish bool *
  8 seLinuxMount bool *
  9 nodeAllocatableUpdatePeriodSeconds int64 *
TokenRequest
  1 metadata ObjectMeta
  2 spec TokenRequestSpec
  3 status TokenRequestStatus
TokenRequestSpec
  1 audiences string[] n
  4 expirationSeconds int64 *
  3 boundObjectRef BoundObjectReference *
BoundObjectReference
  1 kind string
  2 apiVersion string
  3 name string
  4 uid string
TokenRequestStatus
  1 token string n
  2 expirationTimestamp Time
CSIDriverTokenRequest
  1 audience string n
  2 expirationSeconds int64 *
ServiceAccount
  1 metadata ObjectMeta
  2 secrets ObjectReference[]
  3 imagePullSecrets LocalObjectReference[]
  4 automountServiceAccountToken bool *
CSINode
  1 metadata ObjectMeta
  2 spec CSINodeSpec
CSINodeSpec
  1 drivers CSINodeDriver[] n
CSINodeDriver
  1 name string n
  2 nodeID string n
  3 topologyKeys string[] n
  4 allocatable VolumeNodeResources *
VolumeNodeResources
  1 count int32 *
EventsV1Event
  1 metadata ObjectMeta
  2 eventTime MicroTime
  3 series EventsV1EventSeries *
  4 reportingController string
  5 reportingInstance string
  6 action string
  7 reason string
  8 regarding ObjectReference
  9 related ObjectReference *
  10 note string
  11 type string
  12 deprecatedSource EventSource
  13 deprecatedFirstTimestamp Time
  14 deprecatedLastTimestamp Time
  15 deprecatedCount int32
EventsV1EventSeries
  1 count int32 n
  2 lastObservedTime MicroTime
DeleteOptions
  1 gracePeriodSeconds int64 *
  2 preconditions Preconditions *
  3 orphanDependents bool *
  4 propagationPolicy string *
  5 dryRun string[]
Preconditions
  1 uid string *
  2 resourceVersion string *
"""

_SCALARS = frozenset(
    {"string", "bool", "int32", "int64", "bytes", "Time", "MicroTime", "Quantity", "IntOrString", "FieldsV1"}
)


@dataclass(frozen=True, slots=True)
class Field:
    no: int
    name: str  # JSON name
    type: str  # a scalar of _SCALARS or a message name
    repeated: bool = False
    map_value: str | None = None  # map<string, map_value>
    pointer: bool = False  # written only when set
    json_always: bool = False  # JSON without omitempty
    inline: bool = False


def _parse_tables(text: str) -> dict[str, tuple[Field, ...]]:
    tables: dict[str, list[Field]] = {}
    current: list[Field] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = tables.setdefault(line.strip(), [])
            continue
        no, name, typ, *flags = line.split()
        flag = "".join(flags)
        repeated = typ.endswith("[]")
        typ = typ.removesuffix("[]")
        map_value = None
        if typ.startswith("map:"):
            map_value = typ[4:]
        current.append(Field(int(no), name, typ, repeated, map_value, "*" in flag, "n" in flag, "i" in flag))
    out = {k: tuple(v) for k, v in tables.items()}
    for msg, fields in out.items():
        for f in fields:
            t = f.map_value or f.type
            if t not in _SCALARS and t not in out:
                raise AssertionError(f"schema: {msg}.{f.name} refers to unknown message {t}")
    return out


MESSAGES: dict[str, tuple[Field, ...]] = _parse_tables(_TABLES)

# ---------------------------------------------------------------------------------------------- time


@functools.lru_cache(maxsize=4096)
def _parse_time(s: str) -> tuple[int, int]:
    dt = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    seconds = int(dt.timestamp() // 1)
    return seconds, dt.microsecond * 1000


@functools.lru_cache(maxsize=4096)
def _format_time(seconds: int, nanos: int, micro: bool) -> str:
    dt = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    if micro:  # metav1.RFC3339Micro
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos // 1000:06d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # metav1.Time marshals at second precision


def _timestamp(seconds: int, nanos: int) -> bytes:
    # k8s.io/apimachinery meta/v1 Timestamp{seconds=1, nanos=2}: both always written
    return protobuf.field_varint(1, seconds) + protobuf.field_varint(2, nanos)


def go_json_dumps(obj: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (HTML-escaped <, >, &, U+2028, U+2029)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if "<" in s or ">" in s or "&" in s or "\u2028" in s or "\u2029" in s:
        s = (
            s.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return s


# ---------------------------------------------------------------------------------------------- encode

_Encoder = Callable[[Any], bytes]


def _key(no: int, wt: int) -> bytes:
    return protobuf.encode_varint(no << 3 | wt)


def _len_prefixed(key: bytes, data: bytes) -> bytes:
    return key + protobuf.encode_varint(len(data)) + data


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise errors.InvalidRequest(f"expected an integer, got {v!r}")
    return v


def _scalar_payload(typ: str, v: Any) -> tuple[int, bytes]:
    """(wire type, payload without key) of one scalar value; LEN payloads exclude their length."""
    if typ == "string":
        if not isinstance(v, str):
            raise errors.InvalidRequest(f"expected a string, got {v!r}")
        return protobuf.LEN, v.encode()
    if typ == "bool":
        return protobuf.VARINT, b"\x01" if v else b"\x00"
    if typ in ("int32", "int64"):
        return protobuf.VARINT, protobuf.encode_varint(_int(v))
    if typ == "bytes":
        return protobuf.LEN, base64.b64decode(v) if isinstance(v, str) else bytes(v)
    if typ in ("Time", "MicroTime"):
        if v is None:
            return protobuf.LEN, b""  # metav1.Time zero value marshals to nothing
        return protobuf.LEN, _timestamp(*_parse_time(v))
    if typ == "Quantity":
        return protobuf.LEN, protobuf.field_bytes(1, str(v).encode())
    if typ == "IntOrString":
        if isinstance(v, str):
            return protobuf.LEN, b"\x08\x01\x10\x00" + protobuf.field_bytes(3, v.encode())
        return protobuf.LEN, b"\x08\x00" + protobuf.field_varint(2, _int(v)) + b"\x1a\x00"
    if typ == "FieldsV1":
        raw = v if isinstance(v, str) else go_json_dumps(v)
        return protobuf.LEN, protobuf.field_bytes(1, raw.encode())
    raise AssertionError(typ)


_ZERO: dict[str, Any] = {
    "string": "",
    "bool": False,
    "int32": 0,
    "int64": 0,
    "Time": None,
    "MicroTime": None,
    "Quantity": "0",
    "IntOrString": 0,
}


# scalars whose zero value JSON omits (omitempty); structs (messages, Time, Quantity, IntOrString) never are
_OMITTABLE = frozenset({"string", "bool", "int32", "int64"})


# Objects cloned by the thousand share unchanged sub-objects; with a memo (id -> (object, bytes)) each shared dict
# is encoded once per memo. The memo keeps the object referenced so its id cannot be reused while it lives.
_Memo = dict[tuple[int, object], tuple[dict | list, bytes]]
_local = threading.local()  # .memo: the batch memo of this thread's to_protobuf call, if any


def _encode_message(msg: str, obj: dict) -> bytes:
    memo = getattr(_local, "memo", None)
    if memo is not None:
        hit = memo.get((id(obj), msg))
        if hit is not None and hit[0] is obj:
            return hit[1]
    parts: list[tuple[int, bytes]] = []
    _collect(msg, obj, parts)
    parts.sort(key=lambda p: p[0])  # gogo writes fields in field-number order
    out = b"".join(p[1] for p in parts)
    if memo is not None:
        memo[(id(obj), msg)] = (obj, out)
    return out


def _collect(msg: str, obj: dict, parts: list[tuple[int, bytes]]) -> None:
    for f in MESSAGES[msg]:
        if f.inline:
            parts.append((f.no, _len_prefixed(_key(f.no, protobuf.LEN), _encode_message(f.type, obj))))
            continue
        v = obj.get(f.name)
        if f.map_value is not None:
            if v:
                key = _key(f.no, protobuf.LEN)
                chunks = []
                for k in sorted(v):  # gogo sorts map keys
                    entry = protobuf.field_bytes(1, k.encode()) + _value(f.map_value, 2, v[k])
                    chunks.append(_len_prefixed(key, entry))
                parts.append((f.no, b"".join(chunks)))
            continue
        if f.repeated:
            if v:
                memo = getattr(_local, "memo", None)
                hit = memo.get((id(v), f)) if memo is not None else None
                if hit is not None and hit[0] is v:
                    parts.append((f.no, hit[1]))
                    continue
                data = b"".join(_value(f.type, f.no, x) for x in v)
                if memo is not None:
                    memo[(id(v), f)] = (v, data)
                parts.append((f.no, data))
            continue
        if v is None:
            if f.pointer:
                continue
            if f.type in MESSAGES:
                v = {}
            elif f.type == "bytes":
                continue
            else:
                v = _ZERO[f.type]
        parts.append((f.no, _value(f.type, f.no, v)))


def _value(typ: str, no: int, v: Any) -> bytes:
    if typ in MESSAGES:
        if not isinstance(v, dict):
            raise errors.InvalidRequest(f"expected an object for {typ}, got {type(v).__name__}")
        return _len_prefixed(_key(no, protobuf.LEN), _encode_message(typ, v))
    wt, payload = _scalar_payload(typ, v)
    if wt == protobuf.VARINT:
        return _key(no, wt) + payload
    return _len_prefixed(_key(no, wt), payload)


def _message(kind: str | None, api_version: str | None) -> str:
    msg = GROUP_KINDS.get((api_version or "", kind or ""))
    if msg is not None:
        return msg
    if kind not in KINDS:
        raise errors.InvalidRequest(f"schema: no protobuf table for kind {kind!r}")
    return KINDS[kind][1]


def to_protobuf(obj: dict, kind: str | None = None, memo: _Memo | None = None, api_version: str | None = None) -> bytes:
    """The bare protobuf message of a JSON object (kind and apiVersion from the object unless given; the
    apiVersion matters only for kinds two groups define, GROUP_KINDS); unknown fields dropped.

    `memo` (a dict the caller keeps for a batch, and must not keep objects in it that it changes afterwards)
    encodes sub-objects shared between the batch's objects once."""
    msg = _message(kind or obj.get("kind"), api_version or obj.get("apiVersion"))
    if memo is None:
        return _encode_message(msg, obj)
    _local.memo = memo
    try:
        return _encode_message(msg, obj)
    finally:
        _local.memo = None


def list_item_kind(list_kind: str) -> str:
    return list_kind.removesuffix("List")


# ---------------------------------------------------------------------------------------------- decode


def _decode_message(msg: str, raw: bytes | memoryview) -> dict:
    fields = MESSAGES[msg]
    got: dict[int, list[Any]] = {}
    for no, _wt, v in protobuf.iter_fields(raw):
        got.setdefault(no, []).append(v)
    out: dict[str, Any] = {}
    _emit(fields, got, out)
    return out


def _emit(fields: tuple[Field, ...], got: dict[int, list[Any]], out: dict[str, Any]) -> None:
    for f in fields:
        vals = got.get(f.no)
        if f.inline:
            sub = _decode_message(f.type, vals[-1]) if vals else _decode_message(f.type, b"")
            out.update(sub)
            continue
        if f.map_value is not None:
            if vals:
                m: dict[str, Any] = {}
                for entry in vals:
                    k, val = "", None
                    for eno, _ewt, ev in protobuf.iter_fields(entry):
                        if eno == 1:
                            k = bytes(ev).decode()
                        elif eno == 2:
                            val = ev
                    m[k] = _scalar(f.map_value, val) if val is not None else _empty(f.map_value)
                out[f.name] = m
            continue
        if f.repeated:
            if vals:
                out[f.name] = [_scalar(f.type, v) for v in vals]
            elif f.json_always:
                out[f.name] = None
            continue
        if not vals:
            if f.pointer:
                continue
            if f.type in MESSAGES:
                out[f.name] = _decode_message(f.type, b"")
            elif f.type in ("Time", "MicroTime"):
                out[f.name] = None
            elif f.type == "bytes":
                continue
            elif f.json_always or f.type in ("Quantity", "IntOrString"):
                out[f.name] = _ZERO[f.type]
            continue
        v = _scalar(f.type, vals[-1])
        if f.pointer or f.json_always or f.type not in _OMITTABLE or v != _ZERO[f.type]:
            out[f.name] = v


def _empty(typ: str) -> Any:
    if typ == "bytes":
        return ""
    return _ZERO.get(typ)


def _scalar(typ: str, v: Any) -> Any:
    if typ in MESSAGES:
        return _decode_message(typ, v)
    if typ == "string":
        return bytes(v).decode()
    if typ == "bool":
        return bool(v)
    if typ in ("int32", "int64"):
        if v >= 1 << 63:
            v -= 1 << 64
        if typ == "int32" and v >= 1 << 31:
            v -= 1 << 32
        return v
    if typ == "bytes":
        return base64.b64encode(bytes(v)).decode()
    if typ in ("Time", "MicroTime"):
        if not len(v):
            return None
        seconds = nanos = 0
        for no, _wt, x in protobuf.iter_fields(v):
            if no == 1:
                seconds = x - (1 << 64) if x >= 1 << 63 else x
            elif no == 2:
                nanos = x
        return _format_time(seconds, nanos, typ == "MicroTime")
    if typ == "Quantity":
        for no, _wt, x in protobuf.iter_fields(v):
            if no == 1:
                return bytes(x).decode()
        return "0"
    if typ == "IntOrString":
        kind, ival, sval = 0, 0, ""
        for no, _wt, x in protobuf.iter_fields(v):
            if no == 1:
                kind = x
            elif no == 2:
                ival = x - (1 << 64) if x >= 1 << 63 else x
            elif no == 3:
                sval = bytes(x).decode()
        return sval if kind == 1 else ival
    if typ == "FieldsV1":
        for no, _wt, x in protobuf.iter_fields(v):
            if no == 1:
                return json.loads(bytes(x))
        return None
    raise AssertionError(typ)


def to_json(kind: str, raw: bytes | memoryview, *, typed: bool = True, api_version: str | None = None) -> dict:
    """The JSON dict of a bare protobuf message; `typed` puts kind/apiVersion first (as a GET returns it,
    not as a list item). Fields the table does not know are skipped."""
    msg = _message(kind, api_version)
    api_version = api_version or KINDS[kind][0]
    body = _decode_message(msg, raw)
    if not typed:
        return body
    return {"kind": kind, "apiVersion": api_version, **body}
