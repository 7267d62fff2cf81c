import numpy as np
import pytest
import torch
from torch import nn

from worker.ml.network import (
    EARLY_LAYERS,
    INPUT_CONVS,
    LAST_BLOCK,
    ParallelResidualNet,
    freeze_early_layers,
    replace_head,
)
from worker.ml.training import TrainingConfig, train_classifier
from worker.ml.zennit_compat import zennit  # noqa: F401

# isort: split
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.core import collect_leaves
from zennit.layer import Sum


@pytest.fixture
def model() -> ParallelResidualNet:
    torch.manual_seed(0)
    return ParallelResidualNet(6)


def randomise_batch_norms(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def test_two_wavelet_channels_in_class_logits_out(model):
    assert model(torch.randn(3, 2, 56, 56)).shape == (3, 6)


def test_every_batch_norm_directly_follows_its_conv_in_order_and_in_data_flow(model):
    leaves = list(collect_leaves(model))
    produced, consumed = {}, {}

    def record(module, inputs, output):
        consumed[module], produced[module] = inputs[0], output

    hooks = [leaf.register_forward_hook(record) for leaf in leaves]
    model(torch.randn(2, 2, 56, 56))
    for hook in hooks:
        hook.remove()
    batch_norms = [i for i, leaf in enumerate(leaves) if isinstance(leaf, nn.BatchNorm2d)]
    convs = [leaf for leaf in leaves if isinstance(leaf, nn.Conv2d)]
    assert len(batch_norms) == len(convs) == 16  # per branch 1 + 2 + 3, fusion 1 + 3: every conv has its BN
    for i in batch_norms:
        previous = leaves[i - 1]
        assert isinstance(previous, nn.Conv2d)
        assert previous.out_channels == leaves[i].num_features
        assert consumed[leaves[i]] is produced[previous], "the BN must consume exactly its conv's output"


def test_zennit_merges_every_batch_norm_without_changing_the_function(model):
    randomise_batch_norms(model)
    model.eval()
    x = torch.randn(4, 2, 56, 56)
    expected = model(x)
    canonizer = SequentialMergeBatchNorm()
    instances = canonizer.apply(model)
    try:
        merged = {instance.batch_norm for instance in instances}
        assert merged == {m for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)
    finally:
        for instance in instances:
            instance.remove()
    torch.testing.assert_close(model(x), expected)


def test_no_module_is_called_twice_and_none_is_left_unused(model):
    calls = {}
    leaves = list(collect_leaves(model))

    def count(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1

    hooks = [leaf.register_forward_hook(count) for leaf in leaves]
    model(torch.randn(2, 2, 56, 56))
    for hook in hooks:
        hook.remove()
    assert [calls.get(leaf, 0) for leaf in leaves] == [1] * len(leaves)


def test_residual_sums_are_zennit_sum_modules(model):
    sums = [name for name, module in model.named_modules() if isinstance(module, Sum)]
    assert sums == [
        "branch_a.early.block.sum",
        "branch_a.late.sum",
        "branch_d.early.block.sum",
        "branch_d.late.sum",
        "fusion_block.sum",
    ]
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_named_hook_points_exist(model):
    for name in INPUT_CONVS:
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d) and conv.in_channels == 1
    captured = []
    model.get_submodule(LAST_BLOCK).register_forward_hook(lambda m, i, o: captured.append(o))
    model(torch.randn(2, 2, 56, 56))
    assert captured[0].shape == (2, 128, 14, 14)


def test_branches_see_their_own_wavelet_channel(model):
    model.eval()
    x = torch.randn(2, 2, 56, 56)
    changed_detail = x.clone()
    changed_detail[:, 1] += 1.0
    captured = {}
    model.branch_a.register_forward_hook(lambda m, i, o: captured.setdefault("a", []).append(o))
    model(x), model(changed_detail)
    torch.testing.assert_close(captured["a"][0], captured["a"][1])


def early_parameter_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(tuple(p + "." for p in EARLY_LAYERS))}


def test_freeze_early_layers_freezes_exactly_up_to_the_second_max_pool(model):
    freeze_early_layers(model)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == early_parameter_names(model)
    assert {"branch_a.early.conv.weight", "branch_d.early.block.bn2.bias"} <= frozen
    assert not any(name.startswith(("branch_a.late", "fusion", "head")) for name in frozen)
    for prefix in EARLY_LAYERS:
        assert isinstance(model.get_submodule(prefix + ".pool2"), nn.MaxPool2d)
    model.train()
    assert all(not m.training for p in EARLY_LAYERS for m in model.get_submodule(p).modules())
    assert model.branch_a.late.training and model.head.training


def test_frozen_early_layers_and_their_bn_statistics_do_not_change_during_training(model):
    randomise_batch_norms(model)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    rng = np.random.default_rng(0)
    images = rng.random((24, 112, 112)).astype(np.float32)
    labels = np.arange(24) % 6
    config = TrainingConfig(max_epochs=2, patience=5, batch_size=8, freeze_early=True, val_fraction=0.25)
    trained = train_classifier(model, images, labels, config, torch.device("cpu")).model
    after = trained.state_dict()
    early = [n for n in before if n.startswith(tuple(p + "." for p in EARLY_LAYERS))]
    assert any("running_mean" in n for n in early)
    for name in early:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    # ...while the late layers did train, statistics included.
    assert not torch.equal(after["branch_a.late.conv1.weight"], before["branch_a.late.conv1.weight"])
    assert not torch.equal(after["fusion_block.bn1.running_mean"], before["fusion_block.bn1.running_mean"])


def test_replace_head_changes_the_classes_and_keeps_the_rest():
    torch.manual_seed(0)
    model = ParallelResidualNet(5)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    replace_head(model, 6)
    assert model.n_classes == 6 and model.head.out_features == 6
    model.eval()
    assert model(torch.randn(2, 2, 56, 56)).shape == (2, 6)
    for name, tensor in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(tensor, before[name]), name


def test_fewer_than_two_classes_is_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ParallelResidualNet(1)
