"""bench/hand_mutations.py stays in step with the code it breaks on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.hand_mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda mutation: mutation.name)
def test_each_mutation_finds_its_code_once_and_names_tests_that_exist(mutation: Mutation) -> None:
    # A moved file or a rewritten line would leave the mutation with nothing to break.
    assert (ROOT / mutation.path).read_text().count(mutation.old) == 1
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
