"""The stage table (pipeline.STAGES): the only place that knows the stages, their order and their roles."""

from __future__ import annotations

import pytest

from pipeline import DEFAULT_STAGES, STAGES, parse_stages, with_stages
from config.loading import load_experiment
from utils.errors import ConfigError


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_names_a_handler_that_exists(name):
    handler = STAGES[name].handler()
    assert callable(handler) and handler.__name__ == f"{name}_stage"
    assert handler.__module__.endswith(f".{name}_stage")  # every stage module is <name>_stage.py


def test_stages_come_in_the_order_data_flows_and_unknown_ones_are_refused():
    assert parse_stages("report,train,sharpness") == ["train", "sharpness", "report"]
    with pytest.raises(ConfigError, match="unknown stage 'sharpnes'"):
        parse_stages("train,sharpnes")
    assert DEFAULT_STAGES == ["train", "sharpness", "landscape", "report"]


def test_an_experiment_without_stages_records_the_defaults(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("experiment: e\nruns: {a: {}}\n")
    experiment = load_experiment(path)
    assert experiment.stages == [] and with_stages(experiment).stages == DEFAULT_STAGES
    path.write_text("experiment: e\nstages: [train, report]\nruns: {a: {}}\n")
    assert with_stages(load_experiment(path)).stages == ["train", "report"]
