"""`tl-culture steer`: side-by-side continuations from the command line, and its argument errors."""

from __future__ import annotations

from tl_culture.cli import main


def test_cli_steer(cli_files, tiny_hf_dir, capsys):
    d = cli_files
    base = ["steer", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"), "--group", "ru",
            "--prompt", "the cat", "--max-new-tokens", "3", "--device", "cpu"]
    assert main(base + ["--set-mean", str(d / "stats.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "prompt: the cat" in out and "set(ru, mean)" in out
    assert main(base + ["--scale", "3"]) == 0
    assert "scale(ru, 3)" in capsys.readouterr().out


def test_cli_steer_errors(cli_files, tiny_hf_dir, capsys):
    d = cli_files
    base = ["steer", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"), "--prompt", "x"]
    assert main(base + ["--group", "ru"]) == 2  # needs one of --scale/--set-mean/--set/--ablate
    assert "one of the arguments --scale --set-mean --set --ablate is required" in capsys.readouterr().err
    assert main(base + ["--group", "xx", "--ablate"]) == 2
    assert "unknown group 'xx'; this neuron set has en, ru" in capsys.readouterr().err


def test_options_default_to_generate(capsys):
    from tests.cli.conftest import help_text, option_help
    from tl_culture.cli import build_parser
    from tl_culture.cli._options import signature_defaults
    from tl_culture.intervene.steer import generate

    d = signature_defaults(generate)
    args = build_parser().parse_args(["steer", "--neurons", "n", "--group", "g", "--prompt", "p", "--ablate"])
    assert (args.max_new_tokens, args.seed, args.temperature, args.top_k, args.width, args.model) == (
        d["max_new_tokens"], d["seed"], d["temperature"], d["top_k"], 100, "default")
    text = help_text(capsys, "steer")
    flags = ["--max-new-tokens", "--seed", "--temperature", "--top-k", "--width", "--debug"]
    assert f"(default: {d['max_new_tokens']})" in option_help(text, "--max-new-tokens", flags)
    assert f"(default: {d['top_k']})" in option_help(text, "--top-k", flags)
    assert "(default: 100)" in option_help(text, "--width", flags)


def test_cli_steer_measures_with_a_prompt_file(cli_files, tiny_hf_dir, tmp_path, capsys):
    import json

    d = cli_files
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\nder Hund\n\nкошка\n", encoding="utf-8")
    out = tmp_path / "steer.json"
    argv = ["steer", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"), "--group", "ru",
            "--set-mean", str(d / "stats.safetensors"), "--prompts", str(prompts), "--target-language", "ru",
            "--max-new-tokens", "4", "--temperature", "0.7", "--controls", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "target language ru, 3 prompts" in text and "steered − control" in text
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["target_language"] == "ru" and res["n_prompts"] == 3
    assert set(res["modes"]) == {"greedy", "sampled"} and len(res["outputs"]) == 3 * 4 * 2
    assert all(k in res for k in ("baseline_rate", "steered_rate", "control_rate", "control_ci"))
    assert res["meta"]["decoding"]["max_new_tokens"] == 4 and res["meta"]["identifier"]["name"] == "py3langid"


def test_cli_steer_prompt_file_errors(cli_files, tiny_hf_dir, tmp_path, capsys):
    d = cli_files
    base = ["steer", "--model", str(tiny_hf_dir), "--neurons", str(d / "neurons.safetensors"), "--group", "ru",
            "--ablate"]
    assert main(base + ["--prompts", str(tmp_path / "p.txt")]) == 2
    assert "--target-language" in capsys.readouterr().err
    assert main(base + ["--prompts", str(tmp_path / "p.txt"), "--target-language", "ru"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base) == 2  # one of --prompt / --prompts
    assert "one of the arguments --prompt --prompts is required" in capsys.readouterr().err
