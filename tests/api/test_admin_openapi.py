"""The admin API's OpenAPI document is generated from the wire models, valid, and matches the sidecar's routes."""

from __future__ import annotations

import pydantic
import pytest
import yaml
from openapi_spec_validator import validate

from tokenbudget_api import openapi
from tokenbudget_api.admin import LeaseReport
from tokenbudget_sidecar.admin import create_admin_app
from tokenbudget_sidecar.app import create_state
from tokenbudget_sidecar.settings import Settings


def test_the_committed_document_is_what_the_models_generate() -> None:
    assert openapi.OUTPUT.is_file(), "api/openapi/admin.yaml is missing: run `make crds`"
    assert openapi.OUTPUT.read_text(encoding="utf-8") == openapi.render(), "drifted from admin.py: run `make crds`"


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(yaml.safe_load(openapi.render()))


def test_every_route_of_the_admin_port_is_documented_and_nothing_else() -> None:
    app = create_admin_app(create_state(Settings()))
    routed = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    documented = {(method, path) for path, ops in openapi.document()["paths"].items() for method in ops}
    assert routed == documented


def test_answers_with_an_amount_refuse_floats() -> None:
    """Amounts are exact decimal strings on the wire: a float would be a sidecar bug, refused at the operator."""
    wire = {"granted": "12.5", "remaining": "0", "low": True, "expiresAt": "2026-01-01T00:00:00Z"}
    assert str(LeaseReport.model_validate(wire).granted) == "12.5"
    with pytest.raises(pydantic.ValidationError, match="decimal strings"):
        LeaseReport.model_validate({**wire, "granted": 12.5})
