"""Fuzzing the real server from its own OpenAPI document (tests/fuzzing.py, schemathesis).

Short enough for the suite: a server with small limits (so the document admits small requests)
on the shared model, generations capped at 2 tokens after validation, a fixed number of
requests per operation, derandomized so a failure reproduces. ``benchmarks/fuzz.py`` runs the
same checks much longer and commits its result.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from schemathesis import GenerationMode

from conftest import RunningServer, start_server
from fuzzing import fuzz, short_generations
from reference_server import Settings
from reference_server.backends.local import LocalBackend

# Small limits keep generated requests cheap; the document declares them, so valid requests stay valid.
LIMITS = {"max_n": 2, "max_messages": 2, "max_inputs": 4, "max_tools": 1}
EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 12}


@pytest.fixture(scope="module")
def fuzz_server(settings: Settings, engine: LocalBackend) -> Iterator[RunningServer]:
    server = start_server(settings.model_copy(update=LIMITS), engine)
    yield server
    server.stop()


def test_fuzzed_requests_get_declared_answers(fuzz_server: RunningServer, engine: LocalBackend) -> None:
    with short_generations(engine):
        tally = fuzz(fuzz_server.root, EXAMPLES)
    print(f"\n{tally.requests} requests in {tally.seconds:.0f} s; {tally.share_reached():.0%} of valid "
          f"generation requests reached the model; refused by undeclarable rules: {dict(tally.rules)}; "
          f"seconds: {tally.timings}")
    assert tally.failures == [], "\n\n".join(tally.failures[:10])
    assert tally.server_errors == 0
    assert tally.share_reached() >= 0.5, f"only {tally.share_reached():.0%} of valid requests reached the model"
    assert sum(tally.valid.values()) >= 60 and tally.requests >= 100
    assert fuzz_server.contract.violations == [], "\n".join(fuzz_server.contract.violations[:10])
