"""Run the stages of an experiment.

    python run.py --config config/exp1.yaml [--stages train,search,sharpness,geometry,landscape,prune,correlate,report]
                  [--runs NAME ...] [--set key=value ...] [--output results] [--device auto] [--force] [--list]
"""

from __future__ import annotations

import sys


def interrupted() -> int:
    """Ctrl-C, at any point: one line, and the exit code of a shell's SIGINT."""
    print("interrupted: rerun the same command to resume", file=sys.stderr)
    return 130


try:  # a Ctrl-C while these load is one line too (torch and the stages' libraries load later: run_stages)
    import argparse
    import os
    from pathlib import Path

    from pipeline import DEFAULT_STAGES, STAGES, experiment_stages, run_experiment
    from config.loading import load_experiment
    from config.schema import Experiment
    from utils.errors import UserError
except KeyboardInterrupt:
    sys.exit(interrupted())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML file, e.g. config/exp1.yaml")
    parser.add_argument("--stages", help=f"comma-separated, from {','.join(STAGES)} (default: the config's `stages:`, "
                                          f"else {','.join(DEFAULT_STAGES)})")
    parser.add_argument("--runs", nargs="+", metavar="NAME", help="only these runs of the experiment")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field for every run, e.g. --set train.lr=0.01 (repeatable)")
    parser.add_argument("--output", default="results", help="results folder (default: results)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set device=...)")
    parser.add_argument("--force", action="store_true", help="redo work that is already done for these settings")
    parser.add_argument("--list", action="store_true", help="print the runs the config expands to (sweeps, searches) "
                                                           "and run nothing")
    return parser.parse_args(argv)


def headline(experiment: Experiment) -> str:
    return f"{experiment.name}: {len(experiment.runs)} run(s), seeds {', '.join(map(str, experiment.seeds))}"


def describe_runs(experiment: Experiment) -> str:
    """What `--list` prints: each run with the values its sweep gave it, and each search's study."""
    lines = [headline(experiment)]
    if experiment.requested:
        lines.append(f"  (not runs of the file; trials of its searches? {', '.join(experiment.requested)})")
    width = max((len(run.name) for run in experiment.runs), default=0)
    for run in experiment.runs:
        values = " ".join(f"{key}={value}" for key, value in experiment.swept.get(run.name, {}).items())
        if run.search.n_trials:
            values = (f"{values} " if values else "") + (
                f"[search: {run.search.n_trials} trials, sampler {run.search.sampler} (seed {run.search.seed}), "
                f"over {', '.join(run.search.space)}]")
        lines.append(f"  {run.name:<{width}}  {values}".rstrip())
    return "\n".join(lines)


def run_stages(experiment: Experiment, stages: list[str], output: str, force: bool) -> None:
    """Join the torchrun job (if any), choose torch's threads and run the stages. torch loads here, once the
    config is known to be good (seconds; `--help`, `--list` and a config error answer without it)."""
    from utils import distributed
    from utils.device import use_threads
    from utils.io import output_error

    distributed.start(experiment.runs[0].device if experiment.runs else "auto")
    try:
        if not distributed.is_main():
            sys.stdout = open(os.devnull, "w")  # rank 0 reports for the job; errors still reach stderr
        use_threads(experiment.threads)
        if distributed.is_main():  # before a long run, what each stage will cost
            from optimization.stage_cost import announce_long_run

            announce_long_run(experiment, stages, Path(output), force)
        run_experiment(experiment, stages, output, force=force)
    except RuntimeError as err:
        if distributed.world_size() > 1 and output_error(err, Path(output)) is None:
            # gloo and NCCL fail a collective when another rank died or hung; torchrun then ends the job
            raise UserError(f"rank {distributed.rank()} lost the other processes of the torchrun job "
                            f"({str(err).splitlines()[0][:200]}); the checkpoints written so far are intact: rerun "
                            "the same command to resume") from None
        raise
    finally:
        distributed.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        overrides = args.overrides + ([f"device={args.device}"] if args.device else [])
        # First without the checks that import a library (seconds: a scratch model's config reads transformers, which
        # loads torch), which a list leaves out and a run makes once it has said what it runs.
        experiment = load_experiment(args.config, overrides, args.runs, library_checks=False)
        if args.list:
            print(describe_runs(experiment))
            return 0
        stages = experiment_stages(experiment, args.stages)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for the job
            print(f"{headline(experiment)}; stages {', '.join(stages)}", flush=True)  # before torch loads
        run_stages(load_experiment(args.config, overrides, args.runs), stages, args.output, args.force)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (OSError, RuntimeError) as err:  # outside utils.io: a library's own save or read, say
        from utils.io import output_error

        problem = output_error(err, Path(getattr(err, "filename", None) or args.output), action="access")
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return problem.exit_code
    except KeyboardInterrupt:
        return interrupted()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # outside main's handlers: parsing the arguments, the last clean-up
        sys.exit(interrupted())
