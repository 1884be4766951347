"""A process definition (業務プロセスフロー) as a file: what it says, and its checks.

A definition is a YAML document validated by the pydantic model below; every error names the
field it is about. Activities are requester–provider exchanges; `after` orders them (what has
no order between it runs in parallel), `when` branches on earlier results.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

# limits the database enforces (process.models); checked here once, at the boundary
PROCESS_ID_MAX = 64
ACTIVITY_ID_MAX = 64
PARTY_MAX = 1024
CODE_MAX = 128
NAME_MAX = 256
ACTIVITIES_MAX = 50

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=CODE_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")]
def _filled(value: str) -> str:
    if value.startswith("{") and value.endswith("}"):
        raise ValueError(f"the placeholder {value} was not filled in: give --set {value[1:-1]}=ENTITY_ID")
    return value


Party = Annotated[str, StringConstraints(min_length=1, max_length=PARTY_MAX, pattern=r"^[^\x00-\x1f\x7f\s]+$"),
                  AfterValidator(_filled)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")]


class DefinitionInvalid(ValueError):
    """The definition file is not a valid process definition; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Owner(_Strict):
    """The process owner: the ministry responsible for the procedure (プロセスオーナー)."""

    name: Name
    contact: Name | None = None


class Trigger(_Strict):
    """What starts a run: an application (申請) at a counter or the portal, or a life event."""

    kind: Literal["application", "life_event"]
    channels: tuple[Literal["counter", "portal"], ...] = ()
    event: Name | None = None  # e.g. 転居, 就学, 成人
    requester: Party = Field(..., description="the agency that starts the run (the counter's)")

    @model_validator(mode="after")
    def _kind_fields(self) -> Trigger:
        if self.kind == "application" and not self.channels:
            raise ValueError("an application trigger names its channels (counter, portal)")
        if self.kind == "life_event" and not self.event:
            raise ValueError("a life-event trigger names its event")
        return self


class Condition(_Strict):
    """A branch on an earlier activity's result: its outcome, or a field of what it returned."""

    activity: Ident
    outcome: Literal["permitted", "refused"] | None = None
    field: Name | None = None
    equals: Name | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [self.outcome is not None, self.equals is not None, self.exists is not None]
        if sum(tests) != 1:
            raise ValueError("a condition tests exactly one of: outcome, equals, exists")
        if (self.equals is not None or self.exists is not None) and self.field is None:
            raise ValueError("equals and exists test a field: name it")
        return self

    def describe(self) -> str:
        if self.outcome is not None:
            return f"{self.activity} {self.outcome}"
        if self.exists is not None:
            return f"{self.activity}.{self.field} {'exists' if self.exists else 'missing'}"
        return f"{self.activity}.{self.field} == {self.equals}"


class Activity(_Strict):
    """One requester–provider exchange (アクティビティ)."""

    id: Ident
    name: Name
    exchange: Literal["lookup", "relay"]
    requester: Party
    provider: Party
    task: Code  # 事務
    info_type: Code  # 特定個人情報
    # lookup: the service type asked for; relay: the receiver's envelope inbox (its offering of
    # this service type is where the hub delivers)
    service_type: Party | None = None
    message_type: Code | None = None  # relay: the envelope's message type (メッセージ種別)
    after: tuple[Ident, ...] = ()
    when: tuple[Condition, ...] = ()

    @model_validator(mode="after")
    def _exchange_fields(self) -> Activity:
        if not self.service_type:
            raise ValueError(f"a {self.exchange} names its service_type"
                             + (" (the receiver's envelope inbox)" if self.exchange == "relay" else ""))
        if self.exchange == "relay" and not self.message_type:
            raise ValueError("a relay names its message_type")
        if self.requester == self.provider:
            raise ValueError("requester and provider must differ")
        return self


class ProcessDefinition(_Strict):
    """A whole business process flow, one version of it."""

    id: Ident
    version: int = Field(..., ge=1, le=1_000_000)
    name: Name
    owner: Owner
    process_type: Code  # ビジネスプロセス種別, as the envelopes carry it
    trigger: Trigger
    activities: tuple[Activity, ...] = Field(..., min_length=1, max_length=ACTIVITIES_MAX)

    @model_validator(mode="after")
    def _graph(self) -> ProcessDefinition:
        ids = [a.id for a in self.activities]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"activity ids must be unique: {', '.join(duplicates)}")
        position = {a: i for i, a in enumerate(ids)}
        messages = [a.message_type for a in self.activities if a.exchange == "relay"]
        twice = sorted({m for m in messages if messages.count(m) > 1})
        if twice:
            raise ValueError(f"each relay activity needs its own message_type (it picks the route): "
                             f"{', '.join(twice)}")
        for a in self.activities:
            for dep in a.after:
                if dep not in position:
                    raise ValueError(f"activity {a.id}: after names an unknown activity {dep}")
            for c in a.when:
                if c.activity not in position:
                    raise ValueError(f"activity {a.id}: when names an unknown activity {c.activity}")
                if c.activity not in self.ancestors(a.id):
                    raise ValueError(f"activity {a.id}: its condition reads {c.activity}, "
                                     f"which must come before it (list it in after)")
        for a in self.activities:
            if a.id in self.ancestors(a.id):
                raise ValueError(f"activity {a.id} depends on itself (a cycle through after)")
        return self

    def activity(self, activity_id: str) -> Activity:
        return next(a for a in self.activities if a.id == activity_id)

    def ancestors(self, activity_id: str) -> set[str]:
        """Every activity that must finish before this one (through `after`, transitively)."""
        by_id = {a.id: a for a in self.activities}
        seen: set[str] = set()
        stack = list(by_id[activity_id].after) if activity_id in by_id else []
        while stack:
            dep = stack.pop()
            if dep in seen or dep not in by_id:
                continue
            seen.add(dep)
            stack.extend(by_id[dep].after)
        return seen

    def participants(self) -> set[str]:
        return {self.trigger.requester} | {p for a in self.activities for p in (a.requester, a.provider)}


def _placeholders(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error["loc"]) or "(top level)"


def parse_definition(text: str, *, source: str = "definition", placeholders: Mapping[str, str] = {}) -> ProcessDefinition:
    """Read and check a definition; DefinitionInvalid lists every problem with where it is."""
    try:
        data = yaml.safe_load(_placeholders(text, placeholders))
    except yaml.YAMLError as exc:
        raise DefinitionInvalid(f"{source}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DefinitionInvalid(f"{source}: a definition is a mapping (id, version, owner, ...)")
    try:
        return ProcessDefinition.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e)}: {e['msg']}" for e in exc.errors())
        raise DefinitionInvalid(f"{source}: {problems}") from None


def load_definition(path: Path, *, placeholders: Mapping[str, str] = {}) -> tuple[ProcessDefinition, str]:
    """A definition file and its text (the text, placeholders filled, is what gets installed)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionInvalid(f"cannot read {path}: {exc}") from None
    text = _placeholders(raw, placeholders)
    return parse_definition(text, source=path.name), text


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def xml_id(prefix: str, value: str) -> str:
    """An NCName for BPMN ids made from an activity id."""
    return f"{prefix}_{_SAFE.sub('_', value)}"
