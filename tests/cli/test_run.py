"""``tl-culture run``: the run folder, one-line config errors, and options generated from `ExperimentConfig`
(real defaults in ``--help``; command line over --config file over defaults)."""

import json
from dataclasses import MISSING, fields

import pytest
import torch

from tests.cli.conftest import help_text, option_help
from tl_culture import ActivationStats, NeuronSet
from tl_culture.cli import build_parser, main
from tl_culture.cli._options import flag_of
from tl_culture.cli.run import config_from_args
from tl_culture.experiment.config import ExperimentConfig


def test_run_writes_the_run_folder(tiny_hf_dir, corpus_files, tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        "--model",
        str(tiny_hf_dir),
        "--out",
        str(out),
        "--seq-len",
        "16",
        "--no-progress",
        "--top-rate",
        "0.1",
        "--pair",
        "english=en",
    ]
    for lang, p in corpus_files.items():
        args += ["--language", f"{lang}={p}"]
        args += ["--culture", f"{'english' if lang == 'en' else lang}={p}"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == {"english": "en", "de": "de", "ru": "ru"}
    assert summary["counted_with"] == {"backend": "native", "attention": "sdpa", "dtype": "float32"}
    for name in ("language", "culture", "compound", "pure", "generic"):
        assert NeuronSet.load(out / "neurons" / f"{name}.safetensors").meta["category"] == name
    cats = {
        n: NeuronSet.load(out / "neurons" / f"{n}.safetensors") for n in ("language", "culture", "compound", "pure")
    }
    assert torch.equal(cats["compound"].masks, cats["language"].masks & cats["culture"].masks)
    assert torch.equal(cats["pure"].masks, cats["culture"].masks & ~cats["language"].masks)
    # held-out documents (15 %) are not in the selection statistics
    stats = ActivationStats.load(out / "stats_language.safetensors")
    assert stats.meta["corpora"]["en"]["documents"] == 18 - round(0.15 * 18)


def test_failing_run_keeps_previous_output(tiny_hf_dir, corpus_files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    code = main(
        [
            "run",
            "--model",
            str(tiny_hf_dir),
            "--out",
            str(out),
            "--language",
            f"en={corpus_files['en']}",
            "--culture",
            f"fr={corpus_files['de']}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-culture: error:") and "--pair" in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "old result"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "config {path} does not exist; check the path"),
        ("bogus = 1\n", "unknown keys ['bogus']"),
        ("out = [unclosed\n", "is not valid toml"),
        ('seq_len = 64\n', "has no 'out'; give --out"),
        ('out = "o"\nseq_len = 0\n', "--seq-len must be at least 2, got 0"),
        ('out = "o"\nbackend = "fast"\n', "--backend must be one of auto, hooks, native, got 'fast'"),
        ('out = "o"\nbackend = "hooks"\nattention = "sdpa"\n', "--attention sdpa needs the native backend"),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code = main(["run", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("tl-culture: error:")
    assert message.format(path=path) in err


def test_run_cli_eval_options(tmp_path):
    a = build_parser().parse_args(["run", "--eval-tokens", "5", "--controls", "2", "--eval-mode", "all", "--no-eval",
                                   "--bootstrap", "0", "--eval-batch-size", "3"])
    c = config_from_args(a)
    got = (c.eval_tokens, c.control_seeds, c.eval_mode, c.evaluate, c.bootstrap, c.eval_batch_size)
    assert got == (5, 2, "all", False, 0, 3)
    d = config_from_args(build_parser().parse_args(["run"]))
    assert (d.eval_tokens, d.control_seeds, d.eval_mode, d.evaluate, d.bootstrap) == (128, 5, "matched", True, 1000)
    # a config file fills what the command line leaves out; the command line wins
    (tmp_path / "c.toml").write_text('out = "o"\neval_tokens = 64\ncontrol_seeds = 3\n[languages]\nen = "en.txt"\n'
                                     '[cultures]\nen = "en.txt"\n')
    (tmp_path / "en.txt").write_text("hello\n")
    e = config_from_args(build_parser().parse_args(["run", "--config", str(tmp_path / "c.toml"), "--controls", "5"]))
    assert (e.out, e.eval_tokens, e.control_seeds) == ("o", 64, 5)
    assert e.languages == {"en": str(tmp_path / "en.txt")}  # relative to the config file


RUN_FLAGS = [flag_of(f) for f in fields(ExperimentConfig)] + ["--config", "--debug"]


def test_help_shows_the_real_defaults(capsys):
    text = help_text(capsys, "run")
    assert "(default: 256)" in option_help(text, "--seq-len", RUN_FLAGS)
    assert "(default: 0.01)" in option_help(text, "--top-rate", RUN_FLAGS)
    assert "(default: 128)" in option_help(text, "--eval-tokens", RUN_FLAGS)
    assert "(default: 0.95)" in option_help(text, "--bar-ratio", RUN_FLAGS)
    assert "(default: 5)" in option_help(text, "--controls", RUN_FLAGS)
    assert "(default: runs/demo)" in option_help(text, "--out", RUN_FLAGS)
    assert "None" not in text  # no dead defaults
    for f in fields(ExperimentConfig):  # every option with a value shows the dataclass default
        if f.default not in (MISSING, None) and not isinstance(f.default, bool):
            assert f"(default: {f.default})" in option_help(text, flag_of(f), RUN_FLAGS), f.name


def test_every_field_is_an_option_with_its_old_flag():
    """The flags of `run` (some named unlike their field) parse into the ExperimentConfig fields."""
    argv = ["run", "--out", "o", "--model", "m", "--language", "en=a.txt", "--language", "de=b.txt",
            "--culture", "english=c.txt", "--pair", "english=en", "--seq-len", "32", "--batch-size", "2",
            "--max-tokens", "100", "--max-documents", "7", "--eval-fraction", "0.2", "--top-rate", "0.1",
            "--filter-rate", "0.9", "--bar-ratio", "0.8", "--seed", "3", "--device", "cpu", "--dtype", "bfloat16",
            "--backend", "hooks", "--attention", "eager", "--no-progress", "--no-eval", "--eval-tokens", "9",
            "--eval-batch-size", "5", "--controls", "0", "--bootstrap", "10", "--eval-mode", "all", "--stability",
            "--no-report"]
    c = config_from_args(build_parser().parse_args(argv))
    assert c == ExperimentConfig(
        out="o", model="m", languages={"en": "a.txt", "de": "b.txt"}, cultures={"english": "c.txt"},
        pairs={"english": "en"}, seq_len=32, batch_size=2, max_tokens=100, max_documents=7, eval_fraction=0.2,
        top_rate=0.1, filter_rate=0.9, activation_bar_ratio=0.8, seed=3, device="cpu", dtype="bfloat16",
        backend="hooks", attention="eager", progress=False, evaluate=False, eval_tokens=9, eval_batch_size=5,
        control_seeds=0, bootstrap=10, eval_mode="all", stability=True, report=False)
    assert config_from_args(build_parser().parse_args(["run"])) == ExperimentConfig()


def test_command_line_over_config_file_over_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('out = "from-file"\nseq_len = 64\ntop_rate = 0.05\nprogress = false\nstability = true\n',
                   encoding="utf-8")
    c = config_from_args(build_parser().parse_args(["run", "--config", str(cfg), "--seq-len", "32"]))
    assert c.seq_len == 32  # command line
    assert (c.out, c.top_rate, c.progress, c.stability) == ("from-file", 0.05, False, True)  # file
    assert (c.batch_size, c.eval_tokens, c.report) == (8, 128, True)  # ExperimentConfig defaults
    c = config_from_args(build_parser().parse_args(
        ["run", "--config", str(cfg), "--out", "o", "--no-report", "--bar-ratio", "0.9"]))
    assert (c.out, c.report, c.activation_bar_ratio, c.seq_len) == ("o", False, 0.9, 64)
    # without a file: the command line over the defaults
    c = config_from_args(build_parser().parse_args(["run", "--top-rate", "0.2"]))
    assert (c.top_rate, c.out, c.seq_len) == (0.2, "runs/demo", 256)


def test_bad_run_options_are_one_line(capsys):
    for argv, message in [
        (["--seq-len", "0"], "argument --seq-len: must be a positive whole number, got 0; see tl-culture run --help"),
        (["--top-rate", "2"], "argument --top-rate: must be in (0, 1), got 2.0; see tl-culture run --help"),
        (["--controls", "-1"], "argument --controls: must be 0 or more, got -1; see tl-culture run --help"),
        (["--language", "en"], "'en' is not NAME=PATH; write it like en=path/to/en.txt"),
        (["--seq-len", "1"], "--seq-len must be at least 2, got 1"),
        (["--backend", "hooks", "--attention", "sdpa"],
         "--attention sdpa needs the native backend; drop it or use --backend native"),
    ]:
        assert main(["run", *argv]) == 2
        assert capsys.readouterr().err == f"tl-culture: error: {message}\n"
