"""Sweeps: the `sweep:` block of experiment files (grids, random draws, runs crossed with points), the names
and values of the runs it makes, errors naming where a bad value was written, --runs, and `run.py --list`.
Nothing here trains."""

from __future__ import annotations

import dataclasses

import pytest

import run
from config.loading import load_experiment, with_values
from config.schema import SearchConfig
from utils.errors import ConfigError

GRID = """
sweep:
  grid:
    train.batch_size: [4, 8]
    train.lr: [0.1, 0.3]
"""

RUNS_X_GRID = """
runs:
  sgd: {train: {optimizer: sgd}}
  adam: {train: {optimizer: adam, lr: 0.5}}
sweep:
  grid:
    train.batch_size: [4, 8]
"""

RANDOM = """
sweep:
  random:
    n: 5
    seed: {seed}
    space:
      train.lr: {{loguniform: [1.0e-4, 1.0e-1]}}
      train.weight_decay: {{uniform: [0.0, 0.1]}}
      train.epochs: {{int: [1, 3]}}
      train.optimizer: [sgd, adam]
"""

SEARCH = """
search: {n_trials: 2, space: {train.lr: {loguniform: [0.01, 1.0]}}}
"""


def names(experiment) -> list[str]:
    return [r.name for r in experiment.runs]


# ----------------------------------------------------------------------------------------------
# Grids.

def test_grid_makes_every_combination_first_key_outermost(tiny_experiment):
    """A grid without `runs:` makes one run per combination, named by the values, first key outermost."""
    exp = tiny_experiment(GRID)
    assert names(exp) == ["batch_size=4_lr=0.1", "batch_size=4_lr=0.3", "batch_size=8_lr=0.1", "batch_size=8_lr=0.3"]
    expected = [(4, 0.1), (4, 0.3), (8, 0.1), (8, 0.3)]
    assert [(r.train.batch_size, r.train.lr) for r in exp.runs] == expected
    assert exp.swept == {r.name: {"train.batch_size": bs, "train.lr": lr} for r, (bs, lr) in zip(exp.runs, expected)}
    # the rest of each run is the file's settings
    assert all(r.train.optimizer == "sgd" and r.train.epochs == 2 for r in exp.runs)


def test_runs_are_crossed_with_the_grid(tiny_experiment):
    """Each named run is crossed with every point, keeping its own settings and taking the point's."""
    exp = tiny_experiment(RUNS_X_GRID)
    assert names(exp) == ["sgd_batch_size=4", "sgd_batch_size=8", "adam_batch_size=4", "adam_batch_size=8"]
    got = [(r.train.optimizer, r.train.lr, r.train.batch_size) for r in exp.runs]
    assert got == [("sgd", 0.3, 4), ("sgd", 0.3, 8), ("adam", 0.5, 4), ("adam", 0.5, 8)]
    assert exp.swept["adam_batch_size=8"] == {"train.batch_size": 8}


def test_layer_order_run_then_sweep_then_set(write_config):
    """A sweep value overrides the run's value for the same key, and --set overrides the sweep value."""
    path = write_config("""
        runs:
          a: {train: {lr: 0.5, batch_size: 16}}
        sweep: {grid: {train.lr: [0.1, 0.2]}}
    """)
    exp = load_experiment(path)
    assert [(r.name, r.train.lr, r.train.batch_size) for r in exp.runs] == [("a_lr=0.1", 0.1, 16), ("a_lr=0.2", 0.2, 16)]
    exp = load_experiment(path, ["train.lr=0.05"])
    assert [r.train.lr for r in exp.runs] == [0.05, 0.05]
    assert names(exp) == ["a_lr=0.1", "a_lr=0.2"]


def test_keys_sharing_a_last_part_are_named_whole(tiny_experiment):
    """Two swept keys ending alike (sharpness.seed, landscape.seed) appear by their whole key in run names."""
    exp = tiny_experiment("""
        sweep:
          grid:
            sharpness.seed: [1]
            landscape.seed: [2, 3]
            train.lr: [0.1]
    """)
    assert names(exp) == ["sharpness.seed=1_landscape.seed=2_lr=0.1", "sharpness.seed=1_landscape.seed=3_lr=0.1"]
    assert [(r.sharpness.seed, r.landscape.seed) for r in exp.runs] == [(1, 2), (1, 3)]


