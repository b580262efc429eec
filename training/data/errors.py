"""The one error every data source raises: bad input data, with a one-line message `SOURCE: rule`."""


class DataError(ValueError):
    """Bad input data: the message is one line, `SOURCE: rule`; the CLI prints it as is."""
