//! Kafka helpers for tests (random topics and groups, waiting for the group to catch up).
