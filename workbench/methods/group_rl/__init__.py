from workbench.methods.group_rl.module import GroupRLModule

__all__ = ["GroupRLModule"]
