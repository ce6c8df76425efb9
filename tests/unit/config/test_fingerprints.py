"""What a result depends on is declared once, by whole config sections (config.schema.section_settings): a field
added to a section is in every fingerprint of that section, unless the schema marks it as unable to change a result
or as added with a default that keeps older results current."""

from __future__ import annotations

import dataclasses

from config.schema import RunConfig, SharpnessConfig, option, section_settings
from utils.io import fingerprint


def with_new_field(**field_options):
    """A SharpnessConfig with one more field, `new`, as a maintainer would add it."""
    cls = dataclasses.make_dataclass("SharpnessConfig", [("new", int, option(7, "a new setting", **field_options))],
                                     bases=(SharpnessConfig,))
    return cls


def test_a_field_added_to_a_section_changes_its_fingerprint():
    run = RunConfig()
    before = fingerprint(section_settings(run, "sharpness"))
    after = dataclasses.replace(run, sharpness=with_new_field()())
    assert section_settings(after, "sharpness")["sharpness"]["new"] == 7
    assert fingerprint(section_settings(after, "sharpness")) != before


def test_fields_marked_in_the_schema_stay_out_until_they_matter():
    run = RunConfig()
    before = fingerprint(section_settings(run, "sharpness"))
    cls = with_new_field(added=True)
    assert fingerprint(section_settings(dataclasses.replace(run, sharpness=cls()), "sharpness")) == before
    assert fingerprint(section_settings(dataclasses.replace(run, sharpness=cls(new=8)), "sharpness")) != before
    quiet = with_new_field(result=False)
    assert fingerprint(section_settings(dataclasses.replace(run, sharpness=quiet(new=8)), "sharpness")) == before


def test_nested_sections_and_result_free_fields():
    run = RunConfig()
    assert section_settings(run, "sharpness")["sharpness"]["density"]["steps"] == 80
    assert "compile" not in section_settings(run, "train")["train"]
    assert section_settings(run, "logging") == {"logging": {}}


def test_the_measurement_set_is_named_by_its_marks():
    from config.schema import measurement_set_settings

    assert measurement_set_settings(RunConfig()) == {"batches": 3, "batch_size": 4, "seed": 0}


def test_a_field_added_to_train_changes_the_training_fingerprint_unless_marked_added_at_its_default():
    from config.schema import TrainConfig
    from models.runs import training_fingerprint

    def train_with(**field_options):
        return dataclasses.make_dataclass("TrainConfig", [("new", int, option(7, "a new setting", **field_options))],
                                          bases=(TrainConfig,))

    run = RunConfig()
    before = training_fingerprint(run)
    assert training_fingerprint(dataclasses.replace(run, train=train_with()())) != before
    assert training_fingerprint(dataclasses.replace(run, train=train_with(added=True)())) == before
    assert training_fingerprint(dataclasses.replace(run, train=train_with(added=True)(new=8))) != before
    assert training_fingerprint(dataclasses.replace(run, train=train_with(result=False)(new=8))) == before
