"""Showing a run: circuitsvis token views, matplotlib figures and the offline HTML report of a run folder.

circuitsvis and matplotlib are imported only when a view or a figure is made
(``pip install 'tl-culture[viz]'``). ``run_experiment(cfg, reporter=report_stage)`` writes the
report as the last stage of a run.
"""

from tl_culture.report.explorer import explorer_data, save_explorer, write_explorer
from tl_culture.report.figures import (
    Figure,
    diagonal_mask,
    plot_category_counts,
    plot_delta_nll,
    plot_layer_distribution,
    plot_overlap,
)
from tl_culture.report.html import external_references, save_views, views_html
from tl_culture.report.tokens import (
    TokenActivations,
    colored_tokens,
    colored_tokens_multi,
    neuron_activations,
    token_activations,
    topk_tokens,
)
from tl_culture.report.write import load_run, report_stage, write_report

__all__ = [
    "Figure",
    "TokenActivations",
    "colored_tokens",
    "colored_tokens_multi",
    "diagonal_mask",
    "explorer_data",
    "external_references",
    "load_run",
    "neuron_activations",
    "plot_category_counts",
    "plot_delta_nll",
    "plot_layer_distribution",
    "plot_overlap",
    "report_stage",
    "save_explorer",
    "save_views",
    "token_activations",
    "topk_tokens",
    "views_html",
    "write_explorer",
    "write_report",
]
