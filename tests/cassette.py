"""vcrpy set up for pyVmomi: recorded lab conversations, replayed without a lab.

pyVmomi and pyVim bind HTTPSConnection at import, so it is patched where
they look it up. Every SOAP call posts to /sdk, so requests match on their
body, with the volatile parts (the password, our snapshot marker's run id
and time) masked. Passwords and session cookies are scrubbed before a
cassette is written.
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
from vcr.stubs import VCRHTTPSConnection

CASSETTES = Path(__file__).parent.parent / "cassettes"
RECORDING = os.environ.get("VR_RECORD") == "1"
MASK = "********"

_PASSWORD = re.compile(rb"(<password[^>]*>)[^<]*(</password>)")
_COOKIE = re.compile(r'vmware_soap_session="?[^";\s]+"?')
_VOLATILE = re.compile(rb"run=[0-9a-f]+ created=[0-9T:+\-]+")


def _body(request: Any) -> bytes:
    body = request.body or b""
    return body.encode() if isinstance(body, str) else body


def _hide_password(body: bytes) -> bytes:
    return _PASSWORD.sub(rb"\g<1>" + MASK.encode() + rb"\g<2>", body)


def _masked(body: bytes) -> bytes:
    return _VOLATILE.sub(b"run=* created=*", _hide_password(body))


def scrub_request(request: Any) -> Any:
    if "/lab/" in request.path:
        return None  # the lab's own control API is not vCenter: never recorded
    request.body = _hide_password(_body(request))
    return request


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers", {})
    for name in list(headers):
        if name.lower() == "set-cookie":
            headers[name] = [_COOKIE.sub(f'vmware_soap_session="{MASK}"', v) for v in headers[name]]
    return response


def soap_match(r1: Any, r2: Any) -> None:
    assert r1.method == r2.method and r1.path == r2.path
    assert _masked(_body(r1)) == _masked(_body(r2)), "different SOAP request"


def recorder(name: str) -> Any:
    """A cassette context manager: records when VR_RECORD=1, replays otherwise."""
    my_vcr = vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="all" if RECORDING else "none",
        filter_headers=["cookie", "authorization"],
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
