"""Select VMs by vSphere tag, through the vSphere Automation SDK.

Tags are not part of the SOAP API: vCenter serves them through its vAPI
endpoint, `https://HOST:PORT/api`, which the Automation SDK (`vmware-vcenter`,
`vmware-vapi-runtime`) speaks. This module logs in there with the settings of
a SOAP `Connection` (same credentials, same TLS trust: CA file, pinned
thumbprint, or an explicit and logged `insecure`), and deletes its vAPI
session before returning. SDK and network errors are translated into the
library's own at this boundary; no SDK object escapes.

The password travels only in the SDK's login request. The SDK's raw wire
logger ("vmware.vapi.lib.log.client.wirelogging") would show that request
verbatim; it is off and detached from the root logger unless an application
turns it on, which it should never do outside a debugging session.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import requests
from com.vmware.cis.tagging_client import Category, Tag, TagAssociation
from com.vmware.cis_client import Session
from com.vmware.vapi.std import errors_client as std_errors
from vmware.vapi.bindings.error import VapiError
from vmware.vapi.data.serializers.jsonrpc import JsonRpcError
from vmware.vapi.exception import CoreException
from vmware.vapi.lib.connect import get_requests_connector
from vmware.vapi.security.client.security_context_filter import LegacySecurityContextFilter
from vmware.vapi.security.session import create_session_security_context
from vmware.vapi.security.user_password import create_user_password_security_context
from vmware.vapi.stdlib.client.factories import StubConfigurationFactory

from vsphere_replicator.connection import Connection, ConnectionSettings
from vsphere_replicator.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ReplicatorError,
    TLSVerificationFailed,
    VSphereFault,
)
from vsphere_replicator.logs import get_logger

__all__ = ["vms_with_tags"]

VM_TYPE = "VirtualMachine"
API_PATH = "/api"


def vms_with_tags(
    connection: Connection | ConnectionSettings, tags: Sequence[str], *, timeout: float = 60.0
) -> frozenset[str]:
    """Managed-object ids ("vm-42") of the VMs that carry any of `tags`.

    Each tag is written "category:tag": the text before the first colon
    names the category, the rest the tag (so a tag name may hold colons, a
    category name may not). Names are matched exactly, as vCenter stores
    them. No tags select no VMs, without a call to vCenter. Objects of other
    types carrying the tags (hosts, datastores, …) are left out.

    `connection` is a SOAP `Connection` (only its settings are used: the
    vAPI endpoint has its own session) or its `ConnectionSettings`.
    `timeout` bounds each HTTP request, in seconds.

    Raises InvalidInput for a tag not written "category:tag"; NotFound naming
    every category or tag vCenter does not know; AuthenticationFailed,
    PermissionDenied, TLSVerificationFailed, ConnectionFailed, or
    VSphereFault for anything else vCenter answers.
    """
    settings = connection.settings if isinstance(connection, Connection) else connection
    wanted = _parse_tags(tags)
    if not wanted:
        return frozenset()
    with _vapi_session(settings, timeout) as config:
        tag_ids = _resolve_tags(config, settings.host, wanted)
        with _translate("list the objects carrying the tags", settings.host):
            attached = TagAssociation(config).list_attached_objects_on_tags(sorted(set(tag_ids.values())))
        vms = frozenset(str(obj.id) for entry in attached for obj in entry.object_ids if obj.type == VM_TYPE)
    get_logger(host=settings.host).info("vms_selected_by_tags", tags=sorted(wanted), vms=len(vms))
    return vms


def _parse_tags(tags: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{"category:tag": ("category", "tag")}, refusing malformed entries."""
    if isinstance(tags, str):
        raise InvalidInput(f"tags must be a list of 'category:tag' strings, not the string {tags!r}")
    wanted: dict[str, tuple[str, str]] = {}
    for text in tags:
        if not isinstance(text, str):
            raise InvalidInput(f"a tag must be a 'category:tag' string, got {type(text).__name__}")
        category, colon, name = text.partition(":")
        if not colon or not category or not name:
            raise InvalidInput(f"tag {text!r} must be written 'category:tag'")
        wanted[text] = (category, name)
    return wanted


