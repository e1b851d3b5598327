"""Puts the repository root on Hydra's config search path, so the sweep definitions in sweeps/ are the config
group ``sweeps``: ``python -m workbench.train -m +sweeps=grpo``."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class WorkbenchSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from workbench import ROOT

        if (ROOT / "sweeps").is_dir():
            search_path.append(provider="workbench-sweeps", path=f"file://{ROOT}")
