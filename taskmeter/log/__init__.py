"""The durable ingest log (opt-in, `TASKMETER_INGEST_LOG=nats://…`): NATS JetStream between the
write endpoints and the store.

    POST /api/v1/usage/events, /v1/traces
      ─ validate (batch.parse_batch: rejections and in-batch repeats are exact here)
      ─ messages.encode: the principal and the valid events, one message per batch,
        its Nats-Msg-Id derived from the batch's (stream, event) ids
      ─ publisher.IngestLog.publish ─▶ JetStream (file storage; a re-sent batch inside the
        duplicate window is dropped by JetStream) ─ ack ─▶ answer 200 {accepted, …, batch_id}
    projector.Projector (in `serve` by default, or `taskmeter projector`)
      ─ pulls up to `fetch` messages from a durable consumer
      ─ merges them by principal into one Ingestor.ingest each (the same pipeline as the direct
        path: one store transaction; the store's idempotency is the last word, so a redelivered
        message changes nothing)
      ─ acks only after that transaction committed

Without the setting, ingestion writes straight to the store as before.
"""
