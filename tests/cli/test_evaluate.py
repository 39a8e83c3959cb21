"""`tl-culture evaluate`: a Δ NLL matrix file from the command line, reference neuron files."""

from __future__ import annotations

import torch

from tl_culture.cli import main


def test_cli_evaluate(cli_files, tiny_hf_dir, capsys):
    d = cli_files
    out = d / "nll.json"
    rc = main(["evaluate", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"),
               "--corpus", f"en={d / 'en.txt'}", "--corpus", f"ru={d / 'ru.txt'}", "--out", str(out),
               "--controls", "2", "--bootstrap", "10", "--seq-len", "8", "--no-progress", "--device", "cpu"])
    assert rc == 0
    from tl_culture import NLLMatrix

    m = NLLMatrix.load(out)
    assert m.groups == ["en", "ru"] and m.evals == ["en", "ru"] and m.meta["control_seeds"] == 2
    assert "random-neuron control" in capsys.readouterr().out
    # the API on the same inputs gives the same matrix, cell for cell
    from tl_culture import NeuronSet, delta_nll, load_corpus, load_model

    model = load_model(str(tiny_hf_dir), device="cpu")
    corpora = {n: load_corpus(str(d / f"{n}.txt"), name=n) for n in ("en", "ru")}
    api = delta_nll(model, corpora, NeuronSet.load(d / "neurons.safetensors"), controls=2, bootstrap=10, seq_len=8,
                    progress=False)
    assert m.meta["control_cells"] == "own" and m.meta["backend"] == api.meta["backend"] == "native"
    for name in ("baseline", "delta", "delta_ci_low", "delta_ci_high", "control_delta", "paired_ci_low"):
        torch.testing.assert_close(getattr(m, name), getattr(api, name), rtol=0, atol=0, equal_nan=True, msg=name)
    assert bool(m.delta.abs().max() > 0) and torch.equal(torch.isfinite(m.control_delta), torch.eye(2).bool())


def test_cli_evaluate_control_cells_and_backend(cli_files, tiny_hf_dir):
    from tl_culture import NLLMatrix

    d = cli_files
    base = ["evaluate", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"), "--corpus",
            f"en={d / 'en.txt'}", "--corpus", f"ru={d / 'ru.txt'}", "--controls", "1", "--bootstrap", "0",
            "--seq-len", "8", "--no-progress"]
    assert main([*base, "--out", str(d / "all.json"), "--control-cells", "all", "--backend", "hooks"]) == 0
    m = NLLMatrix.load(d / "all.json")
    assert m.meta["control_cells"] == "all" and m.meta["backend"] == "hooks" and bool(m.control_delta.isfinite().all())
    assert main([*base, "--out", str(d / "pair.json"), "--pair", "en=ru"]) == 0  # ru is en's text too
    assert torch.isfinite(NLLMatrix.load(d / "pair.json").control_delta).tolist() == [[True, True], [False, True]]


def test_cli_evaluate_reference_pth_is_sized_to_the_model(cli_files, tiny_hf_dir, capsys):
    d = cli_files
    ref = d / "ref.neuron.pth"
    torch.save([[torch.tensor([1, 2]), torch.tensor([3])], [torch.tensor([], dtype=torch.long), torch.tensor([5])]],
               ref)  # largest index 5: d_mlp 48 comes from the model, not the file
    out = d / "ref.json"
    base = ["evaluate", "--model", str(tiny_hf_dir), "--neurons", str(ref), "--corpus", f"en={d / 'en.txt'}",
            "--out", str(out), "--controls", "0", "--bootstrap", "0", "--seq-len", "8", "--no-progress",
            "--allow-overlap"]
    assert main(base + ["--groups", "a,b"]) == 0
    from tl_culture import NLLMatrix

    assert NLLMatrix.load(out).groups == ["a", "b"]
    capsys.readouterr()
    assert main(base) == 2
    assert "is a reference file; name its groups with --groups" in capsys.readouterr().err


def test_no_shared_prefix_is_accepted_hidden_and_does_nothing(cli_files, tiny_hf_dir, capsys):
    from tl_culture.evaluation.matrix import NLLMatrix

    d = cli_files
    base = ["evaluate", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"),
            "--corpus", f"en={d / 'en.txt'}", "--controls", "0", "--bootstrap", "0", "--seq-len", "8",
            "--no-progress", "--device", "cpu"]
    assert main([*base, "--out", str(d / "a.json")]) == 0
    assert main([*base, "--out", str(d / "b.json"), "--no-shared-prefix"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {d / 'b.json'} (" in out and "shared prefix" not in out
    assert torch.equal(NLLMatrix.load(d / "a.json").ablated, NLLMatrix.load(d / "b.json").ablated)
    assert main(["evaluate", "--help"]) == 0
    assert "--no-shared-prefix" not in capsys.readouterr().out


def test_options_default_to_delta_nll(capsys):
    from tests.cli.conftest import help_text, option_help
    from tl_culture.cli import build_parser
    from tl_culture.cli._options import signature_defaults
    from tl_culture.evaluation.delta import delta_nll

    d = signature_defaults(delta_nll)
    args = build_parser().parse_args(["evaluate", "--neurons", "n", "--corpus", "en=x", "--out", "o.json"])
    got = (args.control_seeds, args.bootstrap, args.seed, args.seq_len, args.batch_size, args.max_tokens, args.progress)
    assert got == (d["controls"], d["bootstrap"], d["seed"], d["seq_len"], d["batch_size"], d["max_tokens"],
                   d["progress"])
    text = help_text(capsys, "evaluate")
    flags = ["--controls", "--bootstrap", "--seed", "--seq-len", "--batch-size", "--max-tokens", "--allow-overlap"]
    for flag, key in zip(flags, ("controls", "bootstrap", "seed", "seq_len", "batch_size", "max_tokens"), strict=False):
        want = "(default: 256, or the model's context if shorter)" if key == "seq_len" else f"(default: {d[key]})"
        assert want in option_help(text, flag, flags), flag