def _resolve_tags(config: Any, host: str, wanted: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Tag ids of the wanted tags; NotFound names every one that does not exist."""
    categories, tags = Category(config), Tag(config)
    wanted_categories = {category for category, _ in wanted.values()}
    category_ids: dict[str, str] = {}
    with _translate("list the tag categories", host):
        for category_id in categories.list():
            if wanted_categories <= category_ids.keys():
                break
            with contextlib.suppress(std_errors.NotFound):  # deleted since the list was made
                category_ids.setdefault(str(categories.get(category_id).name), str(category_id))
    tags_by_category: dict[str, dict[str, str]] = {}
    found: dict[str, str] = {}
    missing: list[str] = []
    for text, (category, name) in wanted.items():
        category_id = category_ids.get(category)
        if category_id is None:
            missing.append(f"{text!r} (no category {category!r})")
            continue
        if category not in tags_by_category:
            names: dict[str, str] = {}
            with _translate(f"list the tags of category {category!r}", host):
                for tag_id in tags.list_tags_for_category(category_id):
                    with contextlib.suppress(std_errors.NotFound):
                        names.setdefault(str(tags.get(tag_id).name), str(tag_id))
            tags_by_category[category] = names
        tag_id = tags_by_category[category].get(name)
        if tag_id is None:
            missing.append(f"{text!r} (no tag {name!r} in category {category!r})")
        else:
            found[text] = tag_id
    if missing:
        raise NotFound(f"unknown tags on {host}: {', '.join(missing)}")
    return found


@contextlib.contextmanager
def _vapi_session(settings: ConnectionSettings, timeout: float) -> Iterator[Any]:
    """A stub configuration logged in to the vAPI endpoint; the session is deleted on exit."""
    http = _http_session(settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"https://{host}:{settings.port}{API_PATH}"
    try:
        login = create_user_password_security_context(settings.user, settings.password)
        with _translate("log in to the vAPI endpoint", settings.host):
            session_id = str(Session(_stub_config(http, url, timeout, login)).create())
        config = _stub_config(http, url, timeout, create_session_security_context(session_id))
        try:
            yield config
        finally:
            try:
                with _translate("log out of the vAPI endpoint", settings.host):
                    Session(config).delete()
            except ReplicatorError as exc:  # never hide the caller's own error behind this one
                get_logger(host=settings.host).warning("vapi_logout_failed", error=type(exc).__name__)
    finally:
        http.close()


def _stub_config(http: requests.Session, url: str, timeout: float, security_context: Any) -> Any:
    # pool_size=0: the runtime would otherwise mount its own adapters over the pinned one.
    connector = get_requests_connector(
        session=http,
        url=url,
        timeout=timeout,
        pool_size=0,
        provider_filter_chain=[LegacySecurityContextFilter(security_context=security_context)],
    )
    return StubConfigurationFactory.new_std_configuration(connector)


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """Accepts exactly the certificate whose SHA-256 digest is `fingerprint`."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


def _http_session(settings: ConnectionSettings) -> requests.Session:
    """An HTTP session trusting what the SOAP connection trusts, and nothing from the environment."""
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the CA file
    if settings.insecure:
        get_logger(host=settings.host).warning("tls_verification_disabled", endpoint=API_PATH)
        http.verify = False
    elif settings.thumbprint is not None:
        http.verify = False  # the pinned digest replaces the chain of trust
        http.mount("https://", _PinnedAdapter(settings.thumbprint))
    elif settings.ca_file is not None:
        if not os.path.isfile(settings.ca_file):
            raise InvalidInput(f"CA file {settings.ca_file} does not exist")
        http.verify = settings.ca_file
    else:
        http.verify = True
    return http


def _messages(exc: Any) -> str:
    texts = [str(m.default_message) for m in getattr(exc, "messages", None) or []]
    return "; ".join(texts) or type(exc).__name__


@contextlib.contextmanager
def _translate(what: str, host: str) -> Iterator[None]:
    """SDK and network errors -> the library's, with the original chained as __cause__."""
    try:
        yield
    except std_errors.Unauthenticated as exc:
        raise AuthenticationFailed(
            f"{what}: {host} refused the user name or password", fault="Unauthenticated"
        ) from exc
    except std_errors.Unauthorized as exc:
        raise PermissionDenied(f"{what}: the user lacks a privilege on {host}", fault="Unauthorized") from exc
    except std_errors.NotFound as exc:
        raise NotFound(f"{what}: {_messages(exc)}", fault="NotFound") from exc
    except VapiError as exc:
        fault = type(exc).__name__
        raise VSphereFault(f"{what}: {fault}: {_messages(exc)}", fault=fault) from exc
    except requests.exceptions.SSLError as exc:
        raise TLSVerificationFailed(f"{what}: the certificate of {host} did not verify") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise ConnectionFailed(f"{what}: cannot reach {host} ({type(exc).__name__})") from exc
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise VSphereFault(f"{what}: {host} answered HTTP {status} at {API_PATH}") from exc
    except (JsonRpcError, CoreException) as exc:
        problem = type(exc).__name__
        raise VSphereFault(f"{what}: {host} sent an answer the SDK cannot use ({problem})") from exc
