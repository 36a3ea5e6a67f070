"""The one exception type users see: its message says what is wrong and what to do, and the CLI prints it
without a traceback. Anything else escaping the loop is a bug in onpolicy, not in the user's input."""


class OnpolicyError(Exception):
    """A problem with the user's config, files or callables, or a failure they can act on."""


class ConfigError(OnpolicyError):
    """The config (a YAML file or a command-line override) does not validate."""
