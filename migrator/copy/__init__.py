"""The row copier: keyset batches over the primary key, streamed with binary COPY, upserted."""
