"""The relay's tests use the cache's sidecar fixture: storing is what they check."""

from tests.cache.conftest import cached_sidecar  # noqa: F401  (a fixture, re-exported)
