"""One exception type for input a user can fix; its message is one line naming the field and the fix."""


class ConfigError(ValueError):
    """Bad configuration or input data, raised before any training starts."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem} -> {fix}")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def require_whole(m, key: str, minimum: int, fix: str) -> int:
    """``m[key]`` as a whole number >= ``minimum`` (bools refused), or a one-line ConfigError on ``method.<key>``."""
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"method.{key}", f"must be a whole number >= {minimum}, got {value!r}", fix)
    return value
