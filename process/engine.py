"""The BPF control system: runs a process instance activity by activity, durably.

Each activity's state is a row committed as soon as the activity is decided, so a hub that
stops mid-run resumes where it was (`resume_unfinished`). The rules, in order, for a pending
activity whose predecessors have all finished:
  - a predecessor refused, failed or was blocked → blocked (unless a `when` of this activity
    tests that predecessor's outcome), and so is everything after it: a refused step stops
    what depends on it and nothing else;
  - a predecessor skipped → skipped (its branch was not taken);
  - a `when` that does not hold → skipped (the branch not taken);
  - otherwise the exchange is carried out: done, refused or failed.
Activities with no order between them are independent (BPMN parallel); they run one after
another here, in the order of the definition, and none waits on the other's outcome.
"""
from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from kernel.background import Periodic
from kernel.db import utcnow
from kernel.settings import Settings
from process import service
from process.definition import Activity, Condition, ProcessDefinition
from process.exchanges import Exchange, LookupExchange, Outcome, RunContext
from process.models import ProcessInstance, ProcessStep, RunStatus, StepStatus

log = logging.getLogger(__name__)

SessionScope = Callable[[], AbstractContextManager[Session]]
LEASE = timedelta(seconds=120)  # a runner that stopped without a word is taken over after this
START_GRACE = timedelta(seconds=30)  # a new run belongs to whoever started it for this long
APPLICATION_MAX = 16 * 1024  # bytes of JSON: what a counter form holds, not documents
UNFINISHED = {StepStatus.PENDING}
NOT_COMPLETED = {StepStatus.REFUSED, StepStatus.FAILED, StepStatus.BLOCKED}
CHANNELS = ("counter", "portal", "life_event")


@dataclass(frozen=True)
class StepView:
    activity_id: str
    name: str
    requester: str
    provider: str
    status: StepStatus
    reason: str | None
    decision_ids: tuple[str, ...]
    result: dict[str, Any] | None


@dataclass(frozen=True)
class RunView:
    instance_id: str
    query_group_id: str
    process_id: str
    version: int
    process_name: str
    status: RunStatus
    started_by: str
    channel: str
    started_at: Any
    steps: tuple[StepView, ...]


def default_exchanges() -> dict[str, Exchange]:
    from process.relaying import RelayExchange

    return {"lookup": LookupExchange(), "relay": RelayExchange()}


def application_json(application: Mapping[str, Any] | None) -> str | None:
    """The application as stored: JSON of at most APPLICATION_MAX bytes, or ProcessError."""
    if application is None:
        return None
    if not isinstance(application, Mapping):
        raise service.ProcessError("the application is an object of fields")
    try:
        text = json.dumps(dict(application), ensure_ascii=False, sort_keys=True)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError):  # UnicodeEncodeError too: a lone surrogate
        raise service.ProcessError("the application is not JSON text") from None
    if size > APPLICATION_MAX:
        raise service.ProcessError(f"the application is larger than {APPLICATION_MAX} bytes")
    return text


def start(*, db_session: Session, process_id: str, person_key: str, started_by: str, channel: str,
          application: Mapping[str, Any] | None = None) -> str:
    """Create a run of the operating version for a person (committed); returns its instance ID.

    Raises NotOperating if no version has passed its conformance test and been put into operation."""
    stored = application_json(application)
    if channel not in CHANNELS:
        raise service.ProcessError(f"channel must be one of {', '.join(CHANNELS)}")
    installed = service.operating(db_session=db_session, process_id=process_id)
    definition = installed.definition
    trigger = definition.trigger
    if channel == "life_event" and trigger.kind != "life_event":
        raise service.ProcessError(f"{process_id} is started by an application, not a life event")
    if channel != "life_event" and channel not in trigger.channels:
        raise service.ProcessError(f"{process_id} is not started at the {channel}")
    now = utcnow()
    instance = ProcessInstance(instance_id=secrets.token_hex(16), query_group_id=secrets.token_hex(16),
                               process_id=installed.process_id, version=installed.version,
                               person_key=person_key, trigger_channel=channel, started_by=started_by,
                               status=str(RunStatus.RUNNING), started_at=now, application=stored)
    db_session.add(instance)
    for position, activity in enumerate(definition.activities):
        db_session.add(ProcessStep(instance_id=instance.instance_id, activity_id=activity.id, position=position,
                                   status=str(StepStatus.PENDING), attempts=0, updated_at=now))
    db_session.commit()
    return instance.instance_id


