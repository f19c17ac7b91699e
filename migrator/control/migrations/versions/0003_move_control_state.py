"""move control state in columns of its own (it was hidden in the human report)

The freeze's clock in the source (read by drain), whether a failure lifted the freeze (read by
resume), the tokens of earlier attempts (the fencing set), and the change-log position applied to
the target with the rate the catch-up measured. Moves in flight carry their values over from
``report``, which keeps only what humans read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 01:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('moves', sa.Column('source_frozen_clock', sa.DateTime(timezone=True), nullable=True))
    op.add_column('moves', sa.Column('freeze_lifted', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('moves', sa.Column('previous_tokens', postgresql.ARRAY(sa.String(length=64)),
                                     server_default=sa.text("'{}'::varchar[]"), nullable=False))
    op.add_column('moves', sa.Column('capture_snapshot', sa.Text(), nullable=True))
    op.add_column('moves', sa.Column('catch_up_keys_per_s', sa.Float(), nullable=True))
    op.execute("""
        UPDATE moves SET
            source_frozen_clock = (report->>'source_frozen_clock')::timestamptz,
            freeze_lifted = coalesce((report->>'freeze_lifted')::boolean, false),
            previous_tokens = coalesce(ARRAY(SELECT jsonb_array_elements_text(report->'tokens')), '{}'),
            catch_up_keys_per_s = (report->'catch_up'->>'keys_per_s')::float8,
            report = report - 'source_frozen_clock' - 'freeze_lifted' - 'tokens'
                     #- '{catch_up,applied}'
         WHERE report ?| ARRAY['source_frozen_clock', 'freeze_lifted', 'tokens', 'catch_up']
    """)


def downgrade() -> None:
    op.execute("""
        UPDATE moves SET report = report
            || CASE WHEN source_frozen_clock IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('source_frozen_clock', source_frozen_clock) END
            || CASE WHEN freeze_lifted THEN '{"freeze_lifted": true}'::jsonb ELSE '{}'::jsonb END
            || CASE WHEN cardinality(previous_tokens) = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('tokens', to_jsonb(previous_tokens)) END
            || CASE WHEN catch_up_keys_per_s IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('catch_up', coalesce(report->'catch_up', '{}'::jsonb)
                         || jsonb_build_object('applied', 0, 'keys_per_s', catch_up_keys_per_s)) END
    """)
    op.drop_column('moves', 'catch_up_keys_per_s')
    op.drop_column('moves', 'capture_snapshot')
    op.drop_column('moves', 'previous_tokens')
    op.drop_column('moves', 'freeze_lifted')
    op.drop_column('moves', 'source_frozen_clock')
