"""``tl-culture steer``: continue prompts with and without an intervention.

With ``--prompt`` (repeatable) it prints each prompt's two continuations side by side. With
``--prompts FILE --target-language LANG`` it measures steering (`steer_eval`): the share of
continuations in LANG with and without the edit and for random-neuron controls, greedy (and
sampled when ``--temperature`` > 0), printed as a table and written to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse

from tl_culture.cli._common import (
    add_neuron_file_args,
    group_list,
    is_reference,
    load_neurons,
    non_negative_int,
    positive_int,
)
from tl_culture.cli._options import add_option, add_options, signature_defaults
from tl_culture.counting.stats import ActivationStats
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.steering import read_prompts, steer_eval, steer_evals
from tl_culture.experiment.config import MODEL_FIELDS, ExperimentConfig
from tl_culture.intervene.interventions import Intervention, ablate, scale, set_to
from tl_culture.intervene.steer import SteerResult, generate
from tl_culture.model.load import load_model
from tl_culture.selection.neurons import NeuronSet


def _edit(args: argparse.Namespace, neurons: NeuronSet) -> Intervention:
    if args.scale is not None:
        return scale(neurons, args.group, args.scale)
    if args.set_mean is not None:
        return set_to(neurons, args.group, ActivationStats.load(args.set_mean))
    if args.set is not None:
        return set_to(neurons, args.group, args.set)
    return ablate(neurons, args.group)


def _measure(args: argparse.Namespace, model, edit: Intervention, prompts: list[str]) -> None:
    modes = ("greedy", "sampled") if args.temperature > 0 else ("greedy",)
    res = steer_eval(model, prompts, edit, args.target_language, controls=args.controls, modes=modes,
                     temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                     progress=args.progress)
    print(res.table())
    if args.out:
        res.save(args.out)
        print(f"wrote {args.out}")


def _cmd(args: argparse.Namespace) -> int:
    if args.prompts and not args.target_language:
        raise TLCultureError("--prompts measures steering: give --target-language LANG (e.g. fa)")
    if not is_reference(args.neurons):  # fail on a bad file or group before loading the model
        NeuronSet.load(args.neurons).index(args.group)
    prompts = read_prompts(args.prompts) if args.prompts else None
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    edit = _edit(args, load_neurons(args.neurons, group_list(args.groups), model))
    if prompts is not None:
        _measure(args, model, edit, prompts)
        return 0
    for prompt in args.prompt:
        res = generate(model, prompt, edit, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       temperature=args.temperature, top_k=args.top_k)
        print(res.side_by_side(args.width))
        print()
    return 0


def _measure_options(p: argparse.ArgumentParser) -> None:
    e = signature_defaults(steer_evals)
    m = p.add_argument_group("measured steering (with --prompts)")
    m.add_argument("--target-language", "--measure", metavar="LANG",
                   help="language code whose share of the continuations is measured (py3langid codes: fa, de, ...)")
    add_option(m, "--controls", "random-neuron control draws (same edit, same count per layer)", e["controls"],
               type=non_negative_int)
    add_option(m, "--batch-size", "prompts decoded together", e["batch_size"], type=positive_int)
    m.add_argument("--out", metavar="FILE", help="write the evaluation (rates, CIs, every continuation) as JSON")
    m.add_argument("--progress", action="store_true", help="print a line per decoded condition")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``steer``: options with the defaults of `generate` (and of `steer_eval` for --prompts)."""
    d = signature_defaults(generate)
    width = signature_defaults(SteerResult.side_by_side)["width"]
    p = sub.add_parser("steer", help="continue prompts with and without an intervention; measure the output language")
    add_options(p, ExperimentConfig, MODEL_FIELDS)
    add_neuron_file_args(p, "group names of a reference .pth file, comma-separated")
    p.add_argument("--group", required=True, help="whose neurons to edit")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="multiply act_fn(gate) of the neurons by K")
    how.add_argument("--set-mean", metavar="STATS", help="set them to their mean activation on GROUP (stats file)")
    how.add_argument("--set", type=float, metavar="VALUE", help="set them to VALUE")
    how.add_argument("--ablate", action="store_true", help="zero them")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="prompt text (repeat for several)")
    what.add_argument("--prompts", metavar="FILE", help="a text file, one prompt per line: measure steering")
    add_option(p, "--max-new-tokens", "tokens to generate", d["max_new_tokens"], type=positive_int)
    add_option(p, "--seed", "sampling seed, the same for both runs", d["seed"], type=int)
    add_option(p, "--temperature", "0 = greedy, > 0 samples (with --prompts: greedy and sampled)", d["temperature"],
               type=float)
    add_option(p, "--top-k", "sample among the top K tokens", d["top_k"], type=positive_int)
    add_option(p, "--width", "output width", width, type=positive_int)
    _measure_options(p)
    p.set_defaults(func=_cmd)


__all__ = ["register"]
