"""``tl-culture identify``: LAPE options with the defaults of `identify`, atomic output."""

from __future__ import annotations

import torch

from tests.cli.conftest import help_text, option_help
from tl_culture import NeuronSet
from tl_culture.cli import build_parser, main
from tl_culture.selection.lape import ACTIVATION_BAR_RATIO, FILTER_RATE, TOP_RATE


def test_failing_identify_leaves_the_existing_output(files, capsys, tmp_path):
    out = tmp_path / "neurons.safetensors"
    NeuronSet(["x", "y"], torch.ones(2, 1, 3, dtype=torch.bool)).save(out)
    before = out.read_bytes()
    assert main(["identify", files["one"], "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["neurons.safetensors"]


def test_lape_options_default_to_the_lape_constants(capsys):
    args = build_parser().parse_args(["identify", "s.safetensors", "--out", "n.safetensors"])
    assert (args.top_rate, args.filter_rate, args.activation_bar_ratio) == (TOP_RATE, FILTER_RATE, ACTIVATION_BAR_RATIO)
    args = build_parser().parse_args(["identify", "s", "--out", "n", "--bar-ratio", "0.9", "--top-rate", "0.1"])
    assert (args.top_rate, args.filter_rate, args.activation_bar_ratio) == (0.1, FILTER_RATE, 0.9)
    text = help_text(capsys, "identify")
    flags = ["--top-rate", "--filter-rate", "--bar-ratio", "--debug"]
    for flag, value in zip(flags, (TOP_RATE, FILTER_RATE, ACTIVATION_BAR_RATIO), strict=False):
        assert f"(default: {value})" in option_help(text, flag, flags)
