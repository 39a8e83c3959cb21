"""See the neurons: circuitsvis token views, matplotlib figures, offline HTML.

Nothing here is imported by ``import tl_culture``; circuitsvis and matplotlib are imported only
when a view or a figure is made (``pip install 'tl-culture[viz]'``).
"""

from tl_culture.viz.figures import (
    Figure,
    diagonal_mask,
    plot_category_counts,
    plot_delta_nll,
    plot_layer_distribution,
    plot_overlap,
)
from tl_culture.viz.html import external_references, save_views, views_html
from tl_culture.viz.tokens import (
    TokenActivations,
    colored_tokens,
    colored_tokens_multi,
    neuron_activations,
    token_activations,
    topk_tokens,
)

__all__ = [
    "Figure",
    "TokenActivations",
    "colored_tokens",
    "colored_tokens_multi",
    "diagonal_mask",
    "external_references",
    "neuron_activations",
    "plot_category_counts",
    "plot_delta_nll",
    "plot_layer_distribution",
    "plot_overlap",
    "save_views",
    "token_activations",
    "topk_tokens",
    "views_html",
]