def test_list_values_in_a_grid(tiny_experiment):
    """A list-valued key (train.betas) takes lists as grid values, joined by '-' in the name."""
    exp = tiny_experiment("sweep: {grid: {train.betas: [[0.9, 0.99], [0.9, 0.999]]}}\n")
    assert names(exp) == ["betas=0.9-0.99", "betas=0.9-0.999"]
    assert [r.train.betas for r in exp.runs] == [[0.9, 0.99], [0.9, 0.999]]
    assert exp.swept["betas=0.9-0.99"] == {"train.betas": [0.9, 0.99]}


def test_points_with_the_same_name_are_an_error(write_config):
    """Two grid values that print the same (0.1 and 0.10000001) would make one run name twice: an error."""
    path = write_config("sweep: {grid: {train.lr: [0.1, 0.10000001]}}\n")
    with pytest.raises(ConfigError, match="two points make the same run name 'lr=0.1'"):
        load_experiment(path)


# ----------------------------------------------------------------------------------------------
# Random draws.

def test_random_draws_n_distinct_typed_and_rounded_points(tiny_experiment):
    """Random draws: n distinct runs, each value within its bounds, typed, rounded to 4 digits and named as is."""
    exp = tiny_experiment(RANDOM.format(seed=3))
    assert len(exp.runs) == 5 and len(set(names(exp))) == 5
    assert len({tuple(v.values()) for v in exp.swept.values()}) == 5
    for r in exp.runs:
        lr, wd, epochs, opt = r.train.lr, r.train.weight_decay, r.train.epochs, r.train.optimizer
        assert exp.swept[r.name] == {"train.lr": lr, "train.weight_decay": wd, "train.epochs": epochs,
                                     "train.optimizer": opt}
        assert 1e-4 <= lr <= 1e-1 and float(f"{lr:.4g}") == lr
        assert 0.0 <= wd <= 0.1 and float(f"{wd:.4g}") == wd
        assert isinstance(epochs, int) and 1 <= epochs <= 3
        assert opt in {"sgd", "adam"}
        assert r.name == f"lr={lr:g}_weight_decay={wd:g}_epochs={epochs}_optimizer={opt}"


def test_random_draws_repeat_with_the_seed(write_config):
    """The same seed draws the same runs; another seed draws other ones."""
    first = load_experiment(write_config(RANDOM.format(seed=3), name="a.yaml"))
    again = load_experiment(write_config(RANDOM.format(seed=3), name="b.yaml"))
    other = load_experiment(write_config(RANDOM.format(seed=4), name="c.yaml"))
    assert names(first) == names(again) and first.swept == again.swept
    assert set(names(first)).isdisjoint(names(other))


def test_random_space_too_small_for_n(write_config):
    """A choice-only space with fewer points than n cannot give n distinct draws."""
    path = write_config("sweep: {random: {n: 3, space: {train.optimizer: [sgd, adam]}}}\n")
    with pytest.raises(ConfigError, match=r"sweep\.random: could not draw 3 distinct points \(found 2\)"):
        load_experiment(path)


def test_random_seed_defaults_to_zero(write_config):
    """Without `seed:`, a random sweep draws as with seed 0."""
    space = "space: {train.lr: {loguniform: [1.0e-4, 1.0e-1]}}"
    implicit = load_experiment(write_config(f"sweep: {{random: {{n: 3, {space}}}}}\n", name="a.yaml"))
    explicit = load_experiment(write_config(f"sweep: {{random: {{n: 3, seed: 0, {space}}}}}\n", name="b.yaml"))
    assert names(implicit) == names(explicit) and len(implicit.runs) == 3


# ----------------------------------------------------------------------------------------------
# Errors name where the bad value was written.

