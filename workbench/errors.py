"""One exception type for input a user can fix; its message is one line naming the field and the fix."""


class ConfigError(ValueError):
    """Bad configuration or input data, raised before any training starts."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem} -> {fix}")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""
