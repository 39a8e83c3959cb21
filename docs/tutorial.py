# %% [markdown]
# # tl-culture tutorial: language and culture neurons, end to end
#
# This notebook runs the whole method of "Isolating Culture Neurons in Multilingual LLMs"
# (Namazifard & Galke Poech, 2025) with LAPE (Tang et al., 2024) on the embedded default model
# (Gemma 3 270M) and the small demo corpus that ships with tl-culture, on a CPU, in a few minutes:
#
# 1. load the model and the corpora, keep part of every corpus as held-out text;
# 2. `collect` activation statistics and `identify` language and culture neurons (LAPE);
# 3. split the culture neurons into the paper's categories and plot where they sit;
# 4. ablate them and read the Δ NLL matrix against a random-neuron control;
# 5. look at the tokens they fire on, steer generation with them, save and reload everything.
#
# The token budgets are tiny so that it runs quickly. The numbers show how to use the API, not
# findings. For the real experiment use `tl-culture run` (README) with larger corpora.
#
# `docs/tutorial.py` is the source of this notebook; `python scripts/build_tutorial.py` rebuilds and
# re-executes it.

# %%
import tempfile
from pathlib import Path

import torch
from IPython.display import HTML, Image, display

import tl_culture as tc
from tl_culture import report

torch.manual_seed(0)
print("tl-culture", tc.__version__)

# %% [markdown]
# ## 1. Model and corpora
#
# `load_model("default")` converts the embedded quantised Gemma 3 270M once (cached in
# `~/.cache/tl_culture`) and returns a TransformerLens model. Any TransformerLens model works:
# a HF folder or hub name, or a `HookedTransformer` you already use.

# %%
model = tc.load_model("default")
print(f"{model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons")

# %% [markdown]
# The demo corpus has, for six languages, general text (for **language** neurons) and text about
# the culture of its speakers (for **culture** neurons). `Corpus.split` keeps a seeded share of the
# documents aside: Δ NLL is measured on text the neurons were not selected on (`delta_nll`
# refuses overlapping text).

# %%
langs, cults = tc.demo_corpora()
lang_sel, lang_held, cult_sel, cult_held = {}, {}, {}, {}
for g in langs:
    lang_sel[g], lang_held[g] = langs[g].split(0.2, seed=0)
    cult_sel[g], cult_held[g] = cults[g].split(0.2, seed=0)
for g in langs:
    print(f"{g}: language {len(lang_sel[g])} + {len(lang_held[g])} documents, "
          f"culture {len(cult_sel[g])} + {len(cult_held[g])} documents (selection + held-out)")

# %% [markdown]
# ## 2. Statistics and LAPE
#
# `collect` streams each group's text through the model and counts, per MLP neuron, how often it
# fires (`act_fn(gate) > 0`). `identify` keeps the neurons whose activation probability is
# concentrated on few groups (low entropy), 1 % of all neurons by default.

# %%
settings = dict(seq_len=128, batch_size=8, max_tokens=512, progress=False)  # tokens per group: tiny
lang_stats = tc.collect(model, lang_sel, **settings)
cult_stats = tc.collect(model, cult_sel, **settings)
language = tc.identify(lang_stats)
culture = tc.identify(cult_stats)
print(language.table())

# %% [markdown]
# ## 3. Categories and where they sit
#
# `culture_categories` pairs each culture with its language: **compound** neurons are both culture
# and language neurons, **pure** culture neurons are culture neurons only, and **generic** neurons
# are pure culture neurons of every culture.

# %%
cats = tc.culture_categories(language, culture)
for name, ns in cats.items():
    print(f"{name:9s}", ns.counts())

# %%
fig = report.plot_layer_distribution({"language": language, "culture": culture})
print(fig.caption)
display(Image(fig.png(dpi=90)))

