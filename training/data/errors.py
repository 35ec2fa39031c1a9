"""The one error type of the data layer."""


class DataError(ValueError):
    """A data source cannot be used as given; the message names the file or field and the fix."""
