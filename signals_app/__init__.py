"""Signal: event ingest (`POST /api/v1/events`, Segment-compatible calls), validation, identity and idempotency; it
hands each accepted batch to Graph's online state.
"""
