"""bench/hand_mutations.py stays in step with the code it breaks on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.hand_mutations import MUTATIONS, Mutation, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda mutation: mutation.name)
def test_each_mutation_finds_its_code_once_and_names_tests_that_exist(mutation: Mutation) -> None:
    # A moved file or a rewritten line would leave the mutation with nothing to break.
    assert (ROOT / mutation.path).read_text().count(mutation.old) == 1
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test


def test_a_failing_baseline_stops_the_run_before_any_mutation(capsys) -> None:
    # On a tree where the named tests fail anyway, every mutation would look caught.
    unrunnable = Mutation(
        "never applied",
        "bench/hand_mutations.py",
        "no such text",
        "",
        ("tests/test_hand_mutations.py::test_that_does_not_exist",),
    )
    assert main([], mutations=[unrunnable]) == 2
    err = capsys.readouterr().err
    assert "unmutated tree already fails" in err
    assert "never applied" not in err