def run(*, session_scope: SessionScope, settings: Settings, instance_id: str,
        exchanges: Mapping[str, Exchange] | None = None, delivered: dict[str, Any] | None = None) -> RunView:
    """Carry a run forward until every activity has finished; safe to call again after a stop.

    `delivered`, when given, collects what each activity returned to its requester (the data
    itself, which the hub does not keep), for a caller that started the run synchronously."""
    exchanges = exchanges if exchanges is not None else default_exchanges()
    if not _claim(session_scope, instance_id):  # another runner has it, or it has finished
        with session_scope() as db:
            return view(db_session=db, instance_id=instance_id)
    waiting: set[str] = set()  # handed to the relay's outbox this time; checked again on resume
    try:
        while True:
            with session_scope() as db:
                instance = db.get(ProcessInstance, instance_id)
                definition = service.get(db_session=db, process_id=instance.process_id,
                                         version=instance.version).definition
                steps = _steps(db, instance_id)
                nxt = _next_ready(definition, steps, waiting)
                if nxt is None:
                    _finish(db, instance, steps)
                    db.commit()
                    return view(db_session=db, instance_id=instance_id)
                activity, verdict = nxt
                if verdict is None:
                    ctx = RunContext(instance.instance_id, instance.query_group_id, instance.person_key,
                                     definition.process_type,
                                     json.loads(instance.application) if instance.application else None,
                                     instance.started_at)
                    verdict = _perform(db, settings, exchanges, ctx, activity, steps[activity.id])
                if verdict.status is StepStatus.PENDING:
                    waiting.add(activity.id)
                _record(db, instance_id, activity, verdict)
                instance.claimed_until = utcnow() + LEASE
                db.commit()
                if delivered is not None and verdict.result is not None:
                    delivered[activity.id] = verdict.result
    finally:
        with session_scope() as db:
            db.execute(update(ProcessInstance).where(ProcessInstance.instance_id == instance_id)
                       .values(claimed_until=None))


def _claim(session_scope: SessionScope, instance_id: str) -> bool:
    """Take the run for this runner (a lease, renewed at every step); False if another has it."""
    now = utcnow()
    with session_scope() as db:
        if db.get(ProcessInstance, instance_id) is None:
            raise service.ProcessError(f"no process run {instance_id}")
        taken = db.execute(update(ProcessInstance).where(
            ProcessInstance.instance_id == instance_id, ProcessInstance.status == str(RunStatus.RUNNING),
            or_(ProcessInstance.claimed_until.is_(None), ProcessInstance.claimed_until < now),
        ).values(claimed_until=now + LEASE))
        return taken.rowcount == 1


def _steps(db: Session, instance_id: str) -> dict[str, ProcessStep]:
    rows = db.scalars(select(ProcessStep).where(ProcessStep.instance_id == instance_id)
                      .order_by(ProcessStep.position))
    return {r.activity_id: r for r in rows}


def _next_ready(definition: ProcessDefinition, steps: Mapping[str, ProcessStep],
                waiting: set[str] = frozenset()) -> tuple[Activity, Outcome | None] | None:
    """The first pending activity whose predecessors have finished, with its verdict when the
    rules decide it without an exchange (blocked, skipped); None when nothing more can run now
    (the run has finished, or waits for a delivery)."""
    for activity in definition.activities:
        step = steps[activity.id]
        if StepStatus(step.status) not in UNFINISHED or activity.id in waiting:
            continue
        before = {dep: StepStatus(steps[dep].status) for dep in activity.after}
        if any(s in UNFINISHED for s in before.values()):
            continue
        tested = {c.activity for c in activity.when if c.outcome is not None}
        stopped = sorted(dep for dep, s in before.items() if s in NOT_COMPLETED and dep not in tested)
        if stopped:
            return activity, Outcome(StepStatus.BLOCKED, f"DEPENDS_ON_{_upper(stopped[0])}")
        skipped = sorted(dep for dep, s in before.items() if s is StepStatus.SKIPPED)
        if skipped:
            return activity, Outcome(StepStatus.SKIPPED, f"AFTER_SKIPPED_{_upper(skipped[0])}")
        failing = next((c for c in activity.when if not _holds(c, steps)), None)
        if failing is not None:
            return activity, Outcome(StepStatus.SKIPPED, "BRANCH_NOT_TAKEN")
        return activity, None
    return None


def _upper(activity_id: str) -> str:
    return activity_id.upper().replace("-", "_")


def _holds(condition: Condition, steps: Mapping[str, ProcessStep]) -> bool:
    step = steps[condition.activity]
    status = StepStatus(step.status)
    if condition.outcome is not None:
        return (status is StepStatus.DONE) == (condition.outcome == "permitted")
    result = json.loads(step.result) if step.result else {}
    present = isinstance(result, dict) and condition.field in result
    if condition.exists is not None:
        return present == condition.exists
    return present and str(result[condition.field]) == condition.equals


def _perform(db: Session, settings: Settings, exchanges: Mapping[str, Exchange], ctx: RunContext,
             activity: Activity, step: ProcessStep) -> Outcome:
    exchange = exchanges.get(activity.exchange)
    if exchange is None:
        return Outcome(StepStatus.FAILED, f"NO_{activity.exchange.upper()}_EXCHANGE")
    step.attempts += 1
    db.commit()  # an attempt counts even if the hub stops inside the exchange
    try:
        return exchange.perform(db_session=db, settings=settings, run=ctx, activity=activity)
    except Exception:  # one activity's failure must not stop the others
        log.exception("process %s: activity %s failed", ctx.instance_id, activity.id)
        db.rollback()
        return Outcome(StepStatus.FAILED, "EXCHANGE_ERROR")


