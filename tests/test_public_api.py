"""The library face changes only on purpose."""

import proxy


def test_public_names_are_pinned() -> None:
    assert proxy.__all__ == sorted(
        ["AsyncRAGGenerator", "ConcurrentRouter", "DistributedCacheDecorator", "ModelEndpoint"]
    )


def test_every_public_name_imports() -> None:
    for name in proxy.__all__:
        assert getattr(proxy, name).__name__ == name
