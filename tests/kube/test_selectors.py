"""Label and field selectors: the API server's grammar, messages and matching; one canonical string per meaning."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from edgeproxy.kube import errors, selectors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROXY_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"

# --- label selectors: parse + canonical -----------------------------------------------------------------------------

CANONICAL = [
    ("", ""),
    ("   ", ""),
    ("app", "app"),
    ("!app", "!app"),
    ("app=web", "app=web"),
    ("app==web", "app=web"),
    ("app = web", "app=web"),
    ("app!=web", "app!=web"),
    ("app=", "app="),
    ("app in (web)", "app=web"),
    ("app notin (web)", "app!=web"),
    ("app in ()", "app="),
    ("app in (web,db)", "app in (db,web)"),
    ("app in (web, db , web)", "app in (db,web)"),
    ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z!="),
    ("tier notin (a,b),app", "app,tier notin (a,b)"),
    ("replicas>3", "replicas>3"),
    ("replicas>03", "replicas>3"),
    ("replicas<10", "replicas<10"),
    (PROXY_SELECTOR, PROXY_SELECTOR),
    ("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless", PROXY_SELECTOR),
    ("a=b,a=b", "a=b"),
    ("in in (in,notin)", "in in (in,notin)"),  # "in"/"notin" are identifiers where a key or value is expected
    ("notin", "notin"),
    ("example.com/role=edge,\tk8s.io/x", "example.com/role=edge,k8s.io/x"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_label_selector_canonical_form(text, canonical):
    sel = selectors.parse_labels(text)
    assert sel.canonical() == canonical
    assert selectors.parse_labels(canonical) == sel
    assert sel.empty == (canonical == "")


# (selector, labels, matches) — the semantics of apimachinery labels.Requirement.Matches
MATCHES = [
    ("", {}, True),
    ("app", {"app": ""}, True),
    ("app", {}, False),
    ("!app", {}, True),
    ("!app", {"app": "x"}, False),
    ("app=web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app=web", {}, False),
    ("app!=web", {}, True),  # != matches objects that lack the key
    ("app!=web", {"app": "db"}, True),
    ("app!=web", {"app": "web"}, False),
    ("app=", {"app": ""}, True),
    ("app=", {}, False),
    ("app in (web,db)", {"app": "db"}, True),
    ("app in (web,db)", {}, False),
    ("app notin (web,db)", {}, True),  # notin too
    ("app notin (web,db)", {"app": "web"}, False),
    ("app notin (web,db)", {"app": "x"}, True),
    ("n>3", {"n": "4"}, True),
    ("n>3", {"n": "3"}, False),
    ("n>3", {}, False),  # a missing label does not match > or <
    ("n<3", {}, False),
    ("n>3", {"n": "x"}, False),
    ("n<3", {"n": "-1"}, True),
    ("n<3", {"n": "+2"}, True),  # the object's value parses as strconv.ParseInt does
    (PROXY_SELECTOR, {"service.kubernetes.io/service-proxy-name": "edge-alt-proxy"}, False),
    (PROXY_SELECTOR, {"app": "web"}, True),
    ("a,b=c", {"a": "1", "b": "c"}, True),
    ("a,b=c", {"b": "c"}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCHES)
def test_label_selector_matches(text, labels, expected):
    assert selectors.parse_labels(text).matches(labels) is expected


_KEY_ERR = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
_VALUE_ERR = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
              "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
              "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
_SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_ERRORS = [
    (",", "found ',', expected: !, identifier, or 'end of string'"),
    ("a,", "found '', expected: identifier after ','"),
    ("a,,b", "found ',', expected: identifier after ','"),
    ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
    ("a=b c", "found 'c', expected: ',' or 'end of string'"),
    ("!a=b", "found '=', expected: ',' or 'end of string'"),
    ("!", "unable to parse requirement: found '', expected: identifier"),
    ("a in b", "unable to parse requirement: found 'b' expected: '('"),
    ("a in (b", "unable to parse requirement: found '', expected: ',' or ')'"),
    ("a in (b c)", "unable to parse requirement: found 'c', expected: ',' or ')'"),
    ("a in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
    ("a in (,,)", "unable to parse requirement: found ')', expected: ',', or identifier"),
    ("a in (b,,)", "unable to parse requirement: found ')', expected: ',', or identifier"),
    ("a=(", "unable to parse requirement: found '(', expected: identifier"),
    ("a>x", "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must "
            "be an integer"),
    ("a>-1", "unable to parse requirement: values[0][a]: Invalid value: \"-1\": " + _VALUE_ERR),
    ("a=!b", "unable to parse requirement: found '!', expected: identifier"),
    ("a=b!", "found '!', expected: ',' or 'end of string'"),
    ("a=-b", "unable to parse requirement: values[0][a]: Invalid value: \"-b\": " + _VALUE_ERR),
    ("a=" + "v" * 64, "unable to parse requirement: values[0][a]: Invalid value: \"" + "v" * 64
     + "\": must be no more than 63 characters"),
    ("-a", "unable to parse requirement: <nil>: Invalid value: \"-a\": name part " + _KEY_ERR),
    ("/a", "unable to parse requirement: <nil>: Invalid value: \"/a\": prefix part must be non-empty"),
    ("A.com/a", "unable to parse requirement: <nil>: Invalid value: \"A.com/a\": prefix part " + _SUBDOMAIN_ERR),
    ("a/", "unable to parse requirement: <nil>: Invalid value: \"a/\": name part must be non-empty; name part "
           + _KEY_ERR),
    ("a/b/c", "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a qualified name " + _KEY_ERR
     + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
    ("\u00e9=1", "unable to parse requirement: <nil>: Invalid value: \"\u00e9\": name part " + _KEY_ERR),
]


@pytest.mark.parametrize(("text", "message"), LABEL_ERRORS)
def test_label_selector_errors_carry_the_server_message(text, message):
    with pytest.raises(errors.InvalidSelector) as e:
        selectors.parse_labels(text)
    assert str(e.value) == message
    assert e.value.status == 400 and e.value.reason == "BadRequest"


# --- field selectors --------------------------------------------------------------------------------------------------

FIELD_CANONICAL = [
    ("", None, ""),
    ("spec.nodeName=edge-1", "pods", "spec.nodeName=edge-1"),
    ("spec.nodeName==edge-1", "pods", "spec.nodeName=edge-1"),
    ("spec.host=edge-1", "pods", "spec.nodeName=edge-1"),  # the legacy alias
    ("spec.nodeName=", "pods", "spec.nodeName="),  # unscheduled pods
    ("spec.clusterIP!=None", "services", "spec.clusterIP!=None"),
    ("status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown", "pods",
     "status.phase!=Failed,status.phase!=Succeeded,status.phase!=Unknown"),
    ("metadata.name=web-config", "configmaps", "metadata.name=web-config"),
    ("metadata.namespace=edge,metadata.name=a", "secrets", "metadata.name=a,metadata.namespace=edge"),
    ("a=x\\,y\\=z\\\\", None, "a=x\\,y\\=z\\\\"),
    (",,a=b,", None, "a=b"),
    ("=", None, ""),  # a term with an empty field and value selects everything (Transform drops it)
    ("a!=b=c", None, None),  # error below
]


@pytest.mark.parametrize(("text", "resource", "canonical"), [c for c in FIELD_CANONICAL if c[2] is not None])
def test_field_selector_canonical_form(text, resource, canonical):
    sel = selectors.parse_fields(text, resource)
    assert sel.canonical() == canonical
    assert selectors.parse_fields(canonical, resource) == sel


FIELD_MATCHES = [
    ("spec.nodeName=edge-1", {"spec.nodeName": "edge-1"}, True),
    ("spec.nodeName=edge-1", {"spec.nodeName": "edge-2"}, False),
    ("spec.nodeName=", {}, True),  # a missing field compares as ""
    ("spec.nodeName!=", {}, False),
    ("spec.clusterIP!=None", {"spec.clusterIP": "10.96.0.1"}, True),
    ("spec.clusterIP!=None", {"spec.clusterIP": "None"}, False),
    ("a=x\\,y", {"a": "x,y"}, True),
    ("status.phase!=Succeeded,status.phase!=Failed", {"status.phase": "Running"}, True),
    ("status.phase!=Succeeded,status.phase!=Failed", {"status.phase": "Failed"}, False),
]


@pytest.mark.parametrize(("text", "fields", "expected"), FIELD_MATCHES)
def test_field_selector_matches(text, fields, expected):
    assert selectors.parse_fields(text).matches(fields) is expected


FIELD_ERRORS = [
    ("abc", None, errors.InvalidSelector, "invalid selector: 'abc'; can't understand 'abc'"),
    ("b=1,abc", None, errors.InvalidSelector, "invalid selector: 'b=1,abc'; can't understand 'abc'"),
    ("a=b=c", None, errors.InvalidSelector, "invalid field selector: unescapedRune character in value: 61"),
    ("a!=b=c", None, errors.InvalidSelector, "invalid field selector: unescapedRune character in value: 61"),
    ("a=\\x", None, errors.InvalidSelector, "invalid field selector: invalid escape sequence: \\x"),
    ("a=x\\", None, errors.InvalidSelector, "invalid field selector: invalid escape sequence: \\"),
    ("spec.foo=x", "pods", errors.UnsupportedField, "field label not supported: spec.foo"),
    ("metadata.namespace=x", "nodes", errors.UnsupportedField, "field label not supported: metadata.namespace"),
    ("spec.nodeName=x", "configmaps", errors.UnsupportedField,
     '"spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace"'),
]


@pytest.mark.parametrize(("text", "resource", "kind", "message"), FIELD_ERRORS)
def test_field_selector_errors_carry_the_server_message(text, resource, kind, message):
    with pytest.raises(kind) as e:
        selectors.parse_fields(text, resource)
    assert str(e.value) == message and e.value.status == 400


def test_supported_fields_per_resource():
    pods = selectors.supported_fields("pods")
    assert {"spec.nodeName", "status.phase", "status.podIP", "metadata.name", "metadata.namespace"} <= pods
    assert "spec.host" not in pods  # an alias: objects only need to provide spec.nodeName
    assert selectors.supported_fields("nodes") == {"metadata.name", "spec.unschedulable"}
    assert selectors.supported_fields("services") >= {"spec.clusterIP", "spec.type"}
    assert selectors.supported_fields("secrets") >= {"type"}
    assert selectors.supported_fields("namespaces") == {"metadata.name", "status.phase"}
    assert selectors.supported_fields("configmaps") == {"metadata.name", "metadata.namespace"}
    assert selectors.supported_fields("endpointslices", "discovery.k8s.io") == {"metadata.name", "metadata.namespace"}


def test_exact_match_of_a_field():
    sel = selectors.parse_fields("metadata.name=web-config,metadata.namespace=edge")
    assert sel.exact("metadata.name") == "web-config" and sel.exact("spec.nodeName") is None
    assert selectors.parse_fields("metadata.name!=x").exact("metadata.name") is None


def test_covers_a_complete_unfiltered_view_answers_any_selector():
    everything = selectors.parse_labels("")
    narrow = selectors.parse_labels(PROXY_SELECTOR)
    assert selectors.covers(everything, narrow)
    assert selectors.covers(narrow, narrow)
    assert selectors.covers(selectors.parse_labels("!service.kubernetes.io/headless"), narrow)
    assert not selectors.covers(narrow, everything)
    assert not selectors.covers(selectors.parse_labels("a=b"), selectors.parse_labels("a=c"))
    assert selectors.covers(selectors.parse_fields(""), selectors.parse_fields("spec.nodeName=edge-1", "pods"))
    with pytest.raises(TypeError):
        selectors.covers(everything, selectors.parse_fields(""))


# --- the selectors real clients send (traces and recorded requests) -----------------------------------------------

LOG_LINE = re.compile(r'^\S+ \S+ "(?P<method>[A-Z]+)" "(?P<uri>[^"]*)" ')


def recorded_selectors():
    """(resource path, labelSelector, fieldSelector) of every request in the traces and the fixture index."""
    uris = []
    for log in sorted((FIXTURES / "traces").glob("*.log")):
        uris += [m["uri"] for line in log.read_text().splitlines() if (m := LOG_LINE.match(line))]
    uris += re.findall(r"\| `(/[^` ]+)` \|", (FIXTURES / "INDEX.md").read_text())
    out = set()
    for uri in uris:
        path, _, query = uri.partition("?")
        q = dict(urllib.parse.parse_qsl(query))
        if "labelSelector" in q or "fieldSelector" in q:
            resource = path.rstrip("/").split("/")[-1]
            out.add((resource, q.get("labelSelector", ""), q.get("fieldSelector", "")))
    return sorted(out)


RECORDED = recorded_selectors()


def test_the_recordings_have_selectors():
    assert len(RECORDED) >= 6
    assert ("services", PROXY_SELECTOR, "spec.clusterIP!=None") in RECORDED


@pytest.mark.parametrize(("resource", "labels", "fields"), RECORDED)
def test_every_recorded_selector_parses_and_is_stable(resource, labels, fields):
    lsel = selectors.parse_labels(labels)
    fsel = selectors.parse_fields(fields, resource)
    assert selectors.parse_labels(lsel.canonical()).canonical() == lsel.canonical()
    assert selectors.parse_fields(fsel.canonical(), resource).canonical() == fsel.canonical()


@pytest.mark.parametrize(("fixture", "label_selector", "field_selector", "field_of"), [
    ("services.proxysel.list.json.body", PROXY_SELECTOR, "", None),
    ("endpointslices.proxysel.list.json.body", PROXY_SELECTOR, "", None),
    ("pods-edge1.list.json.body", "", "spec.nodeName=edge-1", lambda o: {"spec.nodeName": o["spec"]["nodeName"]}),
    ("nodes-edge1.list.json.body", "", "metadata.name=edge-1", lambda o: {"metadata.name": o["metadata"]["name"]}),
])
def test_what_the_server_returned_for_a_selector_matches_it(fixture, label_selector, field_selector, field_of):
    items = json.loads((FIXTURES / fixture).read_text())["items"]
    lsel, fsel = selectors.parse_labels(label_selector), selectors.parse_fields(field_selector)
    assert items
    for obj in items:
        assert lsel.matches(obj["metadata"].get("labels", {}))
        assert fsel.matches(field_of(obj) if field_of else {})


def test_the_proxy_selector_excludes_what_the_server_excluded():
    # edge/queue carries service-proxy-name and the db slices carry headless (INDEX.md): absent from the lists.
    pods_and_slices = json.loads((FIXTURES / "endpointslices.proxysel.list.json.body").read_text())["items"]
    names = {o["metadata"]["name"].rsplit("-", 1)[0] for o in pods_and_slices}
    assert not names & {"queue", "db"}
    sel = selectors.parse_labels(PROXY_SELECTOR)
    assert not sel.matches({"service.kubernetes.io/service-proxy-name": "edge-alt-proxy"})
    assert not sel.matches({"service.kubernetes.io/headless": ""})


# --- properties -------------------------------------------------------------------------------------------------------

KEYS = ["app", "tier", "example.com/role", "k8s.io/x", "in", "notin", "a.b-c_d", "n"]
VALUES = ["", "a", "b", "web", "1", "10", "007", "in"]
SPACE = hs.sampled_from(["", " ", "  ", "\t"])


@hs.composite
def label_requirements(draw):
    key = draw(hs.sampled_from(KEYS))
    op = draw(hs.sampled_from(["exists", "!", "=", "==", "!=", "in", "notin", ">", "<"]))
    values: list[str] = []
    if op in ("=", "==", "!="):
        values = [draw(hs.sampled_from(VALUES))]
    elif op in ("in", "notin"):
        # unique: Go rejects two empty values before ")" ("(a,,)"), a quirk the error table covers
        values = draw(hs.lists(hs.sampled_from(VALUES), max_size=3, unique=True))
    elif op in (">", "<"):
        values = [draw(hs.sampled_from(["0", "3", "07", "10"]))]
    sp = draw(SPACE)
    if op == "exists":
        text = key
    elif op == "!":
        text = "!" + sp + key
    elif op in ("in", "notin"):
        text = f"{key} {op}{sp}({(sp + ',' + sp).join(values)})"
    else:
        text = f"{key}{sp}{op}{sp}{values[0]}"
    return text, key, op, values


def oracle(key: str, op: str, values: list[str], labels: dict[str, str]) -> bool:
    """The documented meaning of each requirement, independent of the parser."""
    present = key in labels
    have = labels.get(key)
    if op == "exists":
        return present
    if op == "!":
        return not present
    if op in ("=", "=="):
        return have == values[0]
    if op == "!=":
        return have != values[0]
    if op == "in":
        return present and have in (values or [""])
    if op == "notin":
        return not present or have not in (values or [""])
    if not present or not re.fullmatch(r"[+-]?[0-9]+", have):
        return False
    return int(have) > int(values[0]) if op == ">" else int(have) < int(values[0])


LABELS = hs.dictionaries(hs.sampled_from(KEYS), hs.sampled_from([*VALUES, "3", "+4", "x"]), max_size=5)


@settings(max_examples=300, deadline=None)
@given(hs.lists(label_requirements(), min_size=1, max_size=4), hs.lists(LABELS, min_size=1, max_size=5), SPACE,
       hs.randoms(use_true_random=False))
def test_label_parse_canonical_parse_is_stable_and_keeps_the_meaning(reqs, label_sets, sp, rnd):
    text = (sp + "," + sp).join(r[0] for r in reqs)
    sel = selectors.parse_labels(text)
    canonical = sel.canonical()
    again = selectors.parse_labels(canonical)
    assert again == sel and again.canonical() == canonical
    shuffled = list(reqs)
    rnd.shuffle(shuffled)
    assert selectors.parse_labels(",".join(r[0] for r in shuffled)).canonical() == canonical
    for labels in label_sets:
        expected = all(oracle(k, op, v, labels) for _, k, op, v in reqs)
        assert sel.matches(labels) is expected
        assert again.matches(labels) is expected


FIELDS = ["spec.nodeName", "status.phase", "metadata.name"]
FIELD_VALUES = ["", "edge-1", "a,b", "x=y", "back\\slash", "Running"]


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from(FIELDS), hs.sampled_from(["=", "==", "!="]), hs.sampled_from(FIELD_VALUES)),
                min_size=1, max_size=4),
       hs.lists(hs.dictionaries(hs.sampled_from(FIELDS), hs.sampled_from(FIELD_VALUES), max_size=3), max_size=5))
def test_field_parse_canonical_parse_is_stable_and_keeps_the_meaning(terms, field_sets):
    text = ",".join(f"{f}{op}{selectors.escape_value(v)}" for f, op, v in terms)
    sel = selectors.parse_fields(text, "pods")
    canonical = sel.canonical()
    again = selectors.parse_fields(canonical, "pods")
    assert again == sel and again.canonical() == canonical
    for fields in field_sets:
        expected = all((fields.get(f, "") == v) == (op != "!=") for f, op, v in terms)
        assert sel.matches(fields) is expected and again.matches(fields) is expected


@settings(max_examples=500, deadline=None)
@given(hs.one_of(hs.text(), hs.text(alphabet="ab=!,()<> \t\\in/.-0\x00")))
def test_arbitrary_text_parses_or_fails_with_a_kube_error(text):
    for parse in (selectors.parse_labels, selectors.parse_fields, lambda s: selectors.parse_fields(s, "pods")):
        try:
            sel = parse(text)
        except errors.KubeError:
            continue
        assert sel.canonical() == type(sel)(sel.requirements).canonical()
