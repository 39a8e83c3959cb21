"""Bad input on the command line: one line ``tl-culture: error: ...`` naming the problem and the fix,
exit code 2, no traceback (``--debug`` shows it), and existing outputs left untouched."""

from __future__ import annotations

import pytest
import torch

from tl_culture import NeuronSet, TLCultureError
from tl_culture.cli import main


def collect_args(files, model, *extra, corpus=None):
    return ["collect", "--model", model, "--device", "cpu", "--corpus", corpus or f"en={files['good']}",
            "--out", f"{files['dir']}/out.safetensors", "--seq-len", "16", "--no-progress", *extra]


# (id, argv builder, exact message after "tl-culture: error: "  -- "{x}" is filled from the files)
CASES = [
    ("missing corpus", lambda f, m: collect_args(f, m, corpus="en=/no/such/corpus.txt"),
     "/no/such/corpus.txt: no such file or folder; check the corpus path"),
    ("empty corpus", lambda f, m: collect_args(f, m, corpus=f"en={f['empty']}"),
     "corpus 'en' ({empty}) is empty; give it some text"),
    ("blank corpus", lambda f, m: collect_args(f, m, corpus=f"en={f['blank']}"),
     "corpus 'en' ({blank}) is empty; give it some text"),
    ("non-UTF-8 corpus", lambda f, m: collect_args(f, m, corpus=f"de={f['latin1']}"),
     "{latin1}: not UTF-8 text (byte 4); convert it, e.g. iconv -t UTF-8"),
    ("NAME=PATH syntax", lambda f, m: collect_args(f, m, corpus=f["good"]),
     "'{good}' is not NAME=PATH; write it like en=path/to/en.txt"),
    ("empty name", lambda f, m: collect_args(f, m, corpus=f"={f['good']}"),
     "'={good}' is not NAME=PATH; write it like en=path/to/en.txt"),
    ("duplicate name", lambda f, m: collect_args(f, m, "--corpus", f"en={f['good']}"),
     "'en' is given twice; give each name once"),
    ("unknown model folder", lambda f, m: collect_args(f, "/no/such/model"),
     "model folder /no/such/model does not exist; give a HF checkpoint folder, a hub name or 'default'"),
    ("seq-len 0", lambda f, m: collect_args(f, m, "--seq-len", "0"),
     "argument --seq-len: must be a positive whole number, got 0; see tl-culture collect --help"),
    ("seq-len 1", lambda f, m: collect_args(f, m, "--seq-len", "1"), "seq_len must be at least 2, got 1"),
    ("attention without native", lambda f, m: collect_args(f, m, "--backend", "hooks", "--attention", "sdpa"),
     "--attention sdpa needs the native backend; drop it or use --backend native"),
    ("batch-size text", lambda f, m: collect_args(f, m, "--batch-size", "eight"),
     "argument --batch-size: 'eight' is not a whole number; see tl-culture collect --help"),
    ("negative max-tokens", lambda f, m: collect_args(f, m, "--max-tokens", "-5"),
     "argument --max-tokens: must be a positive whole number, got -5; see tl-culture collect --help"),
    ("checkpoint-every 0", lambda f, m: collect_args(f, m, "--checkpoint-every", "0"),
     "argument --checkpoint-every: must be a positive whole number, got 0; see tl-culture collect --help"),
    ("unknown dtype", lambda f, m: collect_args(f, m, "--dtype", "float8"),
     "unknown dtype 'float8'; use one of float32, bfloat16, float16"),
    ("out is a folder", lambda f, m: ["collect", "--model", m, "--corpus", f"en={f['good']}", "--out", f["dir"]],
     "--out {dir} is a folder; give a file name like stats.safetensors"),
    ("missing --corpus", lambda f, m: ["collect", "--model", m, "--out", "x.safetensors"],
     "the following arguments are required: --corpus; see tl-culture collect --help"),
    ("top-rate above 1", lambda f, m: ["identify", f["stats"], "--out", "x.safetensors", "--top-rate", "1.5"],
     "argument --top-rate: must be in (0, 1), got 1.5; see tl-culture identify --help"),
    ("filter-rate 0", lambda f, m: ["identify", f["stats"], "--out", "x.safetensors", "--filter-rate", "0"],
     "argument --filter-rate: must be in (0, 1), got 0.0; see tl-culture identify --help"),
    ("corrupted stats", lambda f, m: ["identify", f["junk"], "--out", "x.safetensors"],
     "{junk}: not a readable tl-culture file (SafetensorError); it may be corrupted (delete it and compute it again) "
     "or of another format"),
    ("missing stats", lambda f, m: ["identify", "/no/such/stats.safetensors", "--out", "x.safetensors"],
     "/no/such/stats.safetensors: no such file; check the path"),
    ("neuron file as stats", lambda f, m: ["identify", f["neurons"], "--out", "x.safetensors"],
     "{neurons}: holds a 'NeuronSet' object, expected 'ActivationStats'; pass the right file"),
    ("foreign safetensors", lambda f, m: ["identify", f["foreign"], "--out", "x.safetensors"],
     "{foreign}: a safetensors file, but not one written by tl-culture"),
    ("tampered stats", lambda f, m: ["identify", f["tampered"], "--out", "x.safetensors"],
     "{tampered}: a neuron fired on more tokens than its group has; the statistics are corrupted, collect them again"),
    ("single group", lambda f, m: ["identify", f["one"], "--out", "x.safetensors"],
     "LAPE needs at least two groups to compare, got 1 (['en']); collect statistics of two or more corpora"),
    ("stats as neuron file", lambda f, m: ["neurons", f["stats"]],
     "{stats}: holds a 'ActivationStats' object, expected 'NeuronSet'; pass the right file"),
    ("reference file without groups", lambda f, m: ["neurons", f["ref"]],
     "{ref} is a reference file; name its groups with --groups en,zh,..."),
    ("neuron file does not fit the model", lambda f, m: [
        "evaluate", "--model", m, "--device", "cpu", "--neurons", f["misfit"], "--corpus", f"en={f['good']}",
        "--out", "nll.json", "--no-progress"],
     "neuron set is for 4 layers x 10 neurons, the model has 2 x 48; use one made for this model"),
    ("unknown command", lambda f, m: ["colect"],
     "argument COMMAND: invalid choice: 'colect' (choose from collect, identify, neurons, run, report); "
     "see tl-culture --help"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, files, tiny_hf_dir, capsys, monkeypatch, tmp_path):
    _, argv, message = case
    monkeypatch.chdir(tmp_path)
    args = argv(files, str(tiny_hf_dir))
    if args[0] == "colect":  # the subcommand list grows as commands are added; check the start only
        message = message.split(" (choose from")[0]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err  # one line, no traceback, no usage block
    assert lines[0].startswith("tl-culture: error: ")
    got = lines[0][len("tl-culture: error: "):]
    if args[0] == "colect":
        assert got.startswith(message)
    else:
        assert got == message.format(**files)
    assert not list(tmp_path.iterdir()), "a failing command left a file behind"


def test_debug_shows_the_traceback(files):
    with pytest.raises(TLCultureError, match="LAPE needs at least two groups"):
        main(["--debug", "identify", files["one"], "--out", "x.safetensors"])
    with pytest.raises(TLCultureError, match="LAPE needs at least two groups"):  # also after the subcommand
        main(["identify", files["one"], "--out", "x.safetensors", "--debug"])


def test_unexpected_errors_are_one_line_too(files, capsys, monkeypatch):
    def boom(*a, **k):
        raise KeyError("something\nmultiline")

    monkeypatch.setattr("tl_culture.counting.stats.ActivationStats.load", boom)
    assert main(["identify", files["stats"], "--out", "x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "tl-culture: error: unexpected KeyError: 'something\\nmultiline' (rerun with --debug for the traceback)\n"
    )


def test_help_lists_the_commands_in_pipeline_order(capsys):
    assert main(["--help"]) == 0
    names = ("collect", "identify", "neurons", "run", "evaluate", "steer", "report")
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert [w for w in listed if w in names] == list(names)
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("tl-culture ")


def test_out_of_memory_elsewhere(files, capsys, monkeypatch, tmp_path):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("tl_culture.counting.stats.ActivationStats.load", oom)
    assert main(["identify", files["stats"], "--out", str(tmp_path / "n.safetensors")]) == 2
    assert capsys.readouterr().err == "tl-culture: error: out of memory; use a smaller --batch-size (or --seq-len)\n"


def test_neuron_set_that_does_not_fit_the_model(tiny_hf_model):
    """The check every model-facing command runs (interventions, evaluation) before touching hooks."""
    from tl_culture import MLPHooks

    ns = NeuronSet(["a", "b"], torch.zeros(2, 4, 10, dtype=torch.bool))
    with pytest.raises(TLCultureError) as err:
        MLPHooks.from_model(tiny_hf_model).check_neurons(ns.n_layers, ns.d_mlp)
    assert str(err.value) == (
        "neuron set is for 4 layers x 10 neurons, the model has 2 x 48; use one made for this model"
    )
