"""Per-call features through the official openai SDK: every value equals what the workload was built with."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from golden_workload import SECRET_WORDS, run
from sidecar_harness import Stack, stack


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


def test_golden_workload_features_equal_their_known_values(s: Stack) -> None:
    expected = run(s.openai_url)
    records = s.records(6)
    features = [r.features for r in records]
    assert all(f is not None for f in features)
    f = [x for x in features if x is not None]
    assert [r.prompt_estimate for r in records] == expected.prompt
    assert [x.repeated_tokens for x in f] == expected.repeated
    assert [r.usage.cached_input_tokens for r in records] == expected.cached
    assert [x.cacheable_tokens for x in f] == expected.cacheable
    assert [x.cache_miss_tokens for x in f] == expected.miss
    assert [x.tool_output_tokens for x in f] == expected.tool
    assert [x.growth_tokens for x in f] == expected.growth
    assert [x.retry for x in f] == expected.retry
    assert [r.status for r in records] == [200, 200, 200, 200, 429, 200]
    ids = [x.conversation for x in f]
    assert len(set(ids)) == 2
    assert [ids.index(i) for i in ids] == [0, 0, 0, 3, 3, 3]
    assert [x.turn for x in f] == [1, 2, 3, 1, 2, 2]
    missed = f[1]
    assert missed.cache_miss_usd is not None
    assert missed.cache_miss_usd > 0
    assert f[2].cache_miss_usd == 0
    assert all(len(h) == 16 for x in f for h in x.context_hashes)
    assert f[1].context_hashes[:2] == f[0].context_hashes  # the same leading context hashes the same


def test_no_record_or_log_line_holds_prompt_text(s: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    s.reset()
    run(s.openai_url)
    dumped = json.dumps([r.model_dump(mode="json") for r in s.records(6)])
    for word in SECRET_WORDS:
        assert word not in dumped
    assert "here here here" not in dumped
