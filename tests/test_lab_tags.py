"""Tags: the lab's vAPI JSON-RPC endpoint (/api) over the same store as vcsim's /rest,
and `vms_with_tags`, which selects VMs through the Automation SDK.

Tags are set up with plain `requests` calls to /rest, independently of the SDK;
each test makes its own uniquely named categories so tests cannot see each other's.
"""

from __future__ import annotations

import hashlib
import ssl
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import certifi
import pytest
import requests
from com.vmware.cis.tagging_client import Category, CategoryModel, Tag, TagAssociation
from com.vmware.cis_client import Session
from com.vmware.vapi.std import errors_client as std_errors
from com.vmware.vapi.std_client import DynamicID
from vmware.vapi.lib.connect import get_requests_connector
from vmware.vapi.security.client.security_context_filter import LegacySecurityContextFilter
from vmware.vapi.security.session import create_session_security_context
from vmware.vapi.security.user_password import create_user_password_security_context
from vmware.vapi.stdlib.client.factories import StubConfigurationFactory

from tests import labutil
from vsphere_replicator.connection import Connection, ConnectionSettings
from vsphere_replicator.errors import AuthenticationFailed, InvalidInput, NotFound, TLSVerificationFailed
from vsphere_replicator.lab import LabInfo
from vsphere_replicator.tags import vms_with_tags

REST = "/rest/com/vmware/cis"


class RestTagging:
    """vcsim's /rest tagging API, spoken with plain requests."""

    def __init__(self, lab: LabInfo) -> None:
        self.base = f"https://{lab.host}:{lab.port}"
        self.http = requests.Session()
        self.http.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the lab's CA
        self.http.verify = lab.ca_file
        answer = self.http.post(f"{self.base}{REST}/session", auth=(lab.user, lab.password), timeout=30)
        answer.raise_for_status()
        self.session_id = answer.json()["value"]
        self.http.headers["vmware-api-session-id"] = self.session_id

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.http.request(method, f"{self.base}{REST}{path}", json=body, timeout=30)
        answer.raise_for_status()
        return answer.json().get("value") if answer.content else None

    def category(self, name: str, cardinality: str = "MULTIPLE", types: tuple[str, ...] = ()) -> str:
        spec = {"name": name, "description": "", "cardinality": cardinality, "associable_types": list(types)}
        category_id: str = self.call("POST", "/tagging/category", {"create_spec": spec})
        return category_id

    def tag(self, category_id: str, name: str) -> str:
        spec = {"name": name, "description": "", "category_id": category_id}
        tag_id: str = self.call("POST", "/tagging/tag", {"create_spec": spec})
        return tag_id

    def attach(self, tag_id: str, kind: str, moid: str) -> None:
        body = {"object_id": {"type": kind, "id": moid}}
        self.call("POST", f"/tagging/tag-association/id:{tag_id}?~action=attach", body)

    def detach(self, tag_id: str, kind: str, moid: str) -> None:
        body = {"object_id": {"type": kind, "id": moid}}
        self.call("POST", f"/tagging/tag-association/id:{tag_id}?~action=detach", body)

    def close(self) -> None:
        self.http.delete(f"{self.base}{REST}/session", timeout=30)
        self.http.close()


@pytest.fixture
def rest(lab: LabInfo) -> Iterator[RestTagging]:
    client = RestTagging(lab)
    yield client
    client.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def settings(lab: LabInfo, **changes: Any) -> ConnectionSettings:
    values: dict[str, Any] = {
        "host": lab.host,
        "port": lab.port,
        "user": lab.user,
        "password": lab.password,
        "ca_file": lab.ca_file,
    }
    values.update(changes)
    return ConnectionSettings(**values)


def api_url(lab: LabInfo) -> str:
    return f"https://{lab.host}:{lab.port}/api"


def http_session(lab: LabInfo) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.verify = lab.ca_file
    return http


def stub_config(lab: LabInfo, security_context: Any = None) -> Any:
    connector = get_requests_connector(
        session=http_session(lab),
        url=api_url(lab),
        provider_filter_chain=[LegacySecurityContextFilter(security_context=security_context)],
    )
    return StubConfigurationFactory.new_std_configuration(connector)


@pytest.fixture
def sdk(lab: LabInfo) -> Iterator[Any]:
    """An SDK stub configuration with a session of its own."""
    login = stub_config(lab, create_user_password_security_context(lab.user, lab.password))
    session_id = Session(login).create()
    config = stub_config(lab, create_session_security_context(session_id))
    yield config
    Session(config).delete()


