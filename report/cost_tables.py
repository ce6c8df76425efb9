"""The Cost section's tables: what each run spent (report.tables formats every number), the estimate before it ran,
and both in dollars.
"""

from __future__ import annotations

from config.loading import run_config_from_dict
from optimization.cost import Prices, estimate, on_priced_gpus, price_for_device, priced_gpus, usd
from report.experiment_results import ExperimentResults
from report.summary import mean_and_stderr
from report.tables import has_geometry, md_table
from utils.errors import UserError


def cost_columns(summary: dict) -> list[tuple[str, str]]:
    """What each run cost: its parameters, steps and FLOPs, the seconds of every stage, utilisation and memory."""
    columns = [("trainable_parameters", "trainable params"), ("n_parameters", "all params"),
               ("optimizer_steps", "steps"), ("train_flops", "train FLOPs"), ("train_time_s", "train s"),
               ("wall_time_s", "train stage wall s"), ("tokens_per_s", "tokens/s"), ("mfu", "MFU"),
               ("peak_memory_mb", "peak MB"), ("sharpness_time_s", "sharpness s"), ("landscape_time_s", "2D surface s")]
    if has_geometry(summary):
        columns.insert(10, ("geometry_time_s", "geometry s"))
    for name, title in (("track_time_s", "tracking s"), ("density_time_s", "density s"), ("prune_time_s", "pruning s")):
        if any(data["quantities"].get(name, {}).get("n") for data in summary["runs"].values()):
            columns.append((name, title))
    return columns


def estimate_table(results: ExperimentResults) -> str:
    """The estimate that `python -m optimization.estimate` gives before a run, beside what the run measured (means
    over seeds): it counts every step at batch_size × data.max_length, so measured / estimate is what padding only
    to the longest text saved (1 when every text fills max_length and no budget stops the run early)."""
    rows = []
    for run in results.runs:
        seeds = [results.metrics[run][seed] for seed in results.seeds.get(run, [])]
        if not seeds:
            continue
        try:
            predicted = estimate(run_config_from_dict(results.configs[run]))
        except UserError as err:
            rows.append([run, "–", "–", "–", "–", f"no estimate: {str(err).split(': ', 1)[-1]}"])
            continue
        steps = sum(m["optimizer_steps"] for m in seeds) / len(seeds)
        counted = [m["train_flops"] for m in seeds if m.get("train_flops") is not None]
        measured = sum(counted) / len(counted) if counted else None
        ratio = "–" if measured is None or not predicted["flops"] else f"{measured / predicted['flops']:.3f}"  # 0: a run measured as is
        rows.append([run, str(predicted["steps"]), f"{steps:g}", f"{predicted['flops']:.3g}",
                     "–" if measured is None else format(measured, ".3g"), ratio])
    return md_table(["run", "steps estimated", "steps taken", "FLOPs at most", "FLOPs measured",
                     "measured / estimate"], rows)


def dollar_table(results: ExperimentResults, summary: dict, prices: Prices) -> str:
    """What each run cost where it ran (on all its devices: a torchrun job's world_size of them) and what its FLOPs
    would cost on each priced GPU (means over seeds)."""
    rows = []
    for run in results.runs:
        seeds = [results.metrics[run][seed] for seed in results.seeds.get(run, [])]
        if not seeds:
            continue
        quantities = summary["runs"][run]["quantities"]
        device = seeds[0]["device"] if seeds[0]["device"] == "cpu" else seeds[0].get("device_name", "")
        match = price_for_device(prices, device)

        def dollars(name: str, usd_per_hour: float) -> str:
            per_seed = quantities[name]["per_seed"]
            spent = mean_and_stderr([None if per_seed.get(str(seed)) is None else
                                     usd(per_seed[str(seed)], usd_per_hour, results.metrics[run][seed].get("world_size", 1))
                                     for seed in results.seeds[run]])["mean"]
            return "–" if spent is None else f"${spent:.3g}"

        here = ["–", "–"] if match is None else [dollars("wall_time_s", match[1].usd_per_hour),
                                                 dollars("seconds_to_best", match[1].usd_per_hour)]
        precision = results.configs[run]["train"].get("precision", "fp32")
        elsewhere = on_priced_gpus(prices, quantities["train_flops"]["mean"], precision)
        ranks = sorted({m.get("world_size", 1) for m in seeds})
        where = seeds[0].get("device_name", seeds[0]["device"]) + ("" if ranks == [1] else f" × {'/'.join(map(str, ranks))}") \
            + ("" if match is None else f" ({match[0]}, ${match[1].usd_per_hour:g}/h each)")
        rows.append([run, where, *here, *("–" if priced is None else f"${priced[1]:.3g} ({priced[0]:.3g} s)"
                                          for priced in elsewhere.values())])
    return md_table(["run", "ran on", "train stage $", "$ to best val ppl", *(f"on {name}" for name in priced_gpus(prices))],
                    rows)