@pytest.mark.parametrize("body, expected", [
    ("sweep: {grid: {train.batch_size: [4, 0]}}", r"exp\.yaml: sweep\.grid\.train\.batch_size\[1\]: must be >= 1, got 0"),
    ("sweep: {grid: {train.lr: [0.1, fast]}}", r"sweep\.grid\.train\.lr\[1\]: expected a number"),
    ("sweep: {grid: {train.optimizer: [sgd, adamm]}}", r"sweep\.grid\.train\.optimizer\[1\]: must be one of"),
    ("sweep: {grid: {train.lrr: [0.1]}}", r"sweep\.grid\.train\.lrr: unknown key \(did you mean train\.lr\?\)"),
    ("sweep: {grid: {train.lr: [0.1, 0.1]}}", r"sweep\.grid\.train\.lr: each value may be listed once"),
    ("sweep: {grid: {train.lr: []}}", r"sweep\.grid\.train\.lr: expected a non-empty list"),
    ("sweep: {grid: {}}", r"sweep\.grid: expected a mapping of dotted keys"),
    ("sweep: {grid: {train.lr: {loguniform: [1.0e-4, 1.0e-1]}}}", r"sweep\.grid\.train\.lr: a grid takes lists"),
    ("sweep: {grid: {train.lr: {normal: [0.0, 1.0]}}}", r"sweep\.grid\.train\.lr: expected a list of values or one of"),
    ("sweep: {random: {n: 2, space: {train.weight_decay: {loguniform: [0.0, 0.1]}}}}",
     r"sweep\.random\.space\.train\.weight_decay\.loguniform: bounds must be positive"),
    ("sweep: {random: {n: 2, space: {train.lr: {loguniform: [0.0, 0.1]}}}}",
     r"sweep\.random\.space\.train\.lr\.loguniform\[0\]: must be > 0"),
    ("sweep: {random: {n: 2, space: {train.batch_size: {uniform: [1, 16]}}}}",
     r"sweep\.random\.space\.train\.batch_size\.uniform: train\.batch_size is not a real number"),
    ("sweep: {random: {n: 2, space: {train.batch_size: {uniform: [1.0, 16.0]}}}}",
     r"sweep\.random\.space\.train\.batch_size\.uniform\[0\]: expected an integer"),
    ("sweep: {random: {n: 2, space: {train.lr: {int: [1, 3]}}}}",
     r"sweep\.random\.space\.train\.lr\.int: train\.lr takes no integers"),
    ("sweep: {random: {n: 2, space: {train.lr: {uniform: [0.1, 0.01]}}}}",
     r"sweep\.random\.space\.train\.lr\.uniform: low must be below high"),
    ("sweep: {random: {n: 2, space: {train.epochs: {int: [3, 3]}}}}",
     r"sweep\.random\.space\.train\.epochs\.int: low must be below high"),
    ("sweep: {random: {n: 2, space: {train.lr: {uniform: [0.1]}}}}",
     r"sweep\.random\.space\.train\.lr\.uniform: expected \[low, high\]"),
    ("sweep: {grid: {train.lr: [0.1]}, random: {n: 2, space: {train.lr: [0.1, 0.2]}}}",
     r"exp\.yaml: sweep: expected `grid:"),
    ("sweep: [1, 2]", r"exp\.yaml: sweep: expected `grid:"),
    ("sweep: {grids: {train.lr: [0.1]}}", r"exp\.yaml: sweep: expected `grid:"),
    ("sweep: {random: {seed: 1, space: {train.lr: [0.1, 0.2]}}}", r"sweep\.random: expected \{n: N, seed: S"),
    ("sweep: {random: {n: 2, space: {train.lr: [0.1, 0.2]}, count: 3}}", r"sweep\.random: expected \{n: N"),
    ("sweep: {random: {n: 0, space: {train.lr: [0.1, 0.2]}}}", r"sweep\.random\.n: expected an integer >= 1, got 0"),
    ("sweep: {random: {n: true, space: {train.lr: [0.1, 0.2]}}}", r"sweep\.random\.n: expected an integer >= 1"),
    ("sweep: {random: {n: 2, seed: -1, space: {train.lr: [0.1, 0.2]}}}",
     r"sweep\.random\.seed: expected an integer >= 0, got -1"),
])
def test_bad_sweep_names_where_it_was_written(write_config, body, expected):
    """Each bad sweep is a ConfigError that quotes the file and the place in the block."""
    path = write_config(body + "\n")
    with pytest.raises(ConfigError, match=expected) as err:
        load_experiment(path)
    assert len(str(err.value).splitlines()) == 1


def test_cross_field_error_of_a_swept_run_names_the_sweep(write_config):
    """A run that a sweep value makes inconsistent (pca directions without a trajectory) names that value."""
    path = write_config("sweep: {grid: {landscape.directions: [random, pca]}}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: sweep: landscape\.directions=pca: pca directions"):
        load_experiment(path)


@pytest.mark.parametrize("sweep", [
    "{grid: {model.config: [{n_layer: 1}, {n_layer: 2}]}}",
    "{random: {n: 2, space: {model.config: [{n_layer: 1}, {n_layer: 2}]}}}",
])
def test_sweep_over_a_mapping_key_is_a_config_error(write_config, sweep):
    """A sweep cannot vary a mapping-valued key (model.config): one clear error naming the key, not a crash."""
    path = write_config(f"sweep: {sweep}\n")
    with pytest.raises(ConfigError, match=r"\.model\.config: model\.config takes a mapping"):
        load_experiment(path)


