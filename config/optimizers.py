"""The names `train.optimizer` accepts, the library class behind each, and the check of `train.optimizer_args`.

Names: the project's own signsgd, adasgd and blockadam (optimization.optimizers); sgd, adam, adamw, nadam,
radam, adafactor (torch.optim); lion, adahessian, soap, shampoo, muon (pytorch-optimizer); and `torch.<Class>`
for any other torch.optim optimizer (torch.Muon, torch.Adamax, …). The training loop takes one gradient per
step, so optimizers that need a closure (LBFGS) or sparse gradients (SparseAdam) are refused.

What reaches the class: train.lr always; train.momentum, train.betas, train.eps and train.weight_decay where
the class has a parameter of that name with a default of the same kind (Adafactor's eps is a pair, so it keeps
its own); then train.optimizer_args, any other parameter of the class by name (lists become tuples), or an
option it takes only through **kwargs (group_options: pytorch-optimizer's Lion cautious, use_gc, adanorm,
adanorm_r; AdaHessian adam_debias; Muon cautious). Any other name is refused, as a typo would be ignored.
"""

from __future__ import annotations

import importlib
import inspect
import re

from utils.errors import ConfigError

PROJECT_OPTIMIZERS = ("signsgd", "adasgd", "blockadam")  # optimization.optimizers implements them
LIBRARY_OPTIMIZERS = {
    "sgd": "torch.optim:SGD", "adam": "torch.optim:Adam", "adamw": "torch.optim:AdamW",
    "nadam": "torch.optim:NAdam", "radam": "torch.optim:RAdam", "adafactor": "torch.optim:Adafactor",
    "lion": "pytorch_optimizer:Lion", "adahessian": "pytorch_optimizer:AdaHessian",
    "soap": "pytorch_optimizer:SOAP", "shampoo": "pytorch_optimizer:Shampoo",
    "muon": "pytorch_optimizer:Muon",  # Muon on matrices, AdamW on the rest, in one optimizer
}
NAMES = tuple(LIBRARY_OPTIMIZERS) + PROJECT_OPTIMIZERS
NEEDS_MORE = {"LBFGS": "a closure that re-evaluates the loss", "SparseAdam": "sparse gradients"}
FROM_TRAIN = ("lr", "momentum", "betas", "eps", "weight_decay")  # train.* keys that set a class's parameters


def check_name(name: str) -> None:
    """ValueError (one sentence) for an unknown optimizer name or one the training loop cannot drive; imports no
    optimizer library."""
    if name in NAMES:
        return
    import torch  # only for torch.<Class> names: a config check answers without torch otherwise (run.py --help)

    attribute = name.removeprefix("torch.")
    found = getattr(torch.optim, attribute, None) if name.startswith("torch.") else None
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)) or found is torch.optim.Optimizer:
        raise ValueError(f"must be one of {', '.join(NAMES)}, or torch.<Class> for any torch.optim optimizer "
                         f"(e.g. torch.Adamax), got {name!r}")
    if attribute in NEEDS_MORE:
        raise ValueError(f"{name} needs {NEEDS_MORE[attribute]}, which the training loop (one gradient per step) "
                         "does not give")


def library_class(name: str) -> type[torch.optim.Optimizer] | None:
    """The class behind optimizer `name`; None for the project's own; ValueError as check_name's."""
    check_name(name)
    if name in PROJECT_OPTIMIZERS:
        return None
    if name in LIBRARY_OPTIMIZERS:
        module, attribute = LIBRARY_OPTIMIZERS[name].split(":")
        return getattr(importlib.import_module(module), attribute)
    return getattr(importlib.import_module("torch.optim"), name.removeprefix("torch."))


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's named parameters (not self, params, *args or **kwargs)."""
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n not in ("self", "params")
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def group_options(cls: type) -> tuple[str, ...]:
    """The options `cls` takes only through **kwargs, sorted: a pytorch-optimizer constructor puts its **kwargs into
    the parameter groups' defaults and its step reads the optional ones by group.get('name', …); those names that
    the class neither takes as a parameter nor sets itself (as Muon sets each group's lr and betas). Read from the
    class's source (and its pytorch-optimizer bases'), so a version that adds an option brings it."""
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        return ()
    source = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith("pytorch_optimizer."))
    read = set(re.findall(r"group\.get\(\s*['\"](\w+)['\"]", source))
    set_by_class = set(re.findall(r"group\[\s*['\"](\w+)['\"]\s*\]\s*=(?!=)", source))
    return tuple(sorted(read - set_by_class - set(inspect.signature(cls.__init__).parameters)))


def _same_kind(default, value) -> bool:
    if isinstance(default, tuple):
        return isinstance(value, tuple) and len(value) == len(default)
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def train_settings(cls: type, train) -> dict:
    """The train.* values (a TrainConfig's) that set `cls`'s parameters of the same name (see the module doc)."""
    parameters = _parameters(cls)
    values = {"lr": train.lr, "momentum": train.momentum, "betas": tuple(train.betas), "eps": train.eps,
              "weight_decay": train.weight_decay}
    return {k: v for k, v in values.items()
            if k in parameters and (k == "lr" or _same_kind(parameters[k].default, v))}


def check_optimizer(train, where, library_checks: bool = True) -> None:
    """ConfigError unless train.optimizer names an optimizer and every key of train.optimizer_args is a parameter
    of it that no train.* key sets (read from its library: only with `library_checks`); `where(key)` says where a
    key was written."""
    try:
        check_name(train.optimizer)
    except ValueError as err:
        raise ConfigError(f"{where('train.optimizer')}: {err}") from None
    if not isinstance(train.optimizer_args, dict):
        raise ConfigError(f"{where('train.optimizer_args')}: expected a mapping of argument names to values, "
                          f"got {train.optimizer_args!r}")
    if not train.optimizer_args or not library_checks:
        return
    cls = library_class(train.optimizer)  # imports its library (pytorch-optimizer takes seconds) only now
    if cls is None:
        raise ConfigError(f"{where('train.optimizer_args')}: {train.optimizer} takes no optimizer_args (its "
                          "settings are train.lr, momentum, betas, eps and weight_decay)")
    parameters, from_train = _parameters(cls), train_settings(cls, train)
    options = [*parameters, *group_options(cls)]
    for key in train.optimizer_args:
        if key in from_train:
            raise ConfigError(f"{where('train.optimizer_args')}: {key} is set by train.{key}; set it there")
        if key not in options:
            known = ", ".join(k for k in options if k not in from_train)
            raise ConfigError(f"{where('train.optimizer_args')}: {train.optimizer} has no argument {key!r} "
                              f"(its arguments: {known})")
