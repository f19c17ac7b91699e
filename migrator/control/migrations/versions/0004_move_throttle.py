"""a move's throttle: the health signal that holds its units back while it lasts

``throttle`` is NULL while the move's units run freely, else the reading that paused or slowed them
(cell, indicator, signal, value, limit, reason) and since when (docs/adr/0019-health-indicators.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 08:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('moves', sa.Column('throttle', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('moves', 'throttle')