# ----------------------------------------------------------------------------------------------
# --runs, extends, seeds.

def test_runs_selects_a_file_run_with_all_its_points_or_one_made_run(write_config):
    """--runs NAME keeps every point of a run of the file, or exactly one made run; swept follows."""
    path = write_config(RUNS_X_GRID)
    exp = load_experiment(path, runs=["sgd"])
    assert names(exp) == ["sgd_batch_size=4", "sgd_batch_size=8"]
    assert set(exp.swept) == {"sgd_batch_size=4", "sgd_batch_size=8"}
    exp = load_experiment(path, runs=["sgd_batch_size=8"])
    assert names(exp) == ["sgd_batch_size=8"] and exp.runs[0].train.batch_size == 8
    assert exp.swept == {"sgd_batch_size=8": {"train.batch_size": 8}}
    exp = load_experiment(path, runs=["adam", "sgd_batch_size=4"])
    assert names(exp) == ["sgd_batch_size=4", "adam_batch_size=4", "adam_batch_size=8"]


def test_runs_with_an_unknown_name_lists_the_runs(write_config):
    """An unknown --runs name is a ConfigError that lists the made runs."""
    path = write_config(RUNS_X_GRID)
    with pytest.raises(ConfigError, match=r"no run named 'sgd_batch_size=16' \(runs: sgd_batch_size=4, "
                                          r"sgd_batch_size=8, adam_batch_size=4, adam_batch_size=8;"):
        load_experiment(path, runs=["sgd_batch_size=16"])


def test_runs_selects_only_its_own_points_when_names_share_a_prefix(write_config):
    """--runs a keeps a's points only, not those of a run named a_b."""
    path = write_config("""
        runs:
          a: {}
          a_b: {train: {lr: 0.5}}
        sweep: {grid: {train.batch_size: [4, 8]}}
    """)
    assert names(load_experiment(path, runs=["a"])) == ["a_batch_size=4", "a_batch_size=8"]


def test_child_sweep_replaces_the_parents_and_is_otherwise_inherited(write_config, tmp_path):
    """A child's `sweep:` replaces its parent's; a child without one inherits the parent's."""
    write_config("sweep: {grid: {train.batch_size: [4, 8]}}\n", name="parent.yaml")
    replaced = write_config("extends: parent.yaml\nsweep: {grid: {train.lr: [0.1, 0.2, 0.4]}}\n",
                            name="child.yaml", tiny=False)
    inherited = write_config("extends: parent.yaml\ntrain: {epochs: 1}\n", name="plain.yaml", tiny=False)
    exp = load_experiment(replaced)
    assert names(exp) == ["lr=0.1", "lr=0.2", "lr=0.4"] and all(r.train.batch_size == 8 for r in exp.runs)
    exp = load_experiment(inherited)
    assert names(exp) == ["batch_size=4", "batch_size=8"] and all(r.train.epochs == 1 for r in exp.runs)


def test_seeds_cross_with_swept_runs(tiny_experiment):
    """Every made run trains at every seed: 2 points x 2 seeds = 4 jobs, runs outermost."""
    exp = tiny_experiment("seeds: [1, 2]\nsweep: {grid: {train.batch_size: [4, 8]}}\n")
    assert [(j.name, j.seed) for j in exp.jobs()] == [
        ("batch_size=4", 1), ("batch_size=4", 2), ("batch_size=8", 1), ("batch_size=8", 2)]
    assert [r.seed for r in exp.runs] == [1, 1]


# ----------------------------------------------------------------------------------------------
# Sweeps and searches.

def test_sweep_over_a_search_setting_makes_searches(tiny_experiment):
    """Sweeping search.sampler makes one search per sampler; searches are studies, not jobs."""
    exp = tiny_experiment(SEARCH + "sweep: {grid: {search.sampler: [tpe, random]}}\n")
    assert [(r.name, r.search.sampler, r.search.n_trials) for r in exp.studies()] == [
        ("sampler=tpe", "tpe", 2), ("sampler=random", "random", 2)]
    assert exp.jobs() == []
    assert exp.swept["sampler=random"] == {"search.sampler": "random"}


def test_search_with_two_seeds_is_an_error(write_config):
    """A search trains each trial at one seed: two seeds are a ConfigError naming the seeds and the run."""
    path = write_config(SEARCH + "seeds: [1, 2]\nsweep: {grid: {search.sampler: [tpe, random]}}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: seeds: a search trains each trial at one seed.*sampler=tpe"):
        load_experiment(path)


