"""Use cases: record a deploy, ingest samples, analyse, carry out the rollout, override."""
