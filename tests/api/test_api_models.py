"""The pydantic models and the generated CRDs agree, and the CRDs are what Kubernetes can take."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from invalid_specs import EXAMPLES, INVALID, Invalid

from tokenbudget_api import crdgen
from tokenbudget_api.thinktier import ThinkTier
from tokenbudget_api.tokenbudget import TokenBudget

MODELS: dict[str, type[pydantic.BaseModel]] = {"TokenBudget": TokenBudget, "ThinkTier": ThinkTier}


def test_generated_crds_match_the_committed_files() -> None:
    for out_dir in crdgen.OUTPUT_DIRS:
        for name, text in crdgen.render_all().items():
            path = out_dir / name
            assert path.is_file(), f"{path} is missing: run `make crds`"
            assert path.read_text(encoding="utf-8") == text, f"{path} drifted from the models: run `make crds`"


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], f"{path}[]")


@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_crd_schema_is_structural_and_described(name: str) -> None:
    doc = yaml.safe_load(crdgen.render_all()[name])
    root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root["properties"]["spec"], ".spec"):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "const"):
            assert banned not in node, f"{name}{path} has {banned}"
        assert node.get("additionalProperties") is not False, f"{name}{path} forbids additional properties"
        assert "type" in node, f"{name}{path} has no type"
        if not path.endswith("[]"):  # items and map values are described by their field
            assert node.get("description"), f"{name}{path} has no description for kubectl explain"
        assert node.get("type") != "number", f"{name}{path} is a float; use integers or decimal strings"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_object_with_no_unknown_fields(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    obj = MODELS[doc["kind"]].model_validate(doc)
    # extra="ignore" would hide a misspelt field: the round trip must give back every key written.
    assert _subset(doc["spec"], obj.model_dump(mode="json", by_alias=True)["spec"]), path


def _subset(written: Any, parsed: Any) -> bool:
    if isinstance(written, dict):
        return isinstance(parsed, dict) and all(k in parsed and _subset(v, parsed[k]) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(parsed, list) and len(written) == len(parsed) and all(
            _subset(a, b) for a, b in zip(written, parsed, strict=True)
        )
    return str(written) == str(parsed) or written == parsed


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_the_models_reject_each_invalid_spec(case: Invalid) -> None:
    obj = case.build()
    with pytest.raises(pydantic.ValidationError):
        MODELS[obj["kind"]].model_validate(obj)


def test_the_invalid_table_starts_from_valid_objects() -> None:
    """Each case must fail because of its mutation, not because its base example is broken."""
    for base in {c.base for c in INVALID}:
        doc = yaml.safe_load((EXAMPLES / base).read_text(encoding="utf-8"))
        MODELS[doc["kind"]].model_validate(doc)
