"""User-facing errors: one paragraph that names the file or key and says what to do."""


class TppError(Exception):
    """An error caused by user input (config, data, paths). The CLI prints it without a traceback."""


class ConfigError(TppError):
    """A config key is unknown, has the wrong type, or holds an invalid value."""


class UnsupportedRequest(TppError):
    """Valid input the chosen method cannot answer (a learned in-context model for more classes than it handles,
    or none loaded): the service answers 400, naming the method to use instead."""
