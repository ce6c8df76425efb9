"""train.optimizer's names and train.optimizer_args: checked when the experiment is read (config.optimizers)."""

from __future__ import annotations

import pytest

from config.optimizers import group_options, library_class, train_settings
from config.schema import TrainConfig
from utils.errors import ConfigError


@pytest.mark.parametrize("text, message", [
    ("train: {optimizer: lion, optimizer_args: {bogus: 1}}", "lion has no argument 'bogus'"),
    ("train: {optimizer: lion, optimizer_args: {cautios: true}}",  # a typo of a kwargs-only option
     r"lion has no argument 'cautios' \(its arguments: .*, cautious, use_gc\)$"),
    ("train: {optimizer: torch.NAdam, optimizer_args: {lr: 0.1}}", "lr is set by train.lr; set it there"),
    ("train: {optimizer: signsgd, optimizer_args: {nesterov: true}}", "signsgd takes no optimizer_args"),
    ("train: {optimizer: torch.Foo}", "must be one of sgd, .*, got 'torch.Foo'"),
    ("train: {optimizer: nadamw}", "must be one of .*torch.<Class> for any torch.optim optimizer .*got 'nadamw'"),
    ("train: {optimizer: torch.Optimizer}", "got 'torch.Optimizer'"),
    ("train: {optimizer: torch.LBFGS}", "torch.LBFGS needs a closure"),
    ("train: {optimizer: adam, optimizer_args: [amsgrad]}", "expected a mapping"),
])
def test_a_wrong_optimizer_or_argument_is_named_with_where_it_was_written(tiny_experiment, text, message):
    with pytest.raises(ConfigError, match=message) as raised:
        tiny_experiment(text)
    assert raised.value.exit_code == 2 and "train.optimizer" in str(raised.value)


def test_known_arguments_pass_and_reach_the_run(tiny_experiment):
    experiment = tiny_experiment("train: {optimizer: torch.SGD, momentum: 0.9, optimizer_args: {nesterov: true}}")
    assert experiment.runs[0].train.optimizer_args == {"nesterov": True}


def test_train_settings_set_only_parameters_of_the_same_kind():
    import torch

    train = TrainConfig(lr=0.5, momentum=0.9, betas=[0.8, 0.9], eps=1e-6, weight_decay=0.1)
    assert train_settings(torch.optim.SGD, train) == {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.1}
    assert train_settings(torch.optim.Adam, train) == {"lr": 0.5, "betas": (0.8, 0.9), "eps": 1e-6,
                                                       "weight_decay": 0.1}
    assert "eps" not in train_settings(torch.optim.Adafactor, train)  # its eps is a pair
    assert library_class("torch.Rprop") is torch.optim.Rprop and library_class("adasgd") is None


def test_options_taken_only_through_kwargs_pass_and_reach_the_optimizers_groups(tiny_experiment):
    """pytorch-optimizer's Lion takes cautious, use_gc, adanorm and adanorm_r through **kwargs into its groups (its
    signature does not name them); Muon takes cautious so; torch.optim classes take no **kwargs."""
    import pytorch_optimizer
    import torch

    from optimization.optimizers import make_optimizer

    experiment = tiny_experiment("train: {optimizer: lion, optimizer_args: {cautious: true, adanorm: true}}")
    group = make_optimizer([torch.nn.Parameter(torch.ones(2, 2))], experiment.runs[0].train).param_groups[0]
    assert group["cautious"] is True and group["adanorm"] is True
    assert group_options(pytorch_optimizer.Lion) == ("adanorm", "adanorm_r", "cautious", "use_gc")
    assert group_options(pytorch_optimizer.AdaHessian) == ("adam_debias",)
    assert group_options(pytorch_optimizer.Muon) == ("cautious",)  # not the lr, betas, … it sets on each group
    assert group_options(pytorch_optimizer.SOAP) == group_options(torch.optim.Adam) == ()
