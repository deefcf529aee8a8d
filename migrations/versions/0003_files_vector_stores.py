"""files, vector stores, vector store files and file batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:09:43.190900
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text on SQLite (as app.db.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("filename", sa.String(length=1024), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("mime_type", sa.String(length=256), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index("ix_files_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_files_purpose_seq", ["purpose", "seq"], unique=False)
        batch_op.create_index("ix_files_seq", ["seq"], unique=False)

    op.create_table(
        "vector_stores",
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("expires_after", JSON, nullable=True),
        sa.Column("expires_at", sa.Integer(), nullable=True),
        sa.Column("last_active_at", sa.Integer(), nullable=False),
        sa.Column("expired", sa.Boolean(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vector_stores", schema=None) as batch_op:
        batch_op.create_index(
            "ix_vector_stores_expires_at", ["expired", "expires_at"], unique=False
        )
        batch_op.create_index("ix_vector_stores_seq", ["seq"], unique=False)

    op.create_table(
        "vector_store_file_batches",
        sa.Column("vector_store_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["vector_store_id"], ["vector_stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vector_store_file_batches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_vector_store_file_batches_store", ["vector_store_id"], unique=False
        )

    op.create_table(
        "vector_store_files",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("vector_store_id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_error", JSON, nullable=True),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("chunking_strategy", JSON, nullable=False),
        sa.Column("attributes", JSON, nullable=True),
        sa.Column("ingest_token", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["vector_store_file_batches.id"], ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["id"], ["files.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["vector_store_id"], ["vector_stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("vector_store_id", "id", name="uq_vector_store_files_store_file"),
    )
    with op.batch_alter_table("vector_store_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_vector_store_files_batch_status_seq", ["batch_id", "status", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_vector_store_files_claim", ["status", "lease_expires_at"], unique=False
        )
        batch_op.create_index("ix_vector_store_files_file", ["id"], unique=False)
        batch_op.create_index(
            "ix_vector_store_files_store_seq", ["vector_store_id", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_vector_store_files_store_status_seq",
            ["vector_store_id", "status", "seq"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("vector_store_files", schema=None) as batch_op:
        batch_op.drop_index("ix_vector_store_files_store_status_seq")
        batch_op.drop_index("ix_vector_store_files_store_seq")
        batch_op.drop_index("ix_vector_store_files_file")
        batch_op.drop_index("ix_vector_store_files_claim")
        batch_op.drop_index("ix_vector_store_files_batch_status_seq")

    op.drop_table("vector_store_files")
    with op.batch_alter_table("vector_store_file_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_vector_store_file_batches_store")

    op.drop_table("vector_store_file_batches")
    with op.batch_alter_table("vector_stores", schema=None) as batch_op:
        batch_op.drop_index("ix_vector_stores_seq")
        batch_op.drop_index("ix_vector_stores_expires_at")

    op.drop_table("vector_stores")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_seq")
        batch_op.drop_index("ix_files_purpose_seq")
        batch_op.drop_index("ix_files_expires_at")

    op.drop_table("files")
