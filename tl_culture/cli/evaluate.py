"""Subcommands of the interventions stage: evaluate (Δ NLL matrix) and steer (side-by-side generation)."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import (
    add_model_args,
    group_list,
    is_reference,
    load_neurons,
    non_negative_int,
    pairs_to_dict,
    positive_int,
)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_culture import load_corpus, load_model
    from tl_culture.evaluation.delta import delta_nll

    groups = group_list(args.groups)
    is_ref = is_reference(args.neurons)
    corpora = {name: load_corpus(path, name=name) for name, path in pairs_to_dict(args.corpus).items()}
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    neurons = load_neurons(args.neurons, groups, model)
    res = delta_nll(
        model, corpora, neurons, groups=None if is_ref else groups, seq_len=args.seq_len,
        batch_size=args.batch_size, max_tokens=args.max_tokens, controls=args.controls, seed=args.seed,
        bootstrap=args.bootstrap, allow_overlap=args.allow_overlap, shared_prefix=not args.no_shared_prefix,
        progress=not args.no_progress,
    )
    res.save(args.out)
    print(res.table())
    print(f"wrote {args.out} ({res.meta['seconds']} s; shared prefix: {res.meta['shared_prefix']})")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from tl_culture import load_model
    from tl_culture.counting.collect import ActivationStats
    from tl_culture.intervene.interventions import ablate, scale, set_to
    from tl_culture.intervene.steer import generate

    if not is_reference(args.neurons):  # fail on a bad file or group before loading the model
        from tl_culture import NeuronSet

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
    p = sub.add_parser("evaluate", help="Δ NLL of ablating each group's neurons on held-out corpora")
    add_model_args(p)
    p.add_argument("--neurons", required=True, help="neuron-set file (ours, or a reference .pth with --groups)")
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH", help="an eval corpus (repeat)")
    p.add_argument("--out", required=True, help="NLL matrix file to write (.json)")
    p.add_argument("--groups", default=None, help="groups to ablate, comma-separated (a .pth file: its group names)")
    p.add_argument("--controls", type=non_negative_int, default=1, help="random-neuron control seeds (default 1)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the controls and bootstrap (default 0)")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per row (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="rows per forward (default 4)")
    p.add_argument("--max-tokens", type=positive_int, default=256, help="scored tokens per corpus (default 256)")
    p.add_argument("--allow-overlap", action="store_true", help="evaluate even on the neurons' selection text")
    p.add_argument("--no-shared-prefix", action="store_true", help="run every intervention's full forward")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("steer", help="continue a prompt with and without an intervention, side by side")
    add_model_args(p)
    p.add_argument("--neurons", required=True, help="neuron-set file (ours, or a reference .pth with --groups)")
    p.add_argument("--groups", default=None, help="group names of a reference .pth file, comma-separated")
    p.add_argument("--group", required=True, help="whose neurons to edit")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="multiply act_fn(gate) of the neurons by K")
    how.add_argument("--set-mean", metavar="STATS", help="set them to their mean activation on GROUP (stats file)")
    how.add_argument("--set", type=float, metavar="VALUE", help="set them to VALUE")
    how.add_argument("--ablate", action="store_true", help="zero them")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    p.add_argument("--max-new-tokens", type=positive_int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for both runs (default 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    p.add_argument("--top-k", type=positive_int, default=50, help="sample among the top K tokens (default 50)")
    p.add_argument("--width", type=positive_int, default=100, help="output width (default 100)")
    p.set_defaults(func=_cmd_steer)


__all__ = ["register"]
