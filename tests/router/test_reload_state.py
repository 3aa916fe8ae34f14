"""A config reload keeps the live state of the endpoints it did not change."""

from __future__ import annotations

import aiohttp

from proxy.config import parse_config
from proxy.router.router import Router
from proxy.upstream import Upstream


def config(model_b: str = "b", open_for: float = 10.0):
    return parse_config(
        {
            "router": {"circuit": {"open_for": open_for}},
            "model_groups": {
                "g": {
                    "endpoints": [
                        {"name": "a", "url": "http://127.0.0.1:1/v1", "model": "a"},
                        {"name": "b", "url": "http://127.0.0.1:2/v1", "model": model_b},
                    ]
                }
            },
        }
    )


async def test_unchanged_endpoints_keep_their_state() -> None:
    async with aiohttp.ClientSession() as session:
        upstream = Upstream(session)
        old = Router(config(), upstream)
        a, b = old.groups["g"]
        a.cooldown_until = b.cooldown_until = 1e12
        new = Router(config(model_b="b2"), upstream)
        new.adopt(old)
        assert new.groups["g"][0] is a  # same config: its slots, cool-down and circuit carry over
        assert new.groups["g"][1] is not b and new.groups["g"][1].cooldown_until == 0
        changed_policy = Router(config(open_for=3.0), upstream)
        changed_policy.adopt(old)
        assert changed_policy.groups["g"][0] is not a  # a new circuit policy starts fresh