def kept_result(definition: ProcessDefinition, activity_id: str, result: Mapping[str, Any] | None) -> dict | None:
    """Only the fields a later condition reads are kept in the hub; the data itself is the
    requester's (returned to it when the run is started synchronously), not the hub's."""
    if result is None:
        return None
    wanted = {c.field for a in definition.activities for c in a.when if c.activity == activity_id and c.field}
    return {k: result[k] for k in sorted(wanted) if k in result}


def _record(db: Session, instance_id: str, activity: Activity, verdict: Outcome) -> None:
    step = db.get(ProcessStep, (instance_id, activity.id))
    instance = db.get(ProcessInstance, instance_id)
    definition = service.get(db_session=db, process_id=instance.process_id, version=instance.version).definition
    step.status = str(verdict.status)
    step.reason = verdict.reason[:512]
    step.decision_ids = ",".join(verdict.decision_ids)[:512] or None
    kept = kept_result(definition, activity.id, verdict.result)
    step.result = json.dumps(kept, ensure_ascii=False, sort_keys=True) if kept is not None else None
    step.updated_at = utcnow()
    db.flush()


def _finish(db: Session, instance: ProcessInstance, steps: Mapping[str, ProcessStep]) -> None:
    if instance.status != str(RunStatus.RUNNING):
        return
    if any(StepStatus(s.status) in UNFINISHED for s in steps.values()):
        return  # a notice still on its way: the run goes on when it is delivered
    stopped = any(StepStatus(s.status) in NOT_COMPLETED for s in steps.values())
    instance.status = str(RunStatus.INCOMPLETE if stopped else RunStatus.COMPLETED)
    instance.finished_at = utcnow()
    instance.application = None  # the relayed notices carried it; the hub keeps no copy
    db.flush()


def view(*, db_session: Session, instance_id: str) -> RunView:
    """A run as its person (or its requester) reads it."""
    instance = db_session.get(ProcessInstance, instance_id)
    if instance is None:
        raise service.ProcessError(f"no process run {instance_id}")
    definition = service.get(db_session=db_session, process_id=instance.process_id,
                             version=instance.version).definition
    steps = _steps(db_session, instance_id)
    return RunView(
        instance.instance_id, instance.query_group_id, instance.process_id, instance.version, definition.name,
        RunStatus(instance.status), instance.started_by, instance.trigger_channel, instance.started_at,
        tuple(StepView(a.id, a.name, a.requester, a.provider, StepStatus(steps[a.id].status), steps[a.id].reason,
                       tuple(filter(None, (steps[a.id].decision_ids or "").split(","))),
                       json.loads(steps[a.id].result) if steps[a.id].result else None)
              for a in definition.activities))


def run_for_group(*, db_session: Session, person_key: str, query_group_id: str) -> RunView | None:
    """The person's run whose access-history entries carry this query group, if any."""
    instance = db_session.scalar(select(ProcessInstance).where(
        ProcessInstance.query_group_id == query_group_id, ProcessInstance.person_key == person_key))
    return view(db_session=db_session, instance_id=instance.instance_id) if instance else None


def runs_of_person(*, db_session: Session, person_key: str, limit: int = 20) -> list[RunView]:
    ids = db_session.scalars(select(ProcessInstance.instance_id).where(ProcessInstance.person_key == person_key)
                             .order_by(ProcessInstance.started_at.desc()).limit(limit))
    return [view(db_session=db_session, instance_id=i) for i in ids]


def resume_unfinished(*, session_scope: SessionScope, settings: Settings,
                      exchanges: Mapping[str, Exchange] | None = None,
                      grace: timedelta = START_GRACE) -> int:
    """Carry every run a stopped hub left unfinished (or that waits for a delivery) as far as
    it goes now; returns how many runs were taken up. Runs younger than `grace` are left to
    the caller that started them."""
    now = utcnow()
    with session_scope() as db:
        ids = list(db.scalars(select(ProcessInstance.instance_id).where(
            ProcessInstance.status == str(RunStatus.RUNNING), ProcessInstance.started_at <= now - grace,
            or_(ProcessInstance.claimed_until.is_(None), ProcessInstance.claimed_until < now))))
    for instance_id in ids:
        run(session_scope=session_scope, settings=settings, instance_id=instance_id, exchanges=exchanges)
    return len(ids)


class ProcessResumer(Periodic):
    """In the app's lifespan: takes up runs a stopped hub left, and runs waiting for a notice's
    delivery, every few seconds."""

    name = "process-resumer"

    def __init__(self, session_scope: SessionScope, settings: Settings, interval: float = 5.0):
        super().__init__(interval)
        self._session_scope, self._settings = session_scope, settings

    def run_once(self) -> int:
        return resume_unfinished(session_scope=self._session_scope, settings=self._settings)
