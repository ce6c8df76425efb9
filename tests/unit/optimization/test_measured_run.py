"""The measuring stages' skeleton: a result is current only with its stamp and weights, every result carries the same
provenance header, and every field of the config sections a result depends on is in its stamp, a field added later
included; only the fields each stage names as shaping another output are left out."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from config.schema import GeometryConfig, RunConfig, option
from optimization.measured_run import Result, TrainedRun, sharpness_settings
from optimization.prune_stage import prune_results
from sharpness.geometry_stage import frame_stamp, geometry_result
from sharpness.sharpness_stage import sharpness_results
from visualization.landscape_stage import LINE_ONLY, PLANE_ONLY, landscape_results


def lora_run(**sections) -> RunConfig:
    """A LoRA run that asks for every result (density, the merged space, pruning), with `sections` replaced."""
    run = RunConfig()
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, adapter=dataclasses.replace(run.model.adapter,
                                                                                                   type="lora")))
    sharpness = dataclasses.replace(run.sharpness, merged=True,
                                    density=dataclasses.replace(run.sharpness.density, probes=1))
    return dataclasses.replace(run, **{"sharpness": sharpness, **sections})


def trained(run: RunConfig, tmp_path, checkpoint: str = "weights-0") -> TrainedRun:
    return TrainedRun(run, tmp_path, "exp/run/seed-42", checkpoint, "python run.py --stages train")


def stamps(run: RunConfig, tmp_path) -> dict[str, str]:
    """{file name: stamp} of every result the four measuring stages write for `run`."""
    of = trained(run, tmp_path)
    results = sharpness_results(of) + [geometry_result(of)] + prune_results(of) + landscape_results(of)
    return {result.path.name: result.stamp for result in results}


def other_value(value, kind):
    """A valid value other than `value` for a field of type `kind`."""
    if typing.get_origin(kind) is typing.Literal:
        return next(choice for choice in typing.get_args(kind) if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2
    if isinstance(value, list):
        return value[:-1] if len(value) > 1 else value + value
    raise AssertionError(f"no other value for {value!r}")


def fields_of(section) -> list[tuple[str, ...]]:
    """The dotted paths of every field of a config section, nested sections' too."""
    paths = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        paths += [(f.name, *inner) for inner in fields_of(value)] if dataclasses.is_dataclass(value) else [(f.name,)]
    return paths


def can_change_a_result(section, path: tuple[str, ...]) -> bool:
    """False for a field the schema marks result=False (how work is done, not what it finds)."""
    field = next(f for f in dataclasses.fields(section) if f.name == path[0])
    if len(path) > 1:
        return can_change_a_result(getattr(section, path[0]), path[1:])
    return field.metadata.get("result", True)


def changed(section, path: tuple[str, ...]):
    value = getattr(section, path[0])
    if len(path) > 1:
        return dataclasses.replace(section, **{path[0]: changed(value, path[1:])})
    kind = typing.get_type_hints(type(section))[path[0]]
    return dataclasses.replace(section, **{path[0]: other_value(value, kind)})


# What each result depends on: whole sections but what names another output (each stage says why).
DEPENDS = {
    "sharpness.json": lambda section, path: section == "sharpness" and path[0] not in ("density", "merged"),
    "sharpness_merged.json": lambda section, path: section == "sharpness" and path[0] not in ("density", "merged"),
    "density.json": lambda section, path: section == "sharpness" and path[0] != "merged",
    "geometry.json": lambda section, path: section == "geometry" or (section == "sharpness"
                                                                      and path[0] not in ("density", "merged")),
    "prune.json": lambda section, path: section == "prune" or (section == "sharpness"
                                                                and path[0] not in ("density", "merged")),
    "interpolation.json": lambda section, path: section == "landscape" and path[0] not in PLANE_ONLY,
    "landscape_2d.npz": lambda section, path: section == "landscape" and path[0] not in LINE_ONLY,
}


@pytest.mark.parametrize("section", ["sharpness", "geometry", "prune", "landscape"])
def test_every_field_of_a_section_is_in_the_stamp_of_every_result_that_depends_on_it(section, tmp_path):
    base = lora_run()
    before = stamps(base, tmp_path)
    assert set(before) == set(DEPENDS)
    for path in fields_of(getattr(base, section)):
        after = stamps(dataclasses.replace(base, **{section: changed(getattr(base, section), path)}), tmp_path)
        for name, depends in DEPENDS.items():
            if name in after:  # sharpness.merged false: no merged result
                expected = depends(section, path) and can_change_a_result(getattr(base, section), path)
                assert (after[name] != before[name]) == expected, (name, ".".join((section, *path)))


def test_settings_that_used_to_be_left_out_make_results_stale(tmp_path):
    """The density was stamped without the HVP it is measured with; pruning without it too."""
    base = lora_run()
    forward = dataclasses.replace(base.sharpness, hvp="forward")
    before, after = stamps(base, tmp_path), stamps(dataclasses.replace(base, sharpness=forward), tmp_path)
    assert after["density.json"] != before["density.json"] and after["prune.json"] != before["prune.json"]


