"""The torch-free catalogue (backend.core.strategies) and the implementations (worker.ml) agree."""

import dataclasses

import pytest

from backend.core.errors import Invalid
from backend.core.strategies import CATALOGUE, catalogue_json, check_strategy
from worker.ml import coverage, xal
from worker.ml.strategies import STRATEGIES

IMPLEMENTED_OPTIONS = {
    "xal-entropy": xal.XalOptions,
    "xal-margin": xal.XalOptions,
    "xal-least": xal.XalOptions,
    "coverage-entropy": coverage.CoverageOptions,
    "coverage-margin": coverage.CoverageOptions,
}


def test_the_catalogue_lists_exactly_the_implemented_strategies_and_what_they_read():
    assert list(CATALOGUE) == list(STRATEGIES)
    assert {name: info.needs for name, info in CATALOGUE.items()} == {name: s.needs for name, s in STRATEGIES.items()}
    assert {name for name, info in CATALOGUE.items() if not info.selectable} == {
        name for name, s in STRATEGIES.items() if s.first_batch_only
    }


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_option_names_and_defaults_agree(name):
    schema = CATALOGUE[name].options
    implemented = IMPLEMENTED_OPTIONS.get(name)
    defaults = {field: info.default for field, info in schema.model_fields.items()}
    if implemented is None:
        assert defaults == {}
        STRATEGIES[name].parse_options({})
        with pytest.raises(ValueError):
            STRATEGIES[name].parse_options({"anything": 1})
        return
    assert defaults == {f.name: f.default for f in dataclasses.fields(implemented)}
    assert STRATEGIES[name].parse_options({}) == implemented()


def test_a_bad_strategy_or_option_is_refused_with_its_reason():
    check_strategy("xal-entropy", {"representation": "pixel"})
    with pytest.raises(Invalid, match="unknown selection strategy 'magic'"):
        check_strategy("magic", {})
    with pytest.raises(Invalid, match="handover_accuracy"):
        check_strategy("coverage-entropy", {"handover_accuracy": 2})
    with pytest.raises(Invalid, match="unknown selection strategy 'cluster-spread'"):
        check_strategy("cluster-spread", {})  # a cold start, not a project's strategy
    with pytest.raises(Invalid, match="takes no options"):
        check_strategy("random", {"k": 1})
    assert [entry["name"] for entry in catalogue_json()] == list(CATALOGUE)
