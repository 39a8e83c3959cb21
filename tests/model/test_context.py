"""A model's context, and every stage that packs rows refusing rows longer than it (one line, before work).

The tiny GPT-2 checkpoint has 256 learned positions (a hard limit: a longer row fails inside the
model); the tiny Llama has ``max_position_embeddings = 256`` with rotary positions (a longer row
runs, on positions it was never trained on, so it is refused unless allowed).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_hf_checkpoint
from tl_culture import NeuronSet, TLCultureError, collect, delta_nll, load_model
from tl_culture.cli import main
from tl_culture.model.context import Context, check_seq_len, context_of_config, fit_seq_len, model_context

TEXT = {"en": ["the cat sat on the mat " * 40] * 3}


def error_lines(capsys) -> list[str]:
    """What the command wrote to stderr besides HF's weight-loading bar: its error, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if not line.startswith("Loading weights")]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("gpt2"), "gpt2")
    return path, load_model(str(path), device="cpu")


def test_context_of_hf_configs():
    from transformers import GPT2Config, LlamaConfig, OPTConfig, PretrainedConfig

    assert context_of_config(GPT2Config(n_positions=512)) == Context(512, 512, "n_positions in its HF config")
    llama = context_of_config(LlamaConfig(max_position_embeddings=512))
    assert (llama.positions, llama.trained, llama.limit) == (None, 512, 512)
    opt = context_of_config(OPTConfig(max_position_embeddings=300))
    assert (opt.positions, opt.trained) == (300, 300) and "learned positions" in opt.source
    assert context_of_config(PretrainedConfig()).limit is None


def test_model_context_of_bridges_and_tl_native_models(tiny_gpt2, tiny_hf_model, gated_model):
    assert model_context(tiny_gpt2[1]).positions == 256
    llama = model_context(tiny_hf_model)
    assert (llama.positions, llama.trained) == (None, 256)
    native = model_context(gated_model)  # no HF config: the TransformerLens cfg.n_ctx
    assert (native.positions, native.trained) == (128, 128) and "cfg.n_ctx" in native.source


def test_the_rule_and_its_messages():
    hard, soft = Context(64, 64, "n_positions"), Context(None, 64, "max_position_embeddings")
    check_seq_len(hard, 64)
    with pytest.raises(TLCultureError, match=r"^rows of 65 tokens are longer than m's context of 64 positions "
                                             r"\(n_positions\); use seq_len 64 or less \(--seq-len 64\)$"):
        check_seq_len(hard, 65, name="m")
    with pytest.raises(TLCultureError, match="context of 64 positions"):
        check_seq_len(hard, 65, allow_long_context=True)  # a hard limit is never lifted
    with pytest.raises(TLCultureError, match=r"trained on \(max_position_embeddings\).*--allow-long-context"):
        check_seq_len(soft, 65)
    check_seq_len(soft, 65, allow_long_context=True)
    assert fit_seq_len(soft, 512) == 64 and fit_seq_len(Context(None, None), 512) == 512


def test_collect_refuses_rows_past_learned_positions(tiny_gpt2):
    with pytest.raises(TLCultureError, match="context of 256 positions.*--seq-len 256"):
        collect(tiny_gpt2[1], TEXT, seq_len=300, progress=False)
    assert collect(tiny_gpt2[1], TEXT, seq_len=256, progress=False).tokens.sum() > 0


def test_rope_rows_past_training_need_allow_long_context(tiny_hf_model):
    with pytest.raises(TLCultureError, match="256 positions .* was trained on"):
        collect(tiny_hf_model, TEXT, seq_len=300, progress=False)
    stats = collect(tiny_hf_model, TEXT, seq_len=300, progress=False, allow_long_context=True)
    assert stats.meta["beyond_trained_positions"] is True
    assert "beyond_trained_positions" not in collect(tiny_hf_model, TEXT, seq_len=64, progress=False).meta


def test_scoring_and_examples_follow_the_rule(tiny_hf_model):
    from tl_culture import top_examples

    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 1, :4] = True
    ns = NeuronSet(["en"], masks)
    with pytest.raises(TLCultureError, match="trained on"):
        delta_nll(tiny_hf_model, TEXT, ns, seq_len=300, controls=0, bootstrap=0, progress=False, allow_overlap=True)
    m = delta_nll(tiny_hf_model, TEXT, ns, seq_len=300, controls=0, bootstrap=0, progress=False, allow_overlap=True,
                  allow_long_context=True)
    assert m.meta["beyond_trained_positions"] is True
    ex = top_examples(tiny_hf_model, TEXT, ns, k=2, progress=False)  # default 512 fitted to the context
    assert ex.meta["seq_len"] == 256
    with pytest.raises(TLCultureError, match="trained on"):
        top_examples(tiny_hf_model, TEXT, ns, k=2, seq_len=300, progress=False)


