"""Release channels, their entries, environment subscriptions and promotion approvals.

Every existing product gets the default channels RELEASE → CANARY → STABLE (no promotion
rule), and every release already approved enters RELEASE, as an approval does from now on
(``entered_by`` = ``migration``; the audit log records nothing for it: the migration holds
no audit MAC key).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DEFAULT_CHANNELS = ("RELEASE", "CANARY", "STABLE")  # = hub.services.channels.DEFAULT_CHANNELS


def _id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "channels",
        _id(),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("min_successes", sa.Integer(), nullable=False),
        sa.Column("no_failures", sa.Boolean(), nullable=False),
        sa.Column("soak_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name=op.f("fk_channels_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("product_id", "name", name=op.f("uq_channels_product_id")),
    )
    op.create_index(op.f("ix_channels_product_id"), "channels", ["product_id"])
    op.create_table(
        "channel_entries",
        _id(),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("entered_at", _DATETIME, nullable=False),
        sa.Column("entered_by", sa.String(length=140), nullable=False),
        sa.Column("recalled_at", _DATETIME, nullable=True),
        sa.Column("recalled_by", sa.String(length=140), nullable=True),
        sa.Column("recall_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"],
                                name=op.f("fk_channel_entries_channel_id_channels")),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name=op.f("fk_channel_entries_release_id_releases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_entries")),
        sa.UniqueConstraint("channel_id", "release_id",
                            name=op.f("uq_channel_entries_channel_id")),
    )
    op.create_index(op.f("ix_channel_entries_channel_id"), "channel_entries", ["channel_id"])
    op.create_index(op.f("ix_channel_entries_release_id"), "channel_entries", ["release_id"])
    op.create_table(
        "channel_subscriptions",
        _id(),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.Column("created_by", sa.String(length=140), nullable=False),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"],
                                name=op.f("fk_channel_subscriptions_channel_id_channels")),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"],
            name=op.f("fk_channel_subscriptions_environment_id_environments")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name=op.f("fk_channel_subscriptions_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_subscriptions")),
        sa.UniqueConstraint("environment_id", "product_id",
                            name=op.f("uq_channel_subscriptions_environment_id")),
    )
    op.create_index(op.f("ix_channel_subscriptions_channel_id"), "channel_subscriptions",
                    ["channel_id"])
    op.create_index(op.f("ix_channel_subscriptions_product_id"), "channel_subscriptions",
                    ["product_id"])
    op.create_table(
        "promotion_approvals",
        _id(),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("approver_id", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["approver_id"], ["users.id"],
                                name=op.f("fk_promotion_approvals_approver_id_users")),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"],
                                name=op.f("fk_promotion_approvals_channel_id_channels")),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name=op.f("fk_promotion_approvals_release_id_releases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_approvals")),
        sa.UniqueConstraint("channel_id", "release_id", "approver_id",
                            name=op.f("uq_promotion_approvals_channel_id")),
    )
    op.create_index(op.f("ix_promotion_approvals_channel_id"), "promotion_approvals",
                    ["channel_id"])
    op.create_index(op.f("ix_promotion_approvals_release_id"), "promotion_approvals",
                    ["release_id"])
    _default_channels()


def _default_channels() -> None:
    """RELEASE, CANARY, STABLE for every product; approved releases enter RELEASE."""
    bind = op.get_bind()
    now = datetime.now(UTC).replace(tzinfo=None)
    channels = sa.table(
        "channels", sa.column("id", sa.Integer()), sa.column("product_id", sa.Integer()),
        sa.column("name", sa.String()), sa.column("position", sa.Integer()),
        sa.column("required_approvals", sa.Integer()), sa.column("min_successes", sa.Integer()),
        sa.column("no_failures", sa.Boolean()), sa.column("soak_seconds", sa.Integer()),
        sa.column("created_at", _DATETIME))
    entries = sa.table(
        "channel_entries", sa.column("channel_id", sa.Integer()),
        sa.column("release_id", sa.Integer()), sa.column("entered_at", _DATETIME),
        sa.column("entered_by", sa.String()))
    products = bind.execute(sa.text("SELECT id FROM products ORDER BY id")).scalars().all()
    for product_id in products:
        for position, name in enumerate(DEFAULT_CHANNELS):
            bind.execute(channels.insert().values(
                product_id=product_id, name=name, position=position, required_approvals=0,
                min_successes=0, no_failures=False, soak_seconds=0, created_at=now))
        first = bind.execute(
            sa.text("SELECT id FROM channels WHERE product_id = :p AND position = 0"),
            {"p": product_id}).scalar_one()
        approved = bind.execute(
            sa.text("SELECT id FROM releases WHERE product_id = :p AND state = 'approved' "
                    "ORDER BY id"), {"p": product_id}).scalars().all()
        for release_id in approved:
            bind.execute(entries.insert().values(
                channel_id=first, release_id=release_id, entered_at=now,
                entered_by="migration"))


def downgrade() -> None:
    op.drop_table("promotion_approvals")
    op.drop_table("channel_subscriptions")
    op.drop_table("channel_entries")
    op.drop_table("channels")
