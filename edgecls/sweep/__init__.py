"""The benchmark table across models, backends and precisions, on Ray (`edgecls sweep`).

    plan.py     the cells and the content hashes of their results
    work.py     what a cell's tasks do (export + parity, timing) on whichever node runs them
    runner.py   the Ray side: submit, resume from the cache, collect
    cache.py    the cache folder
    table.py    the table (columns once) and its Markdown / CSV / JSON / terminal forms
    html.py     the HTML page with its plots

Ray (`pip install 'edgecls[sweep]'`, >= 2.59) is imported only when a sweep runs. What a
local sweep locks down (loopback, token, working folder) and what joining a cluster means
you trust: runner.py's docstring.
"""
from __future__ import annotations

from edgecls.sweep.runner import sweep

__all__ = ["sweep"]