# %% [markdown]
# ## 4. Ablation: Δ NLL with a control
#
# `delta_nll` ablates each group's neurons in turn and measures the change of the next-token loss
# on every held-out corpus, with bootstrap confidence intervals and a random-neuron control (the
# same number of random neurons per layer), scored on each group's own text (the diagonal;
# `control_cells="all"` scores it on every cell). A group's Δ means something where it clearly
# exceeds its control. Three cultures and 64 scored tokens per corpus keep this quick; leave out
# `groups` and pass every held-out corpus for the full matrix.

# %%
three = ["da", "fa", "zh"]
m = tc.delta_nll(model, {g: cult_held[g] for g in three}, cats["culture"], groups=three,
                 max_tokens=64, controls=1, bootstrap=200, seed=0, progress=False)
print(m.table())

# %%
heat = report.plot_delta_nll(m, title="culture neurons ablated (rows) on held-out culture text (columns)")
display(Image(heat.png(dpi=90)))

# %% [markdown]
# Interventions are plain TransformerLens hooks, so they compose with your own hooks,
# `run_with_cache` and SAELens (see `docs/interventions.md`):

# %%
edit = tc.ablate(cats["culture"], "fa")
fa = cats["culture"].mask("fa")  # bool[layer, neuron]
layer = int(fa.sum(1).argmax())  # the layer with the most Persian culture neurons
tokens = model.to_tokens(cult_held["fa"].documents[0])[:, :32]
with edit.applied(model):  # removes exactly its own hooks on exit
    logits, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.mlp.hook_post")
print(edit)
post = cache[f"blocks.{layer}.mlp.hook_post"]  # [batch, pos, d_mlp]
print(f"largest |activation| of the ablated layer-{layer} neurons:", float(post[..., fa[layer]].abs().max()))

# %% [markdown]
# ## 5. Tokens, steering, saving
#
# Each token of a held-out Persian culture text, colored by the mean activation of the Persian
# culture neurons, then the values of every culture group side by side (pick the group to color by).
# These are circuitsvis views: `display(view)` shows one; `report.views_html` shows several with one
# copy of the circuitsvis library. They render in Jupyter, not in GitHub's static preview.

# %%
text = cult_held["fa"].documents[0]
one = report.colored_tokens(model, text, cats["culture"], "fa", max_tokens=48)
multi = report.colored_tokens_multi(model, text, cats["culture"], max_tokens=48)
display(HTML(report.views_html([("Persian culture neurons", one), ("every culture group", multi)])))
acts = one.data  # the numbers behind the view: TokenActivations
top = acts.values[:, 0].topk(5).indices.tolist()
print("tokens where the Persian culture neurons fire most:", [acts.tokens[i] for i in top])

# %% [markdown]
# Steering: the same greedy continuation without and with the Persian culture neurons scaled up.

# %%
res = tc.generate(model, "My grandmother always said", tc.scale(culture, "fa", 4.0), max_new_tokens=16, seed=0)
print(res.side_by_side())

# %% [markdown]
# Statistics, neuron sets and Δ NLL matrices save to small files and load back unchanged.

# %%
out = Path(tempfile.mkdtemp())
cult_stats.save(out / "stats_culture.safetensors")
cats["culture"].save(out / "culture.safetensors")
m.save(out / "nll_culture.json")

stats2 = tc.ActivationStats.load(out / "stats_culture.safetensors")
culture2 = tc.NeuronSet.load(out / "culture.safetensors")
m2 = tc.NLLMatrix.load(out / "nll_culture.json")
assert torch.equal(stats2.counts, cult_stats.counts)
assert culture2.groups == cats["culture"].groups and torch.equal(culture2.masks, cats["culture"].masks)
assert torch.allclose(torch.as_tensor(m2.delta), torch.as_tensor(m.delta), equal_nan=True)
print(sorted(p.name for p in out.iterdir()))

# %% [markdown]
# ## Next
#
# - `tl-culture run --out runs/demo` runs all of this (with all categories and more text) and
#   writes an offline HTML report; `examples/culture_neurons.toml` is the paper's setting.
# - `docs/method.md` states the method and its formulas, `docs/interventions.md` the edits,
#   Δ NLL, steering and the SAELens recipe, `docs/scale.md` multi-GPU collection.