def test_a_field_added_to_a_section_makes_its_results_stale(tmp_path):
    added = dataclasses.make_dataclass("GeometryConfig", [("new", int, option(7, "a new setting"))],
                                       bases=(GeometryConfig,))
    base = lora_run()
    before = stamps(base, tmp_path)
    after = stamps(dataclasses.replace(base, geometry=added()), tmp_path)
    assert [name for name in before if after[name] != before[name]] == ["geometry.json"]
    result = geometry_result(trained(dataclasses.replace(base, geometry=added()), tmp_path))
    assert result.settings["geometry"]["new"] == 7


def test_the_original_frame_does_not_depend_on_the_rotation(tmp_path):
    base = lora_run()
    turned = dataclasses.replace(base, geometry=dataclasses.replace(base.geometry, rotation="per-layer", rotation_seed=3))
    results = [geometry_result(trained(run, tmp_path)) for run in (base, turned)]
    assert frame_stamp(results[0], "original") == frame_stamp(results[1], "original")
    assert frame_stamp(results[0], "rotated") != frame_stamp(results[1], "rotated")
    assert frame_stamp(results[0], "original") != frame_stamp(results[0], "rotated")


def test_a_result_is_current_only_with_its_stamp_and_weights(tmp_path, capsys):
    run = RunConfig()
    result = trained(run, tmp_path).result("curvature.json", sharpness_settings(run), "curvature")
    assert not result.current(force=False)
    result.write({"value": 1.5})
    written = json.loads(result.path.read_text())
    assert written == {"run": "default", "seed": 42, "fingerprint": result.stamp, "checkpoint": "weights-0",
                       "settings": sharpness_settings(run), "value": 1.5}
    capsys.readouterr()
    assert result.current(force=False) and not result.current(force=True)
    assert capsys.readouterr().out == ("exp/run/seed-42: curvature already measured with these settings; "
                                       "skipping (--force redoes it)\n")
    retrained = trained(run, tmp_path, "weights-1").result("curvature.json", sharpness_settings(run), "curvature")
    other = dataclasses.replace(result, settings={**result.settings, "tol": 0.5})
    assert not retrained.current(force=False) and not other.current(force=False)
    older = {key: value for key, value in written.items() if key != "checkpoint"}  # an older version's file
    result.path.write_text(json.dumps(older))
    assert not result.current(force=False)


def test_a_result_finished_only_in_part_is_saved_but_not_current(tmp_path):
    partial = dataclasses.replace(trained(RunConfig(), tmp_path).result("grid.json", {}, "grid"),
                                  complete=lambda saved: saved["done"])
    partial.write({"done": False})
    assert partial.saved(force=False)["done"] is False and not partial.current(force=False)


def test_a_corrupt_result_is_measured_again(tmp_path, capsys):
    result: Result = trained(RunConfig(), tmp_path).result("curvature.json", {}, "curvature")
    result.path.write_text('{"fingerprint": ')
    assert not result.current(force=False) and not result.path.exists()
    assert "warning" in capsys.readouterr().out


def test_texts_and_measurement_sets_are_built_once_per_command(tiny_experiment, tmp_path, monkeypatch):
    """Before, every run loaded the texts in each stage (train, sharpness, geometry: 6 loads for 2 seeds) and each
    measuring stage built each run's measurement set (4 builds); the tracked training (train.track) then still built
    its own for each run (3 builds)."""
    import data.corpus
    import optimization.measured_run as measured_run
    import optimization.train_setup
    from pipeline import run_experiment

    loads, builds = [], []
    read_texts, build_set = data.corpus._read_texts, measured_run.measurement_set
    monkeypatch.setattr(data.corpus, "_loaded", {})
    monkeypatch.setattr(measured_run, "_measurement_sets", {})
    monkeypatch.setattr(data.corpus, "_read_texts", lambda cfg: loads.append(cfg) or read_texts(cfg))
    monkeypatch.setattr(measured_run, "measurement_set", lambda *args: builds.append(args) or build_set(*args))
    monkeypatch.setattr(optimization.train_setup, "measurement_set", lambda *args: builds.append(args) or build_set(*args))
    experiment = tiny_experiment("""
        seeds: [1, 2]
        train: {epochs: 1, track: {every: 100, iters: 3}}
        sharpness: {max_iter: 4, random_directions: 1, worst_case_steps: 0, trace_samples: 0}
        geometry: {cauchy_vectors: 5, bootstrap: 0, frobenius_probes: 0, rotation: none}
    """)
    run_experiment(experiment, ["train", "sharpness", "geometry"], tmp_path / "out")
    assert len(loads) == 1
    # each seed's scratch tokenizer is trained on the same texts: one tokenizer, one set
    assert len(builds) == 1
