"""``tl-culture steer``: continue a prompt with and without an intervention, side by side."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import add_neuron_file_args, group_list, is_reference, load_neurons, positive_int
from tl_culture.cli._options import add_option, add_options, signature_defaults
from tl_culture.counting.stats import ActivationStats
from tl_culture.experiment.config import MODEL_FIELDS, ExperimentConfig
from tl_culture.intervene.interventions import ablate, scale, set_to
from tl_culture.intervene.steer import SteerResult, generate
from tl_culture.model.load import load_model
from tl_culture.selection.neurons import NeuronSet


def _cmd(args: argparse.Namespace) -> int:
    if not is_reference(args.neurons):  # fail on a bad file or group before loading the model
        NeuronSet.load(args.neurons).index(args.group)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    neurons = load_neurons(args.neurons, group_list(args.groups), model)
    if args.scale is not None:
        edit = scale(neurons, args.group, args.scale)
    elif args.set_mean is not None:
        edit = set_to(neurons, args.group, ActivationStats.load(args.set_mean))
    elif args.set is not None:
        edit = set_to(neurons, args.group, args.set)
    else:
        edit = ablate(neurons, args.group)
    for prompt in args.prompt:
        res = generate(model, prompt, edit, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       temperature=args.temperature, top_k=args.top_k)
        print(res.side_by_side(args.width))
        print()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``steer``: options with the defaults of `tl_culture.intervene.steer.generate`."""
    d = signature_defaults(generate)
    width = signature_defaults(SteerResult.side_by_side)["width"]
    p = sub.add_parser("steer", help="continue a prompt with and without an intervention, side by side")
    add_options(p, ExperimentConfig, MODEL_FIELDS)
    add_neuron_file_args(p, "group names of a reference .pth file, comma-separated")
    p.add_argument("--group", required=True, help="whose neurons to edit")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="multiply act_fn(gate) of the neurons by K")
    how.add_argument("--set-mean", metavar="STATS", help="set them to their mean activation on GROUP (stats file)")
    how.add_argument("--set", type=float, metavar="VALUE", help="set them to VALUE")
    how.add_argument("--ablate", action="store_true", help="zero them")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    add_option(p, "--max-new-tokens", "tokens to generate", d["max_new_tokens"], type=positive_int)
    add_option(p, "--seed", "sampling seed, the same for both runs", d["seed"], type=int)
    add_option(p, "--temperature", "0 = greedy, > 0 samples", d["temperature"], type=float)
    add_option(p, "--top-k", "sample among the top K tokens", d["top_k"], type=positive_int)
    add_option(p, "--width", "output width", width, type=positive_int)
    p.set_defaults(func=_cmd)


__all__ = ["register"]
