"""User-facing errors: one paragraph that names the file or key and says what to do."""


class TppError(Exception):
    """An error caused by user input (config, data, paths). The CLI prints it without a traceback."""


class TppProblems(TppError):
    """Several independent problems found together: ``problems`` lists them, the message shows them all."""

    def __init__(self, problems: list[str], what: str = "problems"):
        self.problems = list(problems)
        super().__init__(self.problems[0] if len(self.problems) == 1 else
                         f"{len(self.problems)} {what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ConfigError(TppError):
    """A config key is unknown, has the wrong type, or holds an invalid value."""


class UnsupportedRequest(TppError):
    """Valid input the chosen method cannot answer (a learned in-context model for more classes than it handles,
    or none loaded): the service answers 400, naming the method to use instead."""
