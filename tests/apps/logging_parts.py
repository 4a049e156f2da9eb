"""Logging classes that tests name in their logging configurations (as users name theirs)."""

import logging
import threading


class AtomsFilter(logging.Filter):
    """Copies what Gunicorn's access records carry onto the record, for a JSON formatter to
    show: the format (`msg`) and two atoms from `args`."""

    def filter(self, record):
        if isinstance(record.args, dict):
            record.format_given = record.msg
            record.atom_status = record.args["s"]
            record.atom_agent = record.args["{user-agent}i"]
            record.atom_missing = record.args["{x-not-there}i"]
        return True


class StuckHandler(logging.Handler):
    """A handler whose write never returns (a syslog or disk that hangs)."""

    gate = threading.Event()

    def emit(self, record):
        self.gate.wait()
