"""The report card of a run (``runs/<run_id>/report.md`` and ``report.html``), in three modules.

- ``card``: reads a run folder and assembles the whole card (verdict, summary, one section per
  stage, configuration, environment); ``build_report`` writes both files;
- ``stages``: what the card says about each stage (its title, its metrics as blocks, its figures'
  captions, the config sections it reads);
- ``blocks``: the blocks every part is made of, values as cell text, and the Markdown and HTML
  they print as (one list of blocks, so both files say the same thing).

``python -m looper_utils.report runs/<run_id>`` rebuilds a run's card.
"""
from .card import build_report, environment_info
from .stages import FIGURE_CAPTIONS, STAGE_TITLES

__all__ = ["build_report", "environment_info", "STAGE_TITLES", "FIGURE_CAPTIONS"]
