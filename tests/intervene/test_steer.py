"""Steering: greedy/sampled continuations with and without an intervention, and the CLI commands."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_model

from tl_culture import NeuronSet, TLCultureError, ablate, generate, scale
from tl_culture.cli import main


@pytest.fixture(scope="module")
def gated():
    return tiny_model(gated=True)


@pytest.fixture(scope="module")
def neurons() -> NeuronSet:
    m = torch.zeros(1, 3, 32, dtype=torch.bool)
    m[0, 1:, :16] = True
    return NeuronSet(["fa"], m)


def greedy_by_hand(model, ids: torch.Tensor, n: int, hooks=()) -> list[int]:
    x, out = ids.clone(), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model.run_with_hooks(x, fwd_hooks=list(hooks))[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    return out


def test_greedy_matches_hand_loop(gated, neurons):
    prompt = torch.tensor([1, 5, 9, 2])
    edit = scale(neurons, "fa", 8.0)
    res = generate(gated, prompt, edit, max_new_tokens=6)
    assert res.baseline_tokens == greedy_by_hand(gated, prompt[None], 6)
    assert res.steered_tokens == greedy_by_hand(gated, prompt[None], 6, edit.fwd_hooks(gated))
    assert res.baseline == " ".join(map(str, res.baseline_tokens))  # no tokenizer: ids
    assert sum(len(hp.fwd_hooks) for hp in gated.hook_dict.values()) == 0


def test_sampling_is_deterministic_with_seed(gated, neurons):
    prompt = torch.tensor([3, 4])
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=20)
    a = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=7, **kw)
    b = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=7, **kw)
    c = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=8, **kw)
    assert a.baseline_tokens == b.baseline_tokens
    assert a.steered_tokens == a.baseline_tokens  # a no-op intervention with the same seed picks the same tokens
    assert c.baseline_tokens != a.baseline_tokens
    assert all(0 <= t < 64 for t in a.baseline_tokens)


def test_text_prompt_and_side_by_side(tiny_hf_model):
    m = torch.zeros(1, 2, 48, dtype=torch.bool)
    m[0, :, :24] = True
    ns = NeuronSet(["en"], m)
    res = generate(tiny_hf_model, "the cat", ablate(ns, "en"), max_new_tokens=5, stop_at_eos=False)
    assert len(res.baseline_tokens) == 5 and len(res.steered_tokens) == 5
    assert res.baseline == tiny_hf_model.tokenizer.decode(res.baseline_tokens, skip_special_tokens=True)
    text = res.side_by_side(80)
    assert text.splitlines()[0] == "prompt: the cat"
    assert "ablate(en)" in text and " | " in text
    n_prompt = len(tiny_hf_model.tokenizer("the cat", add_special_tokens=False)["input_ids"])
    assert res.meta["prompt_tokens"] == 1 + n_prompt


def test_generate_errors(gated, neurons):
    edit = ablate(neurons, "fa")
    with pytest.raises(TLCultureError, match="expected an Intervention"):
        generate(gated, torch.tensor([1]), "ablate")
    with pytest.raises(TLCultureError, match="max_new_tokens must be at least 1, got 0"):
        generate(gated, torch.tensor([1]), edit, max_new_tokens=0)
    with pytest.raises(TLCultureError, match="temperature must be >= 0"):
        generate(gated, torch.tensor([1]), edit, temperature=-1)
    with pytest.raises(TLCultureError, match="top_k must be at least 1"):
        generate(gated, torch.tensor([1]), edit, top_k=0)
    with pytest.raises(TLCultureError, match="this model has no tokenizer; give the prompt as a 1-D tensor"):
        generate(gated, "hello", edit)
    with pytest.raises(TLCultureError, match="the prompt has no tokens"):
        generate(gated, torch.tensor([], dtype=torch.long), edit)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, tiny_hf_dir):
    from tl_culture import ActivationStats

    d = tmp_path_factory.mktemp("cli")
    m = torch.zeros(2, 2, 48, dtype=torch.bool)
    m[0, 1, :8] = True
    m[1, 1, 8:20] = True
    NeuronSet(["en", "ru"], m).save(d / "neurons.safetensors")
    ActivationStats(["en", "ru"], torch.zeros(2, 2, 48, dtype=torch.int64), torch.tensor([2, 2]),
                    torch.ones(2, 2, 48, dtype=torch.float64)).save(d / "stats.safetensors")
    (d / "en.txt").write_text("the cat sat on the mat\nthe dog sat\n", encoding="utf-8")
    (d / "ru.txt").write_text("кошка спит\nсобака спит\n", encoding="utf-8")
    return d


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
