"""Exit statuses of every crack-* program, in one table (sysexits.h where one fits).

A systemd unit's ``RestartPreventExitStatus`` and a shell script tell failures apart by these, so
each code means the same thing in crack-edge, crack-viewer and crack-train.  docs/architecture.md
shows the table; change both together.
"""
from __future__ import annotations

OK = 0
FAILURE = 1             # a check found problems (e.g. ``verify`` found damaged records)
USAGE = 2               # argparse: a flag is wrong
DATAERR = 65            # an input file is malformed (a damaged recording, a bad dataset file)
NOINPUT = 66            # an input file or folder does not exist
UNAVAILABLE = 69        # an endpoint is taken, a runtime failed at run time: worth a restart
SOFTWARE = 70           # an internal error (a pipeline thread died): worth a restart
NO_DISPLAY = 71         # a window was asked for but no display can be opened
CANTCREAT = 73          # an output (recording folder, report folder) cannot be written
IOERR = 74              # writing failed part-way (disk full)
REFUSED = 77            # the peer refused us (CurveZMQ handshake: key not authorised, wrong server key)
CONFIG = 78             # bad config, key, card or model: restarting will not help
INTERRUPTED = 130       # Ctrl-C or SIGTERM during a command that stops at a safe point

TABLE = {
    OK: "success",
    FAILURE: "a check found problems",
    USAGE: "bad command-line usage",
    DATAERR: "an input is malformed",
    NOINPUT: "an input does not exist",
    UNAVAILABLE: "a service or runtime is unavailable (restart may help)",
    SOFTWARE: "internal error (restart may help)",
    NO_DISPLAY: "no display for a window",
    CANTCREAT: "an output cannot be created",
    IOERR: "writing an output failed",
    REFUSED: "refused by the peer (CurveZMQ key not authorised, wrong server key)",
    CONFIG: "bad configuration, key, card or model (restart will not help)",
    INTERRUPTED: "interrupted (Ctrl-C / SIGTERM)",
}
