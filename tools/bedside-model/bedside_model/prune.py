"""Structured pruning of a PyTorch model before it is quantized (`--prune RATIO` with `--torch`).

Whole channels go, so the pruned model is a smaller dense model that tract runs faster: nothing sparse is left for a
runtime to exploit or ignore. torch-pruning (DepGraph) finds which layers must shrink together — a residual add, a
U-Net skip concatenation, a BatchNorm after its convolution — so any architecture a user trains works, not only the
plain chains the factory's own models are. Channels are ranked by the L1 norm of their weights over the whole
dependency group (GroupMagnitudeImportance, p=1, the criterion the factory's pruning used per layer), the same
fraction goes from every prunable layer, and widths are rounded to a multiple of `round_to` (tract's int8 kernels
work in tiles of 4 to 16 channels: odd widths waste them). The output layer is never pruned: its channels are the
labels (or the detection grid's values).

Pruning costs accuracy; a fine-tune on the user's own data wins most of it back. The hook `--finetune MODULE:FUNC`
is called as FUNC(model) with the pruned model in train mode and returns the model (or None when it trained in
place). Without it the tool says so, and the eval gate (`--eval-data`) judges what is left.
"""
import importlib
import os
import sys


class PruneError(Exception):
    pass


def load_hook(spec):
    """`MODULE:FUNC` from the working directory or the path."""
    if ":" not in spec:
        raise PruneError(f"--finetune {spec!r}: give MODULE:FUNC, e.g. mytrain:finetune")
    mod_name, fn_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise PruneError(f"--finetune {spec}: {e}")
    finally:
        sys.path.pop(0)


def output_layer(model, x):
    """The last Conv or Linear layer a forward pass runs: the one whose channels are the outputs."""
    import torch
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
             if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise PruneError("the model has no Conv or Linear layer to prune")
    return order[-1]


def conv_widths(model):
    import torch
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]


def prune(model, example_shape, ratio, round_to=8, finetune=None, say=print):
    """Prunes `ratio` of the channels of every prunable layer of `model` (in place), then runs the fine-tune hook.
    Returns (model, info): MACs and parameters before and after, the conv widths, whether it was fine-tuned."""
    import torch
    try:
        import torch_pruning as tp
    except ImportError:
        raise PruneError("--prune needs torch-pruning: pip install 'bedside-model[torch]'")
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"--prune {ratio}: give the fraction of channels to remove, between 0 and 1")
    model.eval()
    x = torch.zeros(*example_shape, dtype=torch.float32)
    head = output_layer(model, x)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    widths0 = conv_widths(model)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[head], round_to=round_to)
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    say(f"pruned {ratio:.0%} of the channels: {macs0 / 1e6:.1f} -> {macs1 / 1e6:.1f} M MAC, "
        f"{params0 / 1e3:.0f} -> {params1 / 1e3:.0f} k parameters")
    tuned = False
    if finetune is not None:
        model.train()
        got = finetune(model)
        model = got if got is not None else model
        tuned = True
        say("fine-tuned the pruned model with the hook")
    model.eval()
    with torch.no_grad():
        model(x)  # the pruned model still runs on the example shape
    return model, {"ratio": ratio, "round_to": round_to, "macs_before": int(macs0), "macs_after": int(macs1),
                   "params_before": int(params0), "params_after": int(params1), "widths_before": widths0,
                   "widths_after": conv_widths(model), "finetuned": tuned}
