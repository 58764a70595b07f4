"""Building blocks shared by both CRDs: the base model, money, selectors and conditions.

Pydantic models are the single source of truth for the API: the CRD schemas in `crds/` are generated
from them (see `crdgen`), so constraints written here are enforced by the kube-apiserver itself and by
the sidecar and operator when they parse the same objects.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

# x-kubernetes-* keys a model or field may carry into the generated schema.
CEL = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    """One CEL rule for `x-kubernetes-validations`; `field_path` makes the apiserver name the field."""
    out: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python, unknown keys ignored.

    Unknown keys are ignored rather than rejected so that an older sidecar accepts a policy written by a
    newer operator (the apiserver prunes unknown fields of stored objects anyway).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON form Kubernetes stores: camelCase, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def dump(self) -> dict[str, Any]:
        """The JSON form of an admin API answer: camelCase, every field (None as null)."""
        return self.model_dump(mode="json", by_alias=True)


MONEY_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,9})?$"


def _to_decimal(value: object) -> object:
    """Money arrives as a decimal string; floats are refused because they cannot hold cents exactly."""
    if isinstance(value, float):
        raise ValueError("money must be a decimal string such as \"12.50\", not a float")
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a decimal amount such as \"12.50\"") from exc
        if not parsed.is_finite() or parsed < 0:
            raise ValueError(f"{value!r} must be a finite, non-negative amount")
        return parsed
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_to_decimal),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN}),
]
"""US dollars as a decimal string ("12.50"): exact arithmetic end to end, never a float."""

Quantity = Annotated[int, Field(ge=0, le=10**15)]
"""A count of tokens or requests."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One set-based requirement, as in Kubernetes' own LabelSelector."""

    key: str = Field(description="Label key the requirement applies to.", min_length=1, max_length=317)
    operator: SelectorOperator = Field(description="How the key relates to the values.")
    values: list[str] | None = Field(
        default=None, description="Values for In and NotIn; must be empty for Exists and DoesNotExist."
    )


class LabelSelector(ApiModel):
    """Selects pods by label, with Kubernetes' LabelSelector semantics (an empty selector selects all)."""

    match_labels: dict[str, str] | None = Field(
        default=None, description="Pods must carry every one of these labels with these values."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Set-based requirements; all must hold."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions or []:
            present = req.key in labels
            values = req.values or []
            if req.operator is SelectorOperator.IN and labels.get(req.key) not in values:
                return False
            if req.operator is SelectorOperator.NOT_IN and present and labels[req.key] in values:
                return False
            if req.operator is SelectorOperator.EXISTS and not present:
                return False
            if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition): the list is keyed by type and written whole."""

    type: str = Field(description="Condition type, e.g. Ready, Synced, Exhausted.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason, machine-readable.", max_length=1024)
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    last_transition_time: dt.datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )


Percent = Annotated[int, Field(ge=0, le=100)]

__all__ = [
    "CEL",
    "ApiModel",
    "Condition",
    "ConditionStatus",
    "LabelSelector",
    "Literal",
    "Money",
    "Name",
    "Percent",
    "Quantity",
    "cel",
]