@pytest.mark.parametrize("body", [
    "search: {n_trials: 3, sampler: grid, grid_points: 2, space: {train.lr: {loguniform: [0.01, 1.0]}}}\n",
    "search: {n_trials: 3, grid_points: 2, space: {train.lr: {loguniform: [0.01, 1.0]}}}\n"
    "sweep: {grid: {search.sampler: [tpe, grid]}}\n",
])
def test_grid_sampler_with_more_trials_than_points_is_an_error(write_config, body):
    """sampler grid with more trials than grid points is a ConfigError, also where a sweep chose the sampler."""
    with pytest.raises(ConfigError, match=r"search\.n_trials: the grid has 2 points, fewer than 3 trials"):
        load_experiment(write_config(body))


def test_grid_sampler_with_enough_points_loads(tiny_experiment):
    """The same grid search with as many trials as points is fine."""
    exp = tiny_experiment("search: {n_trials: 2, sampler: grid, grid_points: 2, "
                          "space: {train.lr: {loguniform: [0.01, 1.0]}}}\n")
    assert [r.search.sampler for r in exp.studies()] == ["grid"]


def test_runs_naming_a_trial_selects_that_trial(write_config, tmp_path):
    """--runs naming a trained trial of a search makes that trial a job (the docstring of _select)."""
    from optimization.train_stage import write_manifest
    from optimization.search_stage import trial_name
    from models.runs import with_trials

    path = write_config(SEARCH)
    full = load_experiment(path)
    template = full.runs[0]
    trial = with_values(dataclasses.replace(template, search=SearchConfig()), {"train.lr": 0.1},
                        trial_name(template, 0), "test")
    write_manifest(full, tmp_path / "out", trial=(trial, template.name))
    assert [t.name for t in with_trials(full, tmp_path / "out").trials] == ["t000"]  # all trials: found
    selected = with_trials(load_experiment(path, runs=["t000"]), tmp_path / "out")
    assert [t.name for t in selected.jobs()] == ["t000"]


# ----------------------------------------------------------------------------------------------
# run.py --list

def test_list_prints_runs_and_values_and_trains_nothing(write_config, tmp_path, capsys):
    """--list prints the experiment, each made run with its swept values, exits 0 and writes nothing."""
    out = tmp_path / "out"
    path = write_config(GRID)
    assert run.main(["--config", str(path), "--list", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "exp: 4 run(s), seeds 42"
    assert [line.split() for line in lines[1:]] == [
        ["batch_size=4_lr=0.1", "train.batch_size=4", "train.lr=0.1"],
        ["batch_size=4_lr=0.3", "train.batch_size=4", "train.lr=0.3"],
        ["batch_size=8_lr=0.1", "train.batch_size=8", "train.lr=0.1"],
        ["batch_size=8_lr=0.3", "train.batch_size=8", "train.lr=0.3"],
    ]
    assert not out.exists()


def test_list_honours_runs_and_set_and_describes_searches(write_config, tmp_path, capsys):
    """--list with --runs lists the selected runs only; a search shows its trials, sampler and space."""
    out = tmp_path / "out"
    path = write_config(SEARCH + "sweep: {grid: {search.sampler: [tpe, random]}}\n")
    code = run.main(["--config", str(path), "--list", "--runs", "sampler=random", "--set", "search.seed=7",
                     "--output", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "exp: 1 run(s), seeds 42"
    assert lines[1].split(None, 2) == [
        "sampler=random", "search.sampler=random", "[search: 2 trials, sampler random (seed 7), over train.lr]"]
    assert len(lines) == 2 and not out.exists()


def test_list_with_an_unknown_run_exits_2(write_config, tmp_path, capsys):
    """--list with an unknown --runs name is a one-line error, exit 2."""
    path = write_config(GRID)
    code = run.main(["--config", str(path), "--list", "--runs", "nope", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "no run named 'nope'" in captured.err and captured.out == ""


def test_list_of_a_search_with_a_trial_name_lists_it_as_a_possible_trial(write_config, tmp_path, capsys):
    """--list --runs <trial name> on a search: a trial's name is known only once the search has made it, so --list
    says the name may be a trial of the file's searches (exit 0), and makes nothing."""
    path = write_config(SEARCH)
    code = run.main(["--config", str(path), "--list", "--runs", "t000", "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[1].strip() == "(not runs of the file; trials of its searches? t000)"
    assert not (tmp_path / "out").exists()
