"""Tables of the relay room: the route table, the envelopes senders submitted, and the durable
outbox of envelopes to forward (one row per receiver; the copy kept for resend)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import BIG_ID, Base

PARTY_MAX = 1024
CODE_MAX = 64
NAME_MAX = 128
LOGICAL_MAX = 256
URN_MAX = 256
ENDPOINT_MAX = 1024
REMARK_MAX = 512

# delivery states of an outbox row
QUEUED = "queued"  # waiting (or retrying) for the receiver
DELIVERED = "delivered"  # the receiver acknowledged it (received or duplicate)
REJECTED = "rejected"  # the receiver acknowledged it as rejected
REFUSED = "refused"  # the decision refused it: never sent, kept as the sender's ack
EXPIRED = "expired"  # the receiver stayed down for the whole retention period
STATES = (QUEUED, DELIVERED, REJECTED, REFUSED, EXPIRED)


class RelayRoute(Base):
    """One destination of a route: (process type, message type) → a logical destination, the
    agency it resolves to, the service type whose offering gives the endpoint, the task and
    information type decided, and which attachments go there (by name; empty = all)."""

    __tablename__ = "relay_routes"
    __table_args__ = (
        UniqueConstraint("process_type", "message_type", "logical_to", name="uq_relay_routes_destination"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_type: Mapped[str] = mapped_column(String(NAME_MAX))
    message_type: Mapped[str] = mapped_column(String(NAME_MAX))
    logical_to: Mapped[str] = mapped_column(String(LOGICAL_MAX))
    position: Mapped[int] = mapped_column(Integer)
    agency: Mapped[str] = mapped_column(String(PARTY_MAX))  # entity ID, or @Attribute naming one
    service_type: Mapped[str] = mapped_column(String(URN_MAX))
    task_code: Mapped[str] = mapped_column(String(CODE_MAX))
    info_type_code: Mapped[str] = mapped_column(String(CODE_MAX))
    attachments: Mapped[str] = mapped_column(String(2048))  # space-separated names; "" = all
    binding: Mapped[str] = mapped_column(String(8))  # soap | json
    owner: Mapped[str] = mapped_column(String(NAME_MAX))  # who installed it (a process definition, config)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class RelayEnvelope(Base):
    """An envelope a sender submitted, once per (sender, receipt number): idempotency."""

    __tablename__ = "relay_envelopes"
    __table_args__ = (UniqueConstraint("sender", "receipt_number", name="uq_relay_envelopes_receipt"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    sender: Mapped[str] = mapped_column(String(PARTY_MAX))
    receipt_number: Mapped[str] = mapped_column(String(CODE_MAX))
    digest: Mapped[str] = mapped_column(String(CODE_MAX))  # SHA-256 of the envelope's model, hex
    process_type: Mapped[str] = mapped_column(String(NAME_MAX))
    message_type: Mapped[str] = mapped_column(String(NAME_MAX))
    query_group_id: Mapped[str] = mapped_column(String(CODE_MAX))
    received_at: Mapped[datetime] = mapped_column(DateTime)


class RelayDelivery(Base):
    """The outbox: one forwarded envelope for one receiver, signed by the hub, delivered in id
    order per receiver, kept (body) until `keep_until` for resend on request."""

    __tablename__ = "relay_deliveries"
    __table_args__ = (
        Index("ix_relay_deliveries_due", "state", "next_attempt_at"),
        Index("ix_relay_deliveries_receiver", "receiver", "state", "id"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    envelope_id: Mapped[int] = mapped_column(ForeignKey("relay_envelopes.id", ondelete="CASCADE"), index=True)
    receipt_number: Mapped[str] = mapped_column(String(CODE_MAX))
    logical_to: Mapped[str] = mapped_column(String(LOGICAL_MAX))
    receiver: Mapped[str] = mapped_column(String(PARTY_MAX))
    endpoint: Mapped[str] = mapped_column(String(ENDPOINT_MAX))
    binding: Mapped[str] = mapped_column(String(8))
    decision_id: Mapped[str] = mapped_column(String(CODE_MAX))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(CODE_MAX))  # the decision's reason code
    body: Mapped[bytes | None] = mapped_column(LargeBinary)  # the hub-signed envelope; None when purged
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(String(REMARK_MAX))
    ack_status: Mapped[str | None] = mapped_column(String(16))
    ack_time: Mapped[datetime | None] = mapped_column(DateTime)
    ack_remark: Mapped[str | None] = mapped_column(String(REMARK_MAX))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    keep_until: Mapped[datetime] = mapped_column(DateTime)
