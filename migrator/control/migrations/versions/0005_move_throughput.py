"""move_throughput: what each move measured per table, for the estimate's calibration

Rows (or blobs) and bytes per table, and each table's share of the copy and verify steps' seconds,
with the move's strategy and cells. The dry run's estimate reads the recent ones
(migrator/moves/calibration.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 08:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'move_throughput',
        sa.Column('move_id', postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('table_name', sa.Text(), nullable=False),
        sa.Column('strategy', sa.String(length=16), nullable=False),
        sa.Column('source_cell', sa.String(length=63), nullable=False),
        sa.Column('target_cell', sa.String(length=63), nullable=False),
        sa.Column('rows', sa.BigInteger(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=True),
        sa.Column('copy_s', sa.Float(), nullable=False),
        sa.Column('verify_s', sa.Float(), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['move_id'], ['moves.id'], name=op.f('fk_move_throughput_move_id_moves'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('move_id', 'kind', 'table_name', name=op.f('pk_move_throughput')),
    )
    op.create_index('ix_move_throughput_finished_at', 'move_throughput', ['finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_move_throughput_finished_at', table_name='move_throughput')
    op.drop_table('move_throughput')
