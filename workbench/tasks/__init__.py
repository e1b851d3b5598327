"""Tasks are built from ``conf/task/*.yaml`` through their ``_target_``."""

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from workbench.errors import ConfigError
from workbench.tasks.base import Task


def build_task(task_cfg: DictConfig) -> Task:
    try:
        return instantiate(task_cfg, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise


__all__ = ["Task", "build_task"]
