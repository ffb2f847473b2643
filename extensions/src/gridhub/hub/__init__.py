"""The hub side of GridHub: config schema, secrets, token file refresh, masterclass helpers."""
