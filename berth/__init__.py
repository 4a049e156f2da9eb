"""berth: a pre-fork WSGI HTTP server built for containers."""

__version__ = "0.1.0"
SERVER_SOFTWARE = f"berth/{__version__}"
