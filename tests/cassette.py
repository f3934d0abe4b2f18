"""vcrpy set up for pyVmomi: recorded lab conversations, replayed without a lab.

pyVmomi and pyVim bind HTTPSConnection at import, so it is patched where
they look it up. Every SOAP call posts to /sdk, so requests match on their
body, with the volatile parts (the password, our snapshot marker's run id
and time) masked. Passwords, session keys and session cookies are scrubbed
from bodies and headers before a cassette is written; `rescrub()` applies
the scrubber to cassettes already written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyVim.connect
import pyVmomi.SoapAdapter
import vcr
from vcr.serialize import deserialize, serialize
from vcr.serializers import yamlserializer
from vcr.stubs import VCRHTTPSConnection

CASSETTES = Path(__file__).parent.parent / "cassettes"
RECORDING = os.environ.get("VR_RECORD") == "1"
MASK = "********"

# Each pattern masks one kind of secret in a SOAP body or a header value, keeping what names it.
_SECRETS = (
    re.compile(rb"(<password\b[^>]*>)[^<]*(</password>)"),
    # the session a login answers (Login, LoginByToken, LoginExtensionBy*, ImpersonateUser, CloneSession)
    re.compile(
        rb"(<(?:Login\w*|ImpersonateUser|CloneSession)Response\b[^>]*>\s*<returnval\b[^>]*>\s*<key\b[^>]*>)"
        rb"[^<]*(</key>)"
    ),
    # any other UserSession: SessionManager.currentSession, sessionList
    re.compile(rb'(type="UserSession"[^>]*>\s*<key\b[^>]*>)[^<]*(</key>)'),
    re.compile(rb"(<session[Ii][Dd]\b[^>]*>)[^<]*(</session[Ii][Dd]>)"),  # SessionIsActive, TerminateSession
    re.compile(rb'(vmware_soap_session=)(?:"[^"]*"|[^;\s]*)()'),  # the cookie, in a header or a body
)
_VOLATILE = re.compile(rb"run=[0-9a-f]+ created=[0-9T:+\-]+")


def _body(request: Any) -> bytes:
    return _body_bytes(request.body or b"")


def scrub(data: bytes) -> bytes:
    """`data` with passwords, session keys and session cookies replaced by MASK."""
    for pattern in _SECRETS:
        data = pattern.sub(lambda m: m[1] + _mask_like(m[1]) + m[2], data)
    return data


def _mask_like(lead: bytes) -> bytes:
    return b'"' + MASK.encode() + b'"' if lead.endswith(b"=") else MASK.encode()


def _scrub_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return scrub(value)
    if isinstance(value, str):
        return scrub(value.encode()).decode()
    return value


def _masked(body: bytes) -> bytes:
    return _VOLATILE.sub(b"run=* created=*", scrub(body))


def scrub_request(request: Any) -> Any:
    if "/lab/" in request.path:
        return None  # the lab's own control API is not vCenter: never recorded
    request.body = scrub(_body(request))
    for name, value in list(request.headers.items()):
        request.headers[name] = _scrub_text(value)
    return request


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers", {})
    for name in list(headers):
        headers[name] = [_scrub_text(v) for v in headers[name]]
    body = response.get("body", {})
    if "string" in body:
        body["string"] = _scrub_text(body["string"])
        for name in headers:  # a masked value is shorter: keep the recorded length true
            if name.lower() == "content-length":
                headers[name] = [str(len(_body_bytes(body["string"])))]
    return response


def _body_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def soap_match(r1: Any, r2: Any) -> None:
    assert r1.method == r2.method and r1.path == r2.path
    assert _masked(_body(r1)) == _masked(_body(r2)), "different SOAP request"


def recorder(name: str) -> Any:
    """A cassette context manager: records when VR_RECORD=1, replays otherwise."""
    my_vcr = vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="all" if RECORDING else "none",
        filter_headers=["cookie", "authorization", "vmware-api-session-id"],
        before_record_request=scrub_request,
        before_record_response=scrub_response,
        decode_compressed_response=True,
    )
    my_vcr.register_matcher("soap", soap_match)
    return my_vcr.use_cassette(
        f"{name}.yaml",
        match_on=["soap"],
        custom_patches=(
            (pyVmomi.SoapAdapter, "HTTPSConnection", VCRHTTPSConnection),
            (pyVim.connect, "HTTPSConnection", VCRHTTPSConnection),  # its version probe
        ),
    )


def endpoint(name: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the cassette was recorded (no secrets): written when recording, read when replaying."""
    path = CASSETTES / f"{name}.endpoint.json"
    if values is not None:
        path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return values
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def rescrub(path: Path) -> None:
    """Apply today's scrubber to a recorded cassette, without re-recording it."""
    requests, responses = deserialize(path.read_text(), yamlserializer)[:2]
    kept = [(q, r) for q, r in zip(requests, responses, strict=True) if scrub_request(q) is not None]
    cassette = {"requests": [q for q, _ in kept], "responses": [scrub_response(r) for _, r in kept]}
    path.write_text(serialize(cassette, yamlserializer))
