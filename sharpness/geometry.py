"""ℓ∞ against ℓ2 geometry of the Hessian, from Hessian-vector products only (Xie, Mohamadi & Li, ICLR 2025).

Every estimator takes a `matvec` (v ↦ Hv), so the rotated Hessian RᵀHR is just another matvec.

(1,1)-norm   ‖H‖₁,₁ = Σᵢ‖Hᵢ‖₁. For c with independent standard Cauchy entries, (Hc)ᵢ = Σⱼ Hᵢⱼcⱼ is ‖Hᵢ‖₁ times a
             standard Cauchy variable (Cauchy variables are 1-stable), so over k vectors both the median of
             |(Hc)ᵢ| and half the inter-quartile range of (Hc)ᵢ estimate ‖Hᵢ‖₁, once divided by their mean for
             ‖Hᵢ‖₁ = 1 (estimator_means: +2.6% and +1.3% at k = 50, +0.3% and +0.1% at k = 400). The k × d matrix of the Hc is kept
             in a float32 memory-mapped file (one row per HVP), never in memory; statistics are taken over
             chunks of CHUNK columns (memory O(k·CHUNK)). The interval is log-normal (positive, like the norm),
             with the standard error over random halves of the k vectors (half_sample_standard_errors), whose
             cost does not grow with d.
‖H‖∞         the largest row ℓ1 norm: the largest of d noisy estimates, so biased upward.
Blocks       row sums over the rows of one layer or one kind of weight: where the rows' ℓ1 mass sits (all
             columns count; the diagonal block's own (1,1)-norm would need one sketch per block).
‖H‖_F        Hutch++ (Meyer, Musco, Musco & Woodruff 2021) on tr(H²) = ‖H‖_F²: with m Rademacher probes, m/3
             sketch H's range (Q = orth(H·S)), m/3 give ‖HQ‖_F² exactly, the rest estimate ‖H(I − QQᵀ)‖_F² by
             Hutchinson (E‖Az‖² = ‖A‖_F²). Exact once m/3 reaches H's rank; memory: up to 3·m/3 vectors of d
             floats at once (the sketch, and QR's output and workspace).
‖H‖₂         max(|λ_max|, |λ_min|) by Lanczos (optimization.curvature), or as sharpness.json holds them when its
             Lanczos ran on the same operator at least as strictly (sharpness.geometry_stage).
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from statistics import NormalDist
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import t as student_t

from models.parameters import parameter_kind, parameter_layer
from optimization.curvature import Estimate, lanczos, rademacher
from utils import distributed
from utils.errors import CorruptFileError
from utils.io import new_memmap, read_json, remove, write_json

MatVec = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 1 << 16  # columns of the sketch per statistics pass: k·CHUNK float64 values in memory at a time
BLOCK = 1024  # rows per sampling unit of the standard error
BOOTSTRAP_BLOCKS = 64  # blocks the standard error is taken on: all rows up to 65,536 weights, a random sample beyond
MIN_VECTORS = 5  # the fewest vectors whose row estimators have a mean (estimator_means): halves need 2·5
MEAN_GRID = 400_000  # midpoints of the integrals of estimator_means (accurate to about 1e-5)


# ----------------------------------------------------------------------------------------------
# Random vectors, each a pure function of (seed, index) so an interrupted sketch can continue.

def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def cauchy_vector(dim: int, seed: int, index: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(dim, dtype=torch.float64).cauchy_(generator=_generator(seed, index)).to(like)


def rademacher_vector(dim: int, seed: int, index: int, like: torch.Tensor) -> torch.Tensor:
    return rademacher(dim, _generator(seed, index), like)


# ----------------------------------------------------------------------------------------------
# The (1,1)-norm.

def cauchy_sketch(matvec: MatVec, like: torch.Tensor, k: int, seed: int, path: Path, stamp: str,
                  progress=None) -> np.ndarray:
    """The k × d matrix whose row j is H·cⱼ, in a float32 memory-mapped .npy at `path` (None on the ranks of a
    torchrun job but rank 0, which compute the products with it).

    `path`.json records the settings (`stamp`) and a CRC-32 of each finished row (null for a row not done);
    `done` counts them. A row is flushed before its checksum is recorded, so a killed process loses at most the
    row it was computing. On resuming, a file of other settings, one that cannot be read or one of the wrong
    size (truncated) is started over, and a row whose bytes no longer match its checksum is computed again
    (each row is a pure function of (seed, j)), each with a one-line warning; checking reads the file once."""
    dim = like.numel()
    state_path = path.with_name(path.name + ".json")
    sketch, checksums = None, [None] * k
    writer = distributed.writes()  # in a torchrun job, rank 0 keeps the sketch; every rank computes each H·cⱼ
    try:
        state = read_json(state_path) if writer and state_path.is_file() and path.is_file() else None
        if state is not None and state.get("stamp") == stamp:
            sketch, checksums = _verified_rows(path, state, k, dim) or (None, [None] * k)
    except (CorruptFileError, ValueError, OSError) as err:
        print(f"warning: the unfinished sketch {path} cannot be read ({err}); starting it over")
        sketch, checksums = None, [None] * k
    if sketch is None and writer:  # the old record goes first: a kill must not leave it beside a fresh, empty file
        remove(state_path)
        sketch = new_memmap(path, np.float32, (k, dim))
        _record(state_path, stamp, checksums)
    todo = distributed.broadcast_object([j for j in range(k) if checksums[j] is None])
    if progress is not None:
        progress.update(k - len(todo))
    for index in todo:
        row = matvec(cauchy_vector(dim, seed, index, like))
        if writer:
            sketch[index] = row.float().cpu().numpy()
            sketch.flush()
            checksums[index] = zlib.crc32(sketch[index])
            _record(state_path, stamp, checksums)
        if progress is not None:
            progress.update(1)
    return sketch


def _record(state_path: Path, stamp: str, checksums: list) -> None:
    write_json(state_path, {"stamp": stamp, "done": sum(c is not None for c in checksums), "rows": checksums})


def _verified_rows(path: Path, state: dict, k: int, dim: int) -> tuple[np.ndarray, list] | None:
    """The sketch at `path` opened for writing and the checksums of its rows that are intact (None for a row to
    compute), or None when the file must be started over."""
    with open(path, "rb") as handle:  # numpy would silently extend a short file with zeros
        major, _ = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        expected = handle.tell() + k * dim * np.dtype(np.float32).itemsize
    if (tuple(shape), fortran, dtype) != ((k, dim), False, np.dtype(np.float32)):
        return None
    if path.stat().st_size != expected:
        print(f"warning: the sketch {path} has {path.stat().st_size} bytes, not {expected} (truncated?); "
              "starting it over")
        return None
    recorded = list(state.get("rows") or [])[:k]
    recorded += [None] * (k - len(recorded))
    finished = sum(c is not None for c in recorded)
    if state.get("done") != finished:  # `done` is written with the checksums: another count was edited, or is older
        print(f"warning: {path.name}.json counts {state.get('done')} finished rows but has checksums of {finished}; "
              f"keeping those {finished}")
    sketch = np.lib.format.open_memmap(path, mode="r+")
    damaged = [j for j, crc in enumerate(recorded) if crc is not None and zlib.crc32(sketch[j]) != crc]
    if damaged:
        print(f"warning: row{'s' if len(damaged) > 1 else ''} {', '.join(map(str, damaged))} of the sketch {path} "
              f"changed since written (checksum); computing {'them' if len(damaged) > 1 else 'it'} again")
    return sketch, [None if j in damaged else crc for j, crc in enumerate(recorded)]


def remove_sketch(path: Path) -> None:
    remove(path)
    remove(path.with_name(path.name + ".json"))


def row_norm_statistics(sketch: np.ndarray, segments: list[int], bootstrap: int, confidence: float, seed: int,
                        progress=None) -> dict:
    """Per-row ℓ1-norm estimates from a k × d sketch, summed: the totals, the largest row, the sum over each of
    the parameter segments (their lengths, in order), and each total's standard error from `bootstrap` random
    halves of the k vectors and its interval (None when k < 10 or bootstrap is 0)."""
    k, dim = sketch.shape
    offsets = np.concatenate([[0], np.cumsum(segments)])
    totals = {"median": 0.0, "half_iqr": 0.0}
    largest = {"median": 0.0, "half_iqr": 0.0}
    per_segment = {name: np.zeros(len(segments)) for name in totals}
    for start in range(0, dim, CHUNK):
        stop = min(start + CHUNK, dim)
        for name, rows in row_estimates(np.asarray(sketch[:, start:stop], dtype=np.float64)).items():
            totals[name] += rows.sum()
            largest[name] = max(largest[name], float(rows.max()))
            for s in np.flatnonzero((offsets[:-1] < stop) & (offsets[1:] > start)):
                per_segment[name][s] += rows[max(offsets[s], start) - start: min(offsets[s + 1], stop) - start].sum()
        if progress is not None:
            progress.update(1)
    errors = half_sample_standard_errors(sketch, bootstrap, seed) if bootstrap else None
    return {name: {"total": float(totals[name]), "largest_row": largest[name], "segments": per_segment[name],
                   "stderr": None if errors is None else errors[name],
                   "ci": None if errors is None else log_normal_interval(totals[name], errors[name], confidence)}
            for name in totals}


def log_normal_interval(total: float, stderr: float, confidence: float) -> list[float] | None:
    """total·exp(±z·stderr/total): the delta-method interval of log(total), positive like the norm it bounds."""
    if not total > 0:
        return None
    spread = math.exp(NormalDist().inv_cdf((1 + confidence) / 2) * stderr / total)
    return [float(total / spread), float(total * spread)]


def row_estimates(values: np.ndarray) -> dict[str, np.ndarray]:
    """Row ℓ1-norm estimates from k sketch values per row (axis 0): the median of |x| and half the inter-quartile
    range of x, each order statistic interpolated linearly as numpy's median and percentile do (one sort each,
    about three times faster than np.median and np.percentile)."""
    k = values.shape[0]

    def quantile(ordered: np.ndarray, q: float) -> np.ndarray:
        position = q * (k - 1)
        low, high = int(np.floor(position)), int(np.ceil(position))
        return ordered[low] + (position - low) * (ordered[high] - ordered[low])

    signed = np.sort(values, axis=0)
    means = estimator_means(k)
    return {"median": quantile(np.sort(np.abs(values), axis=0), 0.5) / means["median"],
            "half_iqr": (quantile(signed, 0.75) - quantile(signed, 0.25)) / 2 / means["half_iqr"]}


@functools.cache
def estimator_means(k: int) -> dict[str, float]:
    """The mean of each row estimator of row_estimates, before division, for a row with ‖Hᵢ‖₁ = 1: k standard
    Cauchy values. The j-th smallest of k draws is Q(U) with U ~ Beta(j, k+1−j) and Q the quantile function
    (tan(πu/2) for |C|, tan(π(u − ½)) for C), so its mean is one integral (finite for 2 ≤ j ≤ k−1, hence k ≥ 5)."""
    def order_mean(j: int, quantile) -> float:
        u = (np.arange(MEAN_GRID) + 0.5) / MEAN_GRID
        log_density = (j - 1) * np.log(u) + (k - j) * np.log1p(-u) - (
            math.lgamma(j) + math.lgamma(k + 1 - j) - math.lgamma(k + 1))
        return float(np.mean(quantile(u) * np.exp(log_density)))

    def interpolated(q: float, quantile) -> float:  # as row_estimates interpolates between order statistics
        position = q * (k - 1)
        low, high = math.floor(position), math.ceil(position)
        below, above = order_mean(low + 1, quantile), order_mean(high + 1, quantile)
        return below + (position - low) * (above - below)

    def absolute(u):
        return np.tan(np.pi * u / 2)

    def signed(u):
        return np.tan(np.pi * (u - 0.5))

    return {"median": interpolated(0.5, absolute),
            "half_iqr": (interpolated(0.75, signed) - interpolated(0.25, signed)) / 2}


def half_sample_standard_errors(sketch: np.ndarray, resamples: int, seed: int) -> dict[str, float] | None:
    """Standard error of each estimator's total over the k vectors, from `resamples` random halves of them (the
    delete-k/2 jackknife, Shao & Wu 1989: var ≈ (m/(k − m))·var over the halves of the total, m = k//2 vectors per
    half); None below k = 2·MIN_VECTORS. The rows share the vectors, so their errors are correlated and no per-row
    formula applies; the halves keep that correlation. Why not the bootstrap (k draws with replacement): its
    repeated draws move every row's median the same way on average (a bootstrap median depends on how the draws
    repeat), a shared error that does not average out over rows, so with independent rows (H = I) its standard
    error stays near a fixed share of d rows' and its intervals were 3.5–13× too wide at d = 16k–131k. A half has
    no repeats: for independent rows the halves' errors are uncorrelated.

    Resampling all d rows costs O(resamples·k·d): days on a CPU for 82M weights. So the rows are split into
    blocks of BLOCK and the halves are taken on up to BOOTSTRAP_BLOCKS blocks drawn without replacement; with
    N blocks in all and n drawn, the variance of the total, Σ var(t_u) + Σ_{u≠v} cov(t_u, t_v) over blocks u, v,
    is estimated without bias from the drawn ones as (N/n)·Σ var + N(N−1)/(n(n−1))·Σ cov (exact when n = N)."""
    k, dim = sketch.shape
    half = k // 2
    if half < MIN_VECTORS:
        return None
    blocks = math.ceil(dim / BLOCK)
    drawn = np.sort(np.random.default_rng([seed, 0]).choice(blocks, size=min(blocks, BOOTSTRAP_BLOCKS), replace=False))
    values = [np.asarray(sketch[:, u * BLOCK:(u + 1) * BLOCK], dtype=np.float64) for u in drawn]
    starts = np.cumsum([0] + [v.shape[1] for v in values[:-1]])  # where each drawn block begins in `values`
    values = np.concatenate(values, axis=1)
    block_totals = {"median": np.zeros((resamples, len(drawn))), "half_iqr": np.zeros((resamples, len(drawn)))}
    halves = np.random.default_rng([seed, 1]).permuted(np.tile(np.arange(k), (resamples, 1)), axis=1)[:, :half]
    for b, chosen in enumerate(halves):
        for name, rows in row_estimates(values[chosen]).items():
            block_totals[name][b] = np.add.reduceat(rows, starts)
    n, total_blocks = len(drawn), blocks
    errors = {}
    for name, per_block in block_totals.items():
        within = per_block.var(axis=0, ddof=1).sum()           # Σ over drawn blocks of var(t_u)
        overall = per_block.sum(axis=1).var(ddof=1)            # var of the drawn blocks' total
        if n == total_blocks:
            variance = overall
        else:
            variance = total_blocks / n * within + total_blocks * (total_blocks - 1) / (n * (n - 1)) * (overall - within)
        errors[name] = math.sqrt(max(variance, 0.0) * half / (k - half))
    return errors


# ----------------------------------------------------------------------------------------------
# Frobenius and spectral norms.

def frobenius_norm(matvec: MatVec, like: torch.Tensor, probes: int, seed: int, confidence: float = 0.95,
                   progress=None) -> dict:
    """‖H‖_F by Hutch++ with `probes` Rademacher vectors, its standard error (from the Hutchinson part) and an
    interval at level `confidence` (see hutchinson_interval)."""
    dim = like.numel()
    sketched = min(probes // 3, dim)  # more columns than d cannot add to an orthonormal basis
    hutchinson = probes - 2 * sketched
    basis = None
    exact = 0.0
    if sketched:
        columns = torch.empty(dim, sketched, dtype=like.dtype, device=like.device)
        for j in range(sketched):
            columns[:, j] = matvec(rademacher_vector(dim, seed, j, like))
            if progress is not None:
                progress.update(1)
        basis, _ = torch.linalg.qr(columns)  # d × s in the working dtype, spanning H·S
        del columns
        for j in range(sketched):
            exact += float(matvec(basis[:, j].contiguous()).double().pow(2).sum())
            if progress is not None:
                progress.update(1)
    samples = []
    for j in range(hutchinson):
        z = rademacher_vector(dim, seed, sketched + j, like)
        if basis is not None:
            z = z - basis @ (basis.T @ z)
        samples.append(float(matvec(z).double().pow(2).sum()))
        if progress is not None:
            progress.update(1)
    rest = float(np.mean(samples)) if samples else 0.0
    rest_stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    square = max(exact + rest, 0.0)
    value = math.sqrt(square)
    return {"value": value, "stderr": rest_stderr / (2 * value) if value > 0 else rest_stderr,
            "ci": hutchinson_interval(exact, samples, confidence), "confidence": confidence, "probes": probes,
            "square": square}


def hutchinson_interval(exact: float, samples: list[float], confidence: float) -> list[float] | None:
    """√(exact + an interval of the mean of the positive samples): Cox's interval for a log-normal mean (Land
    1972; Zhou & Gao 1997): with y = log(samples), n of them, exp(ȳ + s²/2 ± t·√(s²/n + s⁴/(2(n − 1)))), t
    Student's quantile with n − 1 degrees of freedom (None for fewer than 2 samples).

    Why not ±1.96·se: with few samples (4 at 12 probes, 10 at 30) the se is itself uncertain, and the samples
    ‖H(I − QQᵀ)z‖² are right-skewed when a large eigenvalue is left outside the sketch (a mean that missed the
    large values is low, and so is its se), so ±1.96·se covered 72–91 % (t on a log scale: 88–95 %). Cox's
    interval covered 91–95 % on six spectra (a formed GPT-2 Hessian's: 93 %) at 12, 30 and 60 probes."""
    if len(samples) < 2:
        return None
    if min(samples) <= 0:  # a zero sample: H(I − QQᵀ) is 0 on it, and on every probe if all are 0
        if max(samples) <= 0:
            return [math.sqrt(max(exact, 0.0))] * 2
        samples = [max(x, min(x for x in samples if x > 0)) for x in samples]
    logs = np.log(samples)
    n, variance = len(logs), float(np.var(logs, ddof=1))
    half = student_t.ppf((1 + confidence) / 2, n - 1) * math.sqrt(variance / n + variance**2 / (2 * (n - 1)))
    centre = float(np.mean(logs)) + variance / 2
    return [math.sqrt(max(exact + math.exp(centre - half), 0.0)), math.sqrt(max(exact + math.exp(centre + half), 0.0))]


def spectral_norm(matvec: MatVec, like: torch.Tensor, max_iter: int, tol: float, seed: int, progress=None) -> dict:
    eigen = lanczos(matvec, like.numel(), k=1, max_iter=max_iter, tol=tol, seed=seed, device=like.device,
                    dtype=like.dtype, progress=progress)
    return spectral_of(eigen.top[0], eigen.bottom, eigen.matvecs)


def spectral_of(top: Estimate, bottom: Estimate, hvps: int) -> dict:
    """‖H‖₂ = max(|λ_max|, |λ_min|) from a Lanczos run's extreme estimates and the products (`hvps`) it took."""
    extreme = top if abs(top.value) >= abs(bottom.value) else bottom
    return {"value": abs(extreme.value), "lambda_max": top.value, "lambda_min": bottom.value,
            "converged": extreme.converged, "residual": extreme.residual, "hvps": hvps}


# ----------------------------------------------------------------------------------------------
# One frame: every norm of one operator.

def _blocks(names: list[str], numels: list[int], segments: dict) -> dict:
    """Segment (parameter) sums grouped by layer and by kind, with per-coordinate values."""
    grouped = {}
    for grouping, key in (("layer", parameter_layer), ("kind", parameter_kind)):
        groups: dict[str, dict] = {}
        for position, name in enumerate(names):
            group = groups.setdefault(key(name), {"dim": 0, "median": 0.0, "half_iqr": 0.0})
            group["dim"] += numels[position]
            for estimator in ("median", "half_iqr"):
                group[estimator] += float(segments[estimator][position])
        grouped[grouping] = {name: {"dim": g["dim"], **{estimator: {"total": g[estimator],
                                                                     "per_coordinate": g[estimator] / g["dim"]}
                                                        for estimator in ("median", "half_iqr")}}
                             for name, g in groups.items()}
    return grouped


def measure_frame(matvec: MatVec, like: torch.Tensor, names: list[str], numels: list[int], cfg, eigen_cfg,
                  sketch_path: Path, stamp: str, bar: Callable, label: str = "", spectral: dict | None = None) -> dict:
    """Every geometry figure of the operator `matvec` (see the module docstring); `cfg` is a GeometryConfig,
    `eigen_cfg` the SharpnessConfig whose max_iter, tol and seed the Lanczos run uses, and `bar(total, desc)`
    makes a progress bar. `spectral`: ‖H‖₂ as spectral_of gives it from a Lanczos run made already on this operator
    (sharpness.json's); None: measured here. The sketch file is removed when the frame is done. `hvps` counts the
    products this stage took for the frame's figures, however many runs computed them: one per sketch row (a resumed
    sketch's rows too, a row computed again once) plus those of ‖H‖₂ (when measured here) and ‖H‖_F."""
    start, hvps = time.perf_counter(), cfg.cauchy_vectors
    dim = like.numel()

    def counted(v):
        nonlocal hvps
        hvps += 1
        return matvec(v)

    with bar(cfg.cauchy_vectors, f"{label} Cauchy sketches") as progress:
        sketch = cauchy_sketch(matvec, like, cfg.cauchy_vectors, cfg.seed, sketch_path, stamp, progress)
    with bar(math.ceil(dim / CHUNK), f"{label} row norms") as progress:
        stats = None if sketch is None else row_norm_statistics(sketch, numels, cfg.bootstrap, cfg.confidence,
                                                                cfg.seed, progress)
    stats = distributed.broadcast_object(stats)  # torchrun: computed by rank 0, which holds the sketch
    del sketch
    if spectral is None:
        with bar(eigen_cfg.max_iter, f"{label} ‖H‖₂") as progress:
            spectral = spectral_norm(counted, like, eigen_cfg.max_iter, eigen_cfg.tol, eigen_cfg.seed, progress)
    frobenius = None
    if cfg.frobenius_probes:
        with bar(cfg.frobenius_probes, f"{label} ‖H‖_F") as progress:
            frobenius = frobenius_norm(counted, like, cfg.frobenius_probes, cfg.seed + 1, cfg.confidence, progress)
    l11 = {name: {"total": s["total"], "per_coordinate": s["total"] / dim, "ci": s["ci"], "confidence": cfg.confidence,
                  "stderr": s["stderr"]} for name, s in stats.items()}
    remove_sketch(sketch_path)  # only now: a kill in Lanczos or Hutch++ keeps the finished sketch
    scale = dim * spectral["value"]
    return {
        "l11": l11,
        "linf": {name: s["largest_row"] for name, s in stats.items()},
        "frobenius": frobenius,
        "spectral": spectral,
        "ratio": {name: (l11[name]["total"] / scale if scale > 0 else math.nan) for name in l11},
        "blocks": _blocks(names, numels, {name: s["segments"] for name, s in stats.items()}),
        "cauchy_vectors": cfg.cauchy_vectors,
        "hvps": hvps,
        "time_s": time.perf_counter() - start,
    }