def test_decoding_refuses_prompts_that_outgrow_the_context(tiny_gpt2):
    from tl_culture.intervene.decode import decode

    model = tiny_gpt2[1]
    prompt = torch.ones(250, dtype=torch.long)
    with pytest.raises(TLCultureError, match="a prompt and its new tokens take 260 tokens.*fewer new tokens"):
        decode(model, [prompt], None, max_new_tokens=10)
    assert len(decode(model, [prompt], None, max_new_tokens=6)[0]) == 6


def test_cli_refuses_with_one_line_and_writes_nothing(tiny_gpt2, tmp_path, capsys):
    path, _ = tiny_gpt2
    corpus = tmp_path / "en.txt"
    corpus.write_text("the cat sat on the mat\n" * 50, encoding="utf-8")
    out = tmp_path / "stats.safetensors"
    rc = main(["collect", "--model", str(path), "--corpus", f"en={corpus}", "--seq-len", "300", "--out", str(out),
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "context of 256 positions" in err and "--seq-len 256" in err
    assert not out.exists()
    run_out = tmp_path / "run"
    rc = main(["run", "--model", str(path), "--language", f"en={corpus}", "--culture", f"en={corpus}",
               "--seq-len", "300", "--out", str(run_out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--seq-len 256" in err and not run_out.exists()
    rc = main(["run", "--model", str(path), "--language", f"en={corpus}", "--culture", f"en={corpus}",
               "--seq-len", "300", "--out", str(run_out), "--dry-run"])  # the config alone, no weights
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "context of 256 positions" in err and not run_out.exists()
    assert main(["run", "--model", str(path), "--language", f"en={corpus}", "--culture", f"en={corpus}",
                 "--seq-len", "128", "--out", str(run_out), "--dry-run"]) == 0
    assert "context    256 positions at most, 256 positions trained (n_positions" in capsys.readouterr().out


def test_token_views_and_the_other_commands_refuse_too(tiny_gpt2, tmp_path, capsys):
    from tl_culture.report.tokens import neuron_activations

    path, model = tiny_gpt2
    with pytest.raises(TLCultureError, match="a token view of 300 tokens .* keep at most 256 tokens"):
        neuron_activations(model, torch.ones(300, dtype=torch.long), 0, 0, max_tokens=None)
    corpus = tmp_path / "en.txt"
    corpus.write_text("the cat sat on the mat\n" * 50, encoding="utf-8")
    mask = torch.zeros(1, 2, 48, dtype=torch.bool)
    mask[0, 1, :4] = True
    NeuronSet(["en"], mask).save(tmp_path / "n.safetensors")
    out = tmp_path / "nll.json"
    rc = main(["evaluate", "--model", str(path), "--neurons", str(tmp_path / "n.safetensors"), "--corpus",
               f"en={corpus}", "--seq-len", "300", "--out", str(out), "--allow-overlap", "--no-progress"])
    err = error_lines(capsys)
    assert rc == 2 and len(err) == 1 and "--seq-len 256" in err[0] and not out.exists()
    rc = main(["steer", "--model", str(path), "--neurons", str(tmp_path / "n.safetensors"), "--group", "en",
               "--ablate", "--prompt", "the cat " * 100, "--max-new-tokens", "100"])
    err = error_lines(capsys)
    assert rc == 2 and len(err) == 1 and "context of 256 positions" in err[0]


def test_defaults_the_user_did_not_set_fit_the_context(gated_model):
    """On a 128-position model: collect's 512, delta_nll's and split_half_stability's 256 become 128."""
    from tl_culture.selection.stability import split_half_stability

    text = {"en": ["the cat sat on the mat " * 30] * 4, "de": ["der Hund schläft " * 30] * 4}
    rows = {g: torch.randint(1, 64, (3, 200), generator=torch.Generator().manual_seed(0)) for g in text}
    assert collect(gated_model, rows, progress=False).meta["seq_len"] == 128
    mask = torch.zeros(2, 3, 32, dtype=torch.bool)
    mask[:, 1, :4] = True
    m = delta_nll(gated_model, rows, NeuronSet(["en", "de"], mask), controls=0, bootstrap=0, progress=False,
                  allow_overlap=True, max_tokens=None)
    assert m.meta["seq_len"] == 128
    with pytest.raises(TLCultureError, match="context of 128 positions"):
        collect(gated_model, rows, seq_len=129, progress=False)  # a value the user set is checked, not fitted
    assert set(split_half_stability(gated_model, rows, progress=False)) == {"en", "de"}