def vm_ids(si: Any, names: list[str]) -> list[str]:
    return [labutil.find_vm(si, name)._moId for name in names]


def error_texts(exc: BaseException) -> Iterator[str]:
    """str and repr of an exception and of every exception chained to it."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 50:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (str(arg) for arg in current.args)
        pending += [current.__cause__, current.__context__]


def test_vms_with_tags_returns_exactly_the_vms_carrying_any_of_the_tags(
    lab: LabInfo, si: Any, rest: RestTagging, vm_name: str, fresh_vm: Callable[[], str], unique: str
) -> None:
    a, b, c, d = vm_ids(si, [vm_name, fresh_vm(), fresh_vm(), fresh_vm()])
    dr, env = rest.category(f"dr-{unique}"), rest.category(f"env-{unique}")
    gold, silver, bronze = rest.tag(dr, "gold"), rest.tag(dr, "silver"), rest.tag(dr, "bronze")
    env_gold = rest.tag(env, "gold")  # same tag name, another category
    rest.attach(gold, "VirtualMachine", a)
    rest.attach(gold, "VirtualMachine", b)
    rest.attach(silver, "VirtualMachine", c)
    rest.attach(env_gold, "VirtualMachine", d)
    datastore = si.content.rootFolder.childEntity[0].datastore[0]._moId
    rest.attach(gold, "Datastore", datastore)  # not a VM: never selected

    target = settings(lab)
    assert vms_with_tags(target, [f"dr-{unique}:gold"]) == {a, b}
    assert vms_with_tags(target, [f"dr-{unique}:gold", f"dr-{unique}:silver"]) == {a, b, c}
    assert vms_with_tags(target, [f"dr-{unique}:silver", f"env-{unique}:gold"]) == {c, d}
    assert vms_with_tags(target, [f"dr-{unique}:bronze"]) == frozenset()
    assert bronze  # exists, carried by nothing
    assert vms_with_tags(target, []) == frozenset()


def test_vms_with_tags_takes_a_library_connection(
    lab: LabInfo, si: Any, conn: Connection, rest: RestTagging, vm_name: str, unique: str
) -> None:
    [vm] = vm_ids(si, [vm_name])
    rest.attach(rest.tag(rest.category(f"site-{unique}"), "a:b"), "VirtualMachine", vm)
    assert vms_with_tags(conn, [f"site-{unique}:a:b"]) == {vm}  # the first colon separates


def test_a_detached_tag_no_longer_selects_the_vm(
    lab: LabInfo, si: Any, rest: RestTagging, vm_name: str, unique: str
) -> None:
    [vm] = vm_ids(si, [vm_name])
    tag = rest.tag(rest.category(f"tier-{unique}"), "one")
    rest.attach(tag, "VirtualMachine", vm)
    assert vms_with_tags(settings(lab), [f"tier-{unique}:one"]) == {vm}
    rest.detach(tag, "VirtualMachine", vm)
    assert vms_with_tags(settings(lab), [f"tier-{unique}:one"]) == frozenset()


def test_unknown_categories_and_tags_raise_not_found_naming_each(
    lab: LabInfo, rest: RestTagging, unique: str
) -> None:
    rest.tag(rest.category(f"known-{unique}"), "here")
    wanted = [f"known-{unique}:here", f"known-{unique}:absent", f"nowhere-{unique}:x"]
    with pytest.raises(NotFound) as caught:
        vms_with_tags(settings(lab), wanted)
    message = str(caught.value)
    assert f"no tag 'absent' in category 'known-{unique}'" in message
    assert f"no category 'nowhere-{unique}'" in message
    assert "'here'" not in message


@pytest.mark.parametrize("bad", ["no-colon", ":tag", "category:", "just one string"])
def test_a_malformed_tag_is_invalid_input(lab: LabInfo, bad: str) -> None:
    with pytest.raises(InvalidInput):
        vms_with_tags(settings(lab), bad if bad == "just one string" else [bad])


def test_a_bad_password_is_refused_and_shown_nowhere(lab: LabInfo) -> None:
    wrong = "Wr0ng-" + uuid.uuid4().hex
    with pytest.raises(AuthenticationFailed) as caught:
        vms_with_tags(settings(lab, password=wrong), ["any:tag"])
    for text in error_texts(caught.value):
        assert wrong not in text and lab.password not in text
    with pytest.raises(std_errors.Unauthenticated):
        Session(stub_config(lab, create_user_password_security_context(lab.user, wrong))).create()


def test_rest_sessions_need_the_lab_credentials_too(lab: LabInfo) -> None:
    http = http_session(lab)
    url = f"https://{lab.host}:{lab.port}{REST}/session"
    assert http.post(url, auth=(lab.user, "not-the-password"), timeout=30).status_code == 401
    assert http.post(url, auth=(lab.user, lab.password), timeout=30).status_code == 200


def test_an_sdk_call_without_a_session_is_unauthenticated(lab: LabInfo) -> None:
    with pytest.raises(std_errors.Unauthenticated):
        Category(stub_config(lab)).list()
    stale = stub_config(lab, create_session_security_context("not-a-session"))
    with pytest.raises(std_errors.Unauthenticated):
        Tag(stale).list()


def test_a_deleted_session_is_unauthenticated(lab: LabInfo) -> None:
    login = stub_config(lab, create_user_password_security_context(lab.user, lab.password))
    config = stub_config(lab, create_session_security_context(Session(login).create()))
    assert Session(config).get().user == lab.user
    Session(config).delete()
    with pytest.raises(std_errors.Unauthenticated):
        Category(config).list()


def test_vms_with_tags_deletes_its_session(
    lab: LabInfo, rest: RestTagging, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[Any] = []
    real_delete = Session.delete

    def spy(self: Any) -> None:
        real_delete(self)
        deleted.append(self)

    monkeypatch.setattr(Session, "delete", spy)
    rest.tag(rest.category(f"gone-{unique}"), "t")
    vms_with_tags(settings(lab), [f"gone-{unique}:t"])
    with pytest.raises(NotFound):
        vms_with_tags(settings(lab), [f"gone-{unique}:other"])
    assert len(deleted) == 2


def test_rest_and_api_share_one_store(
    lab: LabInfo, si: Any, rest: RestTagging, sdk: Any, vm_name: str
) -> None:
    [vm] = vm_ids(si, [vm_name])
    made_over_rest = rest.category(f"from-rest-{uuid.uuid4().hex[:8]}")
    assert made_over_rest in Category(sdk).list()
    rest_session = stub_config(lab, create_session_security_context(rest.session_id))
    assert made_over_rest in Category(rest_session).list()  # a /rest session works on /api
    assert Category(sdk).get(made_over_rest).cardinality == CategoryModel.Cardinality.MULTIPLE
    made_over_api = Tag(sdk).create(
        Tag.CreateSpec(name="via-api", description="", category_id=made_over_rest)
    )
    assert made_over_api in rest.call("GET", "/tagging/tag")
    assert rest.call("GET", f"/tagging/tag/id:{made_over_api}")["name"] == "via-api"
    TagAssociation(sdk).attach(made_over_api, DynamicID(type="VirtualMachine", id=vm))
    assert rest.call(
        "POST",
        "/tagging/tag-association?~action=list-attached-tags",
        {"object_id": {"type": "VirtualMachine", "id": vm}},
    ) == [made_over_api]
    [entry] = TagAssociation(sdk).list_attached_objects_on_tags([made_over_api])
    assert [(o.type, o.id) for o in entry.object_ids] == [("VirtualMachine", vm)]
    TagAssociation(sdk).detach(made_over_api, DynamicID(type="VirtualMachine", id=vm))
    assert TagAssociation(sdk).list_attached_objects(made_over_api) == []


def test_api_create_and_lookup_errors_are_the_sdks(lab: LabInfo, sdk: Any, unique: str) -> None:
    spec = Category.CreateSpec(
        name=f"api-{unique}",
        description="",
        cardinality=CategoryModel.Cardinality.SINGLE,
        associable_types=set(),
    )
    category = Category(sdk).create(spec)
    with pytest.raises(std_errors.AlreadyExists):
        Category(sdk).create(spec)
    with pytest.raises(std_errors.NotFound):
        Tag(sdk).get("urn:vmomi:InventoryServiceTag:no-such-tag:GLOBAL")
    with pytest.raises(std_errors.NotFound):
        Tag(sdk).create(Tag.CreateSpec(name="x", description="", category_id="urn:no-such-category"))
    assert Tag(sdk).list_tags_for_category(category) == []


def test_attach_follows_associable_types_and_single_cardinality(
    lab: LabInfo, si: Any, sdk: Any, vm_name: str, unique: str
) -> None:
    [vm] = vm_ids(si, [vm_name])
    single = CategoryModel.Cardinality.SINGLE
    hosts_only = Category(sdk).create(
        Category.CreateSpec(
            name=f"h-{unique}", description="", cardinality=single, associable_types={"HostSystem"}
        )
    )
    with pytest.raises(std_errors.InvalidArgument):
        TagAssociation(sdk).attach(
            Tag(sdk).create(Tag.CreateSpec(name="h", description="", category_id=hosts_only)),
            DynamicID(type="VirtualMachine", id=vm),
        )
    one_per_vm = Category(sdk).create(
        Category.CreateSpec(name=f"s-{unique}", description="", cardinality=single, associable_types=set())
    )
    first = Tag(sdk).create(Tag.CreateSpec(name="first", description="", category_id=one_per_vm))
    second = Tag(sdk).create(Tag.CreateSpec(name="second", description="", category_id=one_per_vm))
    TagAssociation(sdk).attach(first, DynamicID(type="VirtualMachine", id=vm))
    with pytest.raises(std_errors.InvalidArgument):
        TagAssociation(sdk).attach(second, DynamicID(type="VirtualMachine", id=vm))
    with pytest.raises(std_errors.InvalidArgument):
        TagAssociation(sdk).attach(first, DynamicID(type="VirtualMachine", id="vm-999999"))


def test_unknown_services_and_operations_are_operation_not_found(lab: LabInfo, sdk: Any, unique: str) -> None:
    spec = Category.CreateSpec(
        name=f"del-{unique}",
        description="",
        cardinality=CategoryModel.Cardinality.MULTIPLE,
        associable_types=set(),
    )
    with pytest.raises(std_errors.OperationNotFound):
        Category(sdk).delete(Category(sdk).create(spec))  # the lab serves no delete
    body: dict[str, Any] = {
        "jsonrpc": "2.0",
        "method": "invoke",
        "id": "1",
        "params": {
            "serviceId": "com.vmware.no.such.service",
            "operationId": "list",
            "input": {"STRUCTURE": {"operation-input": {}}},
            "ctx": {"appCtx": {}},
        },
    }
    answer = http_session(lab).post(api_url(lab), json=body, timeout=30).json()
    assert answer["id"] == "1"
    assert list(answer["result"]["error"]["ERROR"]) == ["com.vmware.vapi.std.errors.operation_not_found"]
    body["params"]["serviceId"] = "com.vmware.cis.tagging.tag"
    answer = http_session(lab).post(api_url(lab), json=body, timeout=30).json()
    assert list(answer["result"]["error"]["ERROR"]) == ["com.vmware.vapi.std.errors.unauthenticated"]


def test_api_refuses_malformed_json_rpc(lab: LabInfo) -> None:
    http = http_session(lab)
    assert http.post(api_url(lab), data=b"{not json", timeout=30).json()["error"]["code"] == -32700
    answer = http.post(
        api_url(lab), json={"jsonrpc": "2.0", "method": "call", "id": 3, "params": {}}, timeout=30
    )
    assert answer.json() == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32601, "message": "Method not found."},
    }
    assert http.get(api_url(lab), timeout=30).status_code == 405


def test_a_pinned_thumbprint_replaces_the_ca_file(lab: LabInfo, rest: RestTagging, unique: str) -> None:
    rest.tag(rest.category(f"pin-{unique}"), "t")
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((lab.host, lab.port)))
    pinned = settings(lab, ca_file=None, thumbprint=hashlib.sha256(der).hexdigest())
    assert vms_with_tags(pinned, [f"pin-{unique}:t"]) == frozenset()
    with pytest.raises(TLSVerificationFailed):
        vms_with_tags(settings(lab, ca_file=None, thumbprint="0" * 64), [f"pin-{unique}:t"])


def test_requests_ca_bundle_does_not_replace_the_ca_file(
    lab: LabInfo, rest: RestTagging, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    rest.tag(rest.category(f"env-ca-{unique}"), "t")
    assert vms_with_tags(settings(lab), [f"env-ca-{unique}:t"]) == frozenset()
    with pytest.raises(TLSVerificationFailed):  # the lab's certificate is not in that bundle
        vms_with_tags(settings(lab, ca_file=certifi.where()), [f"env-ca-{unique}:t"])
