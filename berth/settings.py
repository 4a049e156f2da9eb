"""Every setting, declared once.

A `Setting` names the attribute (Gunicorn's name, which config files use), its command-line
flags, its converter (`berth/converters.py`: it raises `ValueError` naming what is accepted),
its default, its help, its section and what berth does with it (`status`, `note`). The command
line and `--help`, the `BERTH_<NAME>` environment variables, config files (`configfile.py`),
`--print-config`, `berth doctor` and docs/settings.md (`settingsdoc.py`) all come from
`SETTINGS`; adding a setting is one entry here. Reading and layering the sources is
`berth/config.py`'s job.

Every Gunicorn setting has an entry, so that a Gunicorn command line or config file runs
unchanged: implemented; accepted because berth makes it unnecessary (an info line when set);
or refused, when ignoring it would change security or meaning (TLS, `-k gevent`, `--user`):
then one line and exit 2.

Names and defaults follow Gunicorn where Gunicorn has the setting. Where berth's default differs
on purpose (auto-sized workers and threads, access log to stdout, a 75 s keep-alive, an 8 s
graceful timeout) the note says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from berth.converters import (
    GUNICORN_LOGGER,
    address_list,
    anything,
    asgi_lifespan,
    asgi_loop,
    boolean,
    cert_reqs,
    env_pair,
    header_map,
    hook,
    is_current_group,
    is_current_user,
    is_default_logger,
    is_falsy,
    is_no_control_socket,
    is_off,
    listen_address,
    log_format,
    log_level,
    log_overflow,
    name_list,
    non_negative_float,
    non_negative_int,
    octal_mask,
    optional_text,
    positive_int,
    positive_seconds,
    proxy_protocol,
    refuse_if_on,
    refuse_unless,
    reload_engine,
    scheme_headers,
    size_bytes,
    statsd_address,
    syslog_address,
    syslog_facility,
    text,
    threads_or_auto,
    worker_class,
    worker_count_or_auto,
)

# --- the declaration --------------------------------------------------------------------------

# What berth does with a setting (the status column of docs/settings.md):
IMPLEMENTED = "implemented"
BERTH_ONLY = "berth only"  # berth's own setting; Gunicorn has no such setting
NOT_NEEDED = "not needed"  # accepted; berth makes it unnecessary (an info line when set)
REFUSED = "refused"  # accepted only at a value that changes nothing; otherwise exit 2

STATUS_TEXT = {
    IMPLEMENTED: "implemented",
    BERTH_ONLY: "berth only",
    NOT_NEEDED: "accepted, not needed",
    REFUSED: "refused (exit 2)",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: where it can be given, how its value is checked, what berth does with it.

    `name` is Gunicorn's name where Gunicorn has the setting (config files use it), `flags` the
    command-line flags (none: config file only), `convert` turns a value from any source into
    the effective value or raises ValueError naming what is accepted (`Refused` for a value
    berth will not run with). `env` says whether `BERTH_<NAME>` may set it. `status` and `note`
    say what berth does with it; `default_text` is how the docs show a computed default.
    """

    name: str
    flags: tuple[str, ...]
    convert: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    action: str | None = None  # "append", "store_true", "store_false", "optional" (nargs=?)
    section: str = "Server Mechanics"
    status: str = IMPLEMENTED
    note: str = ""
    env: bool = True
    const: Any = None  # the value of a bare "optional" flag
    default_text: str = ""

    @property
    def env_var(self) -> str | None:
        return f"BERTH_{self.name.upper()}" if self.env else None

    @property
    def flag(self) -> str:
        """The flag a message names: the first long one, else the first, else the name."""
        for flag in self.flags:
            if flag.startswith("--"):
                return flag
        return self.flags[0] if self.flags else self.name

    @property
    def gunicorn(self) -> bool:
        return self.status != BERTH_ONLY

    @property
    def is_hook(self) -> bool:
        return self.section == "Server Hooks"


S = Setting

_LOGCONFIG = ("The handlers it installs run on a thread of their own behind a bounded queue "
              "(--log-overflow applies), never on the request path; access records are made "
              "only when it names gunicorn.access or berth.access (otherwise berth's own access "
              "log writes the lines).")
_CONTROL = ("berth has no control socket (gunicornc): control it with signals (HUP reload, "
            "TERM stop, TTIN/TTOU workers, USR1 reopen logs)")

# The table. Entries of the same shape (the HTTP/2, ASGI and dirty-arbiter settings, say) are
# declarations, not repeated code: each is one setting's own name, flags, default and note.
SETTINGS: tuple[Setting, ...] = (
    # -- config file ------------------------------------------------------------------------
    S("config", ("-c", "--config"), text, None,
      "Configuration file: a Python file of Gunicorn-style settings and hooks, or "
      "python:MODULE. Without it, ./berth.conf.py or else ./gunicorn.conf.py is loaded when "
      "present.", "CONFIG", section="Config File",
      default_text="./berth.conf.py or ./gunicorn.conf.py, if present"),
    S("wsgi_app", (), text, None,
      "The app as MODULE:NAME, when the command line names none (config file or env).",
      section="Config File"),
    # -- sockets ----------------------------------------------------------------------------
    S("bind", ("-b", "--bind"), text, None,
      "Address to listen on, repeatable: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N "
      "(tcp://HOST:PORT and unix://PATH too, read as Gunicorn reads them); an address given "
      "twice is listened on once (Gunicorn exits: \"Connection in use\"). [::]:PORT takes "
      "IPv4 clients too where the system's default allows it (Linux: "
      "net.ipv6.bindv6only=0), as with Gunicorn, unless an IPv4 address on the same port "
      "is bound beside it (then it is IPv6 only; Gunicorn exits). Under systemd socket "
      "activation ($LISTEN_FDS and $LISTEN_PID naming berth) the sockets systemd passes are "
      "served instead, and READY=1 goes to $NOTIFY_SOCKET once they listen, as Gunicorn does. "
      "Default: "
      "0.0.0.0:$PORT when $PORT is set, else 0.0.0.0:8000 inside a container and "
      "127.0.0.1:8000 outside one.", "ADDRESS", "append", section="Server Socket",
      note="Gunicorn's default is 127.0.0.1:8000 everywhere, unreachable from outside a "
           "container.",
      default_text="0.0.0.0:$PORT, else 0.0.0.0:8000 in a container, 127.0.0.1:8000 outside"),
    S("admin_bind", ("--admin-bind",), listen_address, None,
      "Address of the admin listener, served by the master (never queued behind the app, so "
      "it answers while every worker is busy or hung): /livez, /readyz, /metrics (Prometheus "
      "text, from the scoreboard) and /status (JSON). HOST:PORT, [IPv6]:PORT or unix:PATH. "
      "Off unless set. Keep it off the public network: it tells who runs what.",
      "ADDRESS", section="Server Socket", status=BERTH_ONLY, default_text="off"),
    S("backlog", ("--backlog",), positive_int, 2048,
      "Maximum number of pending connections in the kernel queue.", "INT",
      section="Server Socket"),
    # -- workers ----------------------------------------------------------------------------
    S("workers", ("-w", "--workers"), worker_count_or_auto, "auto",
      "Number of worker processes (at most 128), or auto: the container's usable CPUs (CPU "
      "quota capped by the cpuset) rounded, at least 2, lowered if the memory limit cannot "
      "hold them. "
      "$WEB_CONCURRENCY, when set, replaces auto.", "INT|auto", section="Worker Processes",
      note="Gunicorn's default is 1 (or $WEB_CONCURRENCY).", default_text="auto"),
    S("worker_class", ("-k", "--worker-class"), worker_class, "gthread",
      "Worker type: gthread (app threads, the default) or sync (one request at a time per "
      "worker: threads default to 1) for a WSGI app; asgi for an ASGI 3 app (one asyncio "
      "event loop per worker; uvicorn.workers.UvicornWorker and "
      "uvicorn_worker.UvicornWorker mean the same, with an info line).", "STRING",
      section="Worker Processes",
      note="sync, gthread and asgi, and Gunicorn's and Uvicorn's class paths for them; any "
           "other class (gevent, eventlet, tornado) exits 2. Gunicorn's sync worker closes "
           "every connection after its response; berth's keeps it alive as gthread does (an "
           "idle connection costs no thread here; --keep-alive 0 closes them)."),
    S("threads", ("--threads",), threads_or_auto, "auto",
      "App threads per worker, or auto (4, or 1 with -k sync). With 1, the app runs on the "
      "worker's loop thread.", "INT|auto", section="Worker Processes",
      note="Gunicorn's default is 1.", default_text="auto"),
    S("worker_connections", ("--worker-connections",), positive_int, 1000,
      "Maximum open connections per worker. At the bound the worker closes its oldest "
      "connections with no request in progress (idle keep-alive, or silent new ones) to make "
      "room, and stops accepting only when none is left (siblings and the kernel backlog take "
      "the rest). At start berth raises its soft open-files limit to the hard one and caps "
      "the bound to fit; both are logged.", "INT", section="Worker Processes",
      note="Gunicorn's gthread worker stops accepting at the bound instead of making room."),
    S("max_requests", ("--max-requests",), non_negative_int, 0,
      "Replace a worker after it has served this many requests (0 = never). Its "
      "replacement is ready before it stops: no request is lost.", "INT",
      section="Worker Processes"),
    S("max_requests_jitter", ("--max-requests-jitter",), non_negative_int, 0,
      "Add a random 0..N to --max-requests per worker, so workers are not all "
      "replaced at once.", "INT", section="Worker Processes"),
    S("timeout", ("-t", "--timeout"), non_negative_float, 30.0,
      "Seconds a worker's loop, and the app answering one request, may stay silent "
      "before berth acts: until the first byte of the response, then between two body "
      "parts (a stream that keeps producing is never cut; waiting for a slow client does "
      "not count). A silent loop is killed (after dumping its threads' stacks); a silent "
      "request has its stack logged, gets a 504 if nothing was sent (else its connection "
      "is closed), and its worker is replaced. Booting (importing the app) does not "
      "count: an import still running at --timeout (30 s when 0) is logged with where it "
      "waits, and again each time the wait doubles, where Gunicorn kills the worker and "
      "imports again. 0 disables both checks, as in Gunicorn.", "SECONDS",
      section="Worker Processes",
      note="Gunicorn's gthread worker never ends a request at --timeout (only its sync worker "
           "does, by killing the worker); berth's bounds the app's silence with app threads "
           "too: a longer view needs a larger --timeout, or 0."),
    S("graceful_timeout", ("--graceful-timeout",), non_negative_float, None,
      "Seconds in-flight requests get to finish after SIGTERM. Default 8 (inside "
      "Docker's 10 s stop window; Gunicorn's 30 s is not), 20 in Kubernetes (inside its "
      "30 s terminationGracePeriodSeconds, after the shutdown delay); less when a longer "
      "--shutdown-delay is set, so that the stop still fits (the window less the delay and "
      "2 s, at least 1 s). A stop longer than the window is warned of at start.", "SECONDS",
      section="Worker Processes", note="Gunicorn's default is 30 s, longer than Docker's "
      "10 s stop window.", default_text="8, or 20 in Kubernetes"),
    S("shutdown_delay", ("--shutdown-delay",), non_negative_float, None,
      "Seconds after SIGTERM during which requests are still served (load balancers "
      "take a few seconds to stop sending) before berth stops accepting. Default 0, "
      "5 in Kubernetes.", "SECONDS", section="Worker Processes", status=BERTH_ONLY,
      default_text="0, or 5 in Kubernetes"),
    S("keepalive", ("--keep-alive",), non_negative_float, 75.0,
      "Seconds an idle keep-alive connection is kept open (0 disables keep-alive). "
      "Longer than common load-balancer idle timeouts (60 s), and cheap: an idle "
      "connection costs no thread.", "SECONDS", section="Worker Processes",
      note="Gunicorn's default is 2 s, shorter than load balancers' 60 s idle timeout."),
    S("max_worker_memory", ("--max-worker-memory",), size_bytes, None,
      "Replace a worker whose RSS stays above this size for 3 samples in a row "
      "(0 = never). Default: off, unless a container memory limit is known; then a "
      "share such that all workers plus one replacement fit under it.", "BYTES",
      section="Worker Processes", status=BERTH_ONLY,
      default_text="auto from the memory limit, else off"),
    # -- security ---------------------------------------------------------------------------
    S("limit_request_line", ("--limit-request-line",), non_negative_int, 4094,
      "Maximum size of the request line in bytes (0 = unlimited), at most 8190: a larger "
      "value is lowered to 8190 with a warning, as Gunicorn's parser lowers it.", "INT",
      section="Security"),
    S("limit_request_fields", ("--limit-request-fields",), non_negative_int, 100,
      "Maximum number of header fields in a request, at most 32768 (0 = 32768): a larger "
      "value is lowered to 32768 with a warning, as Gunicorn's parser lowers it.", "INT",
      section="Security"),
    S("limit_request_field_size", ("--limit-request-field_size",
                                   "--limit-request-field-size"), non_negative_int, 8190,
      "Maximum size of one request header field in bytes (0 = unlimited, as Gunicorn "
      "documents it; Gunicorn 27's parser applies 8190 then).", "INT",
      section="Security"),
    S("ready_path", ("--ready-path",), text, "/-/ready",
      "Readiness probe, answered by the worker's loop thread (never queued behind the app, "
      "so it answers while every app thread is busy): 200 while serving, 503 once SIGTERM "
      "arrived (during --shutdown-delay too, so load balancers deregister). '' disables.",
      "PATH", section="Server", status=BERTH_ONLY),
    S("live_path", ("--live-path",), text, "/-/live",
      "Liveness probe, answered by the worker's loop thread: 200 while the loop runs. "
      "'' disables.", "PATH", section="Server", status=BERTH_ONLY),
    S("check_timeout", ("--check-timeout",), positive_seconds, 5.0,
      "`berth check`: seconds the URL (by default the readiness probe on the first --bind) "
      "has to answer, connection included, before the check fails (exit 1). Also `berth "
      "top` when it prints one snapshot (stdout not a terminal).", "SECONDS",
      section="Server", status=BERTH_ONLY),
    S("header_timeout", ("--header-timeout",), positive_seconds, 10.0,
      "Seconds a client has to send a whole request head, and the longest pause while "
      "it sends a body, before the connection is closed (408).", "SECONDS",
      section="Security", status=BERTH_ONLY),
    S("body_min_rate", ("--body-min-rate",), size_bytes, 500,
      "Bytes a second a request body must average once it has taken --body-grace: it may "
      "take --body-grace plus a second for every this many bytes it has brought, then the "
      "connection is closed (408 before the app is called; after, the app's read fails). "
      "Time the server was not reading it (its reader had not taken what came) does not "
      "count. 0: no bound but on pauses (--header-timeout).", "BYTES",
      section="Security", status=BERTH_ONLY,
      note="Apache's mod_reqtimeout bounds bodies so by default (body=20,MinRate=500); "
           "Gunicorn bounds no body in time: a client sending a byte every few seconds holds "
           "its connection (and, past the buffer, an app thread) for ever."),
    S("body_grace", ("--body-grace",), positive_seconds, 20.0,
      "Seconds a request body may take at any rate, before --body-min-rate applies.",
      "SECONDS", section="Security", status=BERTH_ONLY),
    S("body_buffer_size", ("--body-buffer-size",), size_bytes, 1024 * 1024,
      "Request bodies up to this size are read whole into memory before the app sees "
      "the request; larger ones are streamed to the app as they arrive.", "BYTES",
      section="Security", status=BERTH_ONLY, default_text="1m"),
    # -- debugging --------------------------------------------------------------------------
    S("reload", ("--reload",), boolean, False,
      "Restart the workers when the app's source files (the files of the modules its workers "
      "imported) or a --reload-extra-file change: new workers start and the old ones drain "
      "once they are ready. An edit that does not import is logged with its traceback while "
      "the old workers keep serving; the next change tries again. For development; not with "
      "--preload.", None, "store_true", section="Debugging",
      note="Gunicorn's worker answers requests with the traceback of a SyntaxError and "
           "stops on other import errors; berth keeps the last good workers serving and "
           "never stops for an edit."),
    S("reload_engine", ("--reload-engine",), reload_engine, "auto",
      "How --reload watches files: inotify (Linux, no package needed), poll (stat once a "
      "second: use it where inotify misses edits, e.g. some bind mounts from Docker "
      "Desktop), or auto (inotify, else poll).", "STRING", section="Debugging",
      note="Gunicorn's inotify engine needs the inotify package; berth calls the kernel's "
           "inotify through ctypes."),
    S("reload_extra_files", ("--reload-extra-file",), text, None,
      "Another file --reload watches (templates, configuration), repeatable. An entry with "
      "`*`, `?` or `[` is a glob (`**` recurses), expanded again every second, so a matching "
      "file created later is watched too (its first edit reloads). Relative to the directory "
      "berth is started from, not to --chdir.",
      "FILE", "append", section="Debugging"),
    S("spew", ("--spew",), refuse_if_on(
        "tracing every line berth executes is not supported (it would slow the workers' loops "
        "until supervision replaced them): trace with python -m trace --trace --module berth "
        "..., or sample with py-spy"), False,
      "Trace every line the server executes (debugging).", None, "store_true",
      section="Debugging", status=REFUSED,
      note="accepted when off; on exits 2 (line tracing would stall the workers' loops until "
           "supervision replaced them)."),
    S("check_config", ("--check-config",), boolean, False,
      "Check the configuration, load the app and exit: 0 when it loads, 1 when the app "
      "fails to load, 2 when the configuration is wrong.", None, "store_true",
      section="Debugging", env=False),
    S("print_config", ("--print-config",), boolean, False,
      "Print every setting's effective value and where it came from, and exit.", None,
      "store_true", section="Debugging", env=False),
    # -- server mechanics -------------------------------------------------------------------
    S("preload_app", ("--preload",), boolean, False,
      "Load the app in the master before forking workers (memory shared copy-on-write, "
      "kept shared with gc.freeze()).", None, "store_true"),
    S("sendfile", ("--no-sendfile",), boolean, True,
      "Do not use sendfile() for wsgi.file_wrapper responses: read the file and send its "
      "blocks. As with Gunicorn, $SENDFILE (y, 1, yes, true: on; anything else: off) is used "
      "when the setting is not given.", None, "store_false", default_text="on"),
    S("reuse_port", ("--reuse-port",), boolean, False,
      "Set SO_REUSEPORT on the TCP listening sockets (another process may then bind the same "
      "port and share its connections).", None, "store_true"),
    S("chdir", ("--chdir",), text, None,
      "Change to this directory before loading the app: once the configuration is read, "
      "and again on SIGHUP, as Gunicorn does. Relative paths of the other settings (error "
      "log, access log, pid file, logging configuration) are in it, and a symlink a deploy "
      "moved (/srv/current) is followed, so new workers load the new release.", "DIR",
      default_text="the current directory"),
    S("daemon", ("-D", "--daemon"), refuse_unless(
        is_falsy, "berth stays in the foreground (a container or process supervisor runs it); "
                "drop --daemon"), False,
      "Detach from the terminal (Gunicorn).", None, "store_true", status=REFUSED,
      note="berth always runs in the foreground, as containers and supervisors expect."),
    S("raw_env", ("-e", "--env"), env_pair, [],
      "Set an environment variable for the app, repeatable: KEY=VALUE.", "KEY=VALUE",
      "append"),
    S("pidfile", ("-p", "--pid"), optional_text, None,
      "Write the master's pid to this file (removed at exit).", "FILE"),
    S("worker_tmp_dir", ("--worker-tmp-dir",), text, None,
      "Directory for Gunicorn's worker heartbeat files.", "DIR", status=NOT_NEEDED,
      note="berth has no heartbeat file: workers report through shared memory, so nothing "
           "is written to /tmp (and /dev/shm is not needed)."),
    S("user", ("-u", "--user"), refuse_unless(
        is_current_user, "switching workers to another user is not implemented: run the "
                       "container as that user (Dockerfile USER, docker run --user, "
                       "runAsUser)"), None,
      "Run the workers as this user.", "USER", status=REFUSED,
      note="accepted when it names the user berth already runs as; otherwise exit 2 "
           "(ignoring it would leave the workers running as root)."),
    S("group", ("-g", "--group"), refuse_unless(
        is_current_group, "switching workers to another group is not implemented: run the "
                        "container with that group (docker run --user UID:GID, "
                        "runAsGroup)"), None,
      "Run the workers as this group.", "GROUP", status=REFUSED,
      note="accepted when it names the group berth already runs as; otherwise exit 2."),
    S("umask", ("-m", "--umask"), octal_mask, 0,
      "File mode mask applied while a unix socket is bound (as in Gunicorn: only there, never "
      "to the process). The default 0 lets every local user connect (mode 0777, as with "
      "Gunicorn); 0o007 limits it to the owner and group.", "INT", default_text="0"),
    S("initgroups", ("--initgroups",), boolean, False,
      "Set the workers' supplementary groups from --user.", None, "store_true",
      status=NOT_NEEDED,
      note="it only matters when the workers switch user; berth never switches (--user and "
           "--group are accepted only when they name the current ones), so the workers keep "
           "the groups they have, as Gunicorn's do then."),
    S("tmp_upload_dir", (), optional_text, None,
      "Directory for request bodies being read (Gunicorn).", status=NOT_NEEDED,
      note="Gunicorn itself no longer uses it; berth buffers bodies in memory up to "
           "--body-buffer-size and streams larger ones to the app: nothing is written to "
           "disk."),
    S("secure_scheme_headers", (), scheme_headers,
      {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"},
      "Headers from a trusted proxy (forwarded_allow_ips) that set wsgi.url_scheme: https "
      "when a line's whole value matches exactly, http when it differs (so 'https, http' on "
      "one line is http). Lines that disagree get 400. From any other peer they change "
      "nothing.",
      default_text="Gunicorn's X-FORWARDED-* trio",
      note="Names match in any case, as header names do (RFC 9110 5.1); Gunicorn compares "
           "them as written with upper-cased ones, so a name written 'X-Forwarded-Proto' "
           "never matched there and the scheme stayed http."),
    S("forwarded_allow_ips", ("--forwarded-allow-ips",), address_list, "127.0.0.1,::1",
      "Proxies trusted to set secure_scheme_headers, forwarder_headers and (with "
      "--forwarded-remote-addr) the client's address: IP addresses, CIDR networks "
      "(10.0.0.0/8), or '*' for every peer. A unix-socket peer is always trusted. When not "
      "set, $FORWARDED_ALLOW_IPS is used, as in Gunicorn.", "STRING",
      note="an IPv4-mapped peer (::ffff:127.0.0.1, seen on a dual-stack listener) also "
           "matches its IPv4 entry; Gunicorn compares it as IPv6 only."),
    S("forwarded_remote_addr", ("--forwarded-remote-addr",), boolean, False,
      "Set REMOTE_ADDR (and REMOTE_PORT, 0 when not given) from a trusted peer's "
      "X-Forwarded-For or Forwarded: for=, taking the right-most address that is not itself "
      "in forwarded_allow_ips (with '*', only the right-most one: one hop). Never the "
      "left-most: a client writes that one itself. Under -k uvicorn.workers.UvicornWorker, "
      "on unless given, choosing the client from X-Forwarded-For as Uvicorn does.", None,
      "store_true", status=BERTH_ONLY,
      note="berth only: Gunicorn keeps the peer's address (its default, and berth's); "
           "with UvicornWorker, Uvicorn names the client (on by default)."),
    S("pythonpath", ("--pythonpath",), text, None,
      "Comma-separated directories to add to the Python path, each put first in turn as "
      "Gunicorn does (with a,b a module in both is imported from b).", "PATHS"),
    S("paste", ("--paste", "--paster"), refuse_unless(
        is_falsy, "PasteDeploy apps are not supported: name the app as MODULE:NAME"), None,
      "Load a PasteDeploy config file.", "STRING", status=REFUSED,
      note="name the app as MODULE:NAME instead."),
    S("raw_paste_global_conf", ("--paste-global",), refuse_unless(
        is_falsy, "PasteDeploy apps are not supported: name the app as MODULE:NAME"), None,
      "Global PasteDeploy variables, repeatable.", "CONF", "append", status=REFUSED,
      note="PasteDeploy is not supported."),
    S("proxy_protocol", ("--proxy-protocol",), proxy_protocol, "off",
      "Read a PROXY protocol header (HAProxy's, v1 and/or v2: off, v1, v2, auto; the bare "
      "flag is auto) before the first request of each connection: REMOTE_ADDR and "
      "REMOTE_PORT become the client it names, and PROXY_PROTOCOL, PROXY_ADDR and "
      "PROXY_PORT are set, for every request on the connection. A connection without one is "
      "served as plain HTTP (probes). A header from a peer not in proxy_allow_ips gets 403; "
      "a malformed or truncated one closes the connection, logged.", "MODE", "optional",
      const="auto",
      note="berth keeps the header for every request of a keep-alive connection (Gunicorn's "
           "gthread worker, only for the first) and serves PROXY UNKNOWN, LOCAL, UNSPEC and "
           "UDP headers with the real peer, as the spec says (Gunicorn: 400)."),
    S("proxy_allow_ips", ("--proxy-allow-from",), address_list, "127.0.0.1,::1",
      "Peers allowed to send a PROXY protocol header: IP addresses, CIDR networks, or '*'. "
      "A unix-socket peer is always allowed.", "STRING"),
    S("protocol", ("--protocol",), refuse_unless(
        lambda v: str(v).strip().lower() == "http",
        "berth speaks HTTP only (not uwsgi): point the front end at berth over HTTP"), "http",
      "Protocol for incoming connections: http or uwsgi.", "STRING", status=REFUSED,
      note="http only; uwsgi exits 2."),
    S("uwsgi_allow_ips", ("--uwsgi-allow-from",), text, "127.0.0.1,::1",
      "Front ends allowed to speak uwsgi.", "STRING", status=NOT_NEEDED,
      note="it only matters with --protocol uwsgi, which berth refuses."),
    S("permit_obsolete_folding", ("--permit-obsolete-folding",), refuse_if_on(
        "obsolete line folding is a request-smuggling vector (deprecated in Gunicorn): berth "
        "answers folded header lines 400; fix the client or the proxy that folds"), False,
      "Accept obsolete line folding in header fields.", None, "store_true", status=REFUSED,
      note="accepted when off; on exits 2 (a request-smuggling vector, deprecated in "
           "Gunicorn): folded header lines get 400."),
    S("strip_header_spaces", ("--strip-header-spaces",), refuse_if_on(
        "whitespace before a header's colon is a request-smuggling vector (deprecated in "
        "Gunicorn): berth answers it 400; fix the client that sends it"), False,
      "Strip spaces before the colon of header names (unsafe).", None, "store_true",
      status=REFUSED, note="accepted when off; on exits 2 (a request-smuggling vector, "
                           "deprecated in Gunicorn): such headers get 400."),
    S("permit_unconventional_http_method", ("--permit-unconventional-http-method",),
      boolean, False,
      "Accept any token as a request method (RFC 9110 §9.1), not only Gunicorn's conventional "
      "ones: upper-case tokens of 3 to 20 characters without '#'. Others get 400.", None,
      "store_true",
      note="Without it berth, as Gunicorn, serves every conventional method, those llhttp "
           "does not know included (BREW, VERSION-CONTROL, MKREDIRECTREF)."),
    S("permit_unconventional_http_version", ("--permit-unconventional-http-version",),
      boolean, False,
      "Serve any well-formed HTTP/d.d request line, not only HTTP/1.0 and 1.1 (others get "
      "505). The app sees the version as sent in SERVER_PROTOCOL; the response is HTTP/1.1 "
      "(HTTP/1.0 below 1.1). HTTP/0.9 is never served.", None, "store_true",
      note="Gunicorn serves HTTP/1.2 to 1.9 even without it (berth: 505) and echoes the "
           "request's version in the status line."),
    S("casefold_http_method", ("--casefold-http-method",), boolean, False,
      "Upper-case the request method once it passed the checks: with "
      "--permit-unconventional-http-method, 'get' is served as GET (and 'connect' gets 501). "
      "Without it a lower-case method gets 400 before it could be folded.", None, "store_true"),
    S("forwarder_headers", ("--forwarder-headers",), name_list, ["SCRIPT_NAME", "PATH_INFO"],
      "Header names with '_' that a trusted proxy (forwarded_allow_ips) may send, mapped into "
      "the environ despite header_map: a SCRIPT_NAME header sets SCRIPT_NAME (and is taken "
      "off the front of PATH_INFO), others become HTTP_<NAME> (REMOTE_USER: "
      "HTTP_REMOTE_USER), as in Gunicorn.", "STRING", default_text="SCRIPT_NAME,PATH_INFO",
      note="Names match in any case ('script_name' is SCRIPT_NAME); Gunicorn matches only "
           "names written upper-case."),
    S("header_map", ("--header-map",), header_map, "drop",
      "Header names containing '_' (X_Forwarded_For would become the same environ key as "
      "X-Forwarded-For): drop them (the default), refuse the request (400), or dangerous: "
      "map them anyway, joined with the '-' one.", "STRING",
      note="With dangerous, a SCRIPT_NAME header does not set SCRIPT_NAME (in Gunicorn it "
           "does): list it in forwarder_headers (the default) for that."),
    S("root_path", ("--root-path",), text, "",
      "-k asgi: the path the app is mounted at behind a proxy (scope['root_path'], and "
      "the start of scope['path']).", "STRING",
      note="ASGI only, as in Gunicorn; for WSGI, set SCRIPT_NAME in the environment."),
    # -- logging ----------------------------------------------------------------------------
    S("accesslog", ("--access-logfile",), text, "-",
      "Access log: '-' for stdout (the default: containers collect stdout), a file "
      "path, or 'none' to disable.", "FILE", section="Logging",
      note="Gunicorn's default is no access log; a config file's accesslog = None (that "
           "default, e.g. from an unset variable) turns it off here too."),
    S("disable_redirect_access_to_syslog", ("--disable-redirect-access-to-syslog",), boolean,
      False, "With --log-syslog: do not send access lines to syslog.", None, "store_true",
      section="Logging"),
    S("access_log_format", ("--access-logformat",), text,
      '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
      "Access log format, with Gunicorn's atoms.", "STRING", section="Logging",
      note="A {header}i of a repeated field logs its values joined with ',' (Gunicorn logs "
           "the last one)."),
    S("log_format", ("--log-format",), log_format, "text",
      "text (Gunicorn's lines) or json: one JSON object per line for both logs, with "
      "timestamp (RFC 3339, ms), level, pid and message; access lines add remote_addr, "
      "method, path, query, status, bytes, duration_ms, user_agent, referer and request_id "
      "(the client's X-Request-ID, else made from the pid and a counter; the app gets it as "
      "environ['berth.request_id'], or scope['berth.request_id'] under -k asgi); an error's "
      "traceback is one field, exception. With json, "
      "--access-logformat is not used.", "FORMAT", section="Logging", status=BERTH_ONLY,
      note="berth only."),
    S("log_overflow", ("--log-overflow",), log_overflow, "drop",
      "When the access log is not read fast enough (a stalled pipe) and 4 MiB of lines wait in "
      "a worker: drop (the default: serving goes on; the lines are counted in "
      "berth_log_lines_dropped_total and a warning) or block (the worker waits for the "
      "reader, and so do its requests).", "POLICY", section="Logging", status=BERTH_ONLY,
      note="berth only."),
    S("errorlog", ("--error-logfile", "--log-file"), text, "-",
      "Error log: '-' for stderr (the default) or a file path.", "FILE", section="Logging"),
    S("loglevel", ("--log-level",), log_level, "info",
      "Error log level: debug, info, warning, error, critical.", "LEVEL", section="Logging"),
    S("capture_output", ("--capture-output",), boolean, False,
      "Send what the app prints (its stdout and stderr) to the error log.", None,
      "store_true", section="Logging",
      note="Gunicorn does it only when the error log is a file; berth also when it is stderr "
           "(stdout carries the access log)."),
    S("logger_class", ("--logger-class",), refuse_unless(
        is_default_logger, "a custom logger class is not supported: berth has its own error and "
                         "access logs; shape them with --access-logformat and --log-level, "
                         "and configure logging with logconfig_dict"), GUNICORN_LOGGER,
      "A Gunicorn logger class.", "STRING", section="Logging", status=REFUSED,
      note="accepted when it names Gunicorn's default (or `simple`, its alias, or "
           "`gunicorn.instrument.statsd.Statsd`, the class Gunicorn uses with --statsd-host); "
           "any other class exits 2 (use logconfig_dict)."),
    S("logconfig", ("--log-config",), optional_text, None,
      "A logging.config.fileConfig file, applied as Gunicorn applies it (its loggers are "
      "gunicorn.error and gunicorn.access; berth.error and berth.access too).", "FILE",
      section="Logging", note=_LOGCONFIG),
    S("logconfig_dict", (), anything, {},
      "A logging.config.dictConfig dictionary (config file only), merged over Gunicorn's "
      "defaults as Gunicorn merges it.", section="Logging", note=_LOGCONFIG,
      default_text="{}"),
    S("logconfig_json", ("--log-config-json",), optional_text, None,
      "A JSON file of a logging.config.dictConfig dictionary, as logconfig_dict.", "FILE",
      section="Logging", note=_LOGCONFIG + " A missing file exits 2 (Gunicorn ignores it)."),
    S("syslog_addr", ("--log-syslog-to",), syslog_address, "udp://localhost:514",
      "Syslog address: udp://HOST:PORT, tcp://HOST:PORT or unix://PATH[#dgram|#stream].",
      "SYSLOG_ADDR", section="Logging"),
    S("syslog", ("--log-syslog",), boolean, False,
      "Send the error log, and the access log unless --disable-redirect-access-to-syslog, to "
      "syslog as well, tagged gunicorn.PREFIX.error and gunicorn.PREFIX.access (Gunicorn's "
      "tags, so syslog rules keep working).", None, "store_true", section="Logging",
      note="Written from a thread of its own, never by a request."),
    S("syslog_prefix", ("--log-syslog-prefix",), optional_text, None,
      "PREFIX in syslog tags (default: --name, else the app, its ':' as '.').",
      "SYSLOG_PREFIX", section="Logging"),
    S("syslog_facility", ("--log-syslog-facility",), syslog_facility, "user",
      "Syslog facility: auth, authpriv, cron, daemon, ftp, kern, lpr, mail, news, syslog, "
      "user, uucp, local0 to local7.", "SYSLOG_FACILITY", section="Logging"),
    S("enable_stdio_inheritance", ("-R", "--enable-stdio-inheritance"), boolean, False,
      "Keep stdio open in daemon mode.", None, "store_true", section="Logging",
      status=NOT_NEEDED, note="it only matters in daemon mode, which berth refuses; berth "
                              "never closes or redirects stdio."),
    S("statsd_host", ("--statsd-host",), statsd_address, None,
      "StatsD server to send Gunicorn's metrics to (HOST:PORT, or unix:PATH), over UDP: "
      "gunicorn.request.duration, gunicorn.requests, gunicorn.request.status.<code>, "
      "gunicorn.log.<level>, gunicorn.workers.", "STATSD_ADDR", section="Logging",
      note="Gunicorn sends three datagrams per request from the request's thread; berth "
           "sends the same series from each worker's loop twice a second, several metrics "
           "per datagram (counters summed over the half second)."),
    S("dogstatsd_tags", ("--dogstatsd-tags",), text, "",
      "DogStatsD tags appended to every metric (key:value,...).", "DOGSTATSD_TAGS",
      section="Logging"),
    S("statsd_prefix", ("--statsd-prefix",), text, "",
      "Prefix of StatsD metric names (a '.' is added).", "STATSD_PREFIX", section="Logging"),
    S("enable_backlog_metric", ("--enable-backlog-metric",), boolean, False,
      "With --statsd-host: also send gunicorn.backlog, the connections waiting in the "
      "listeners' accept queues.", None, "store_true", section="Logging"),
    # -- process naming ---------------------------------------------------------------------
    S("proc_name", ("-n", "--name"), optional_text, None,
      "The name in the process titles ps and top show: `berth: master [NAME]` and `berth: "
      "worker [NAME]`, with setproctitle installed (pip install berth[proctitle]; without "
      "it titles are not changed, and one info line at start says so). Default: "
      "default_proc_name, else the app (MODULE:NAME).", "STRING", section="Process Naming",
      note="Titles begin with `berth:` where Gunicorn's begin with `gunicorn:`.",
      default_text="the app (MODULE:NAME)"),
    S("default_proc_name", (), optional_text, None,
      "The name in the process titles when --name is not given (config file or env).",
      section="Process Naming", note="Gunicorn sets it to the app spec itself; berth uses "
      "the app spec when it is not set.", default_text="the app (MODULE:NAME)"),
    # -- SSL --------------------------------------------------------------------------------
    S("keyfile", ("--keyfile",), optional_text, None,
      "TLS private key file (PEM); with certfile alone, the key is read from it.", "FILE",
      section="SSL"),
    S("certfile", ("--certfile",), optional_text, None,
      "TLS certificate chain file (PEM). Set, every listener speaks TLS: the handshake, "
      "reads and writes run on each worker's loop thread (a stalled handshake holds no app "
      "thread and is closed at --header-timeout), wsgi.url_scheme is https, and "
      "wsgi.file_wrapper reads and writes instead of sendfile.", "FILE", section="SSL"),
    S("ssl_version", ("--ssl-version",), text, None,
      "TLS protocol version (deprecated and ignored in Gunicorn).", "VERSION", section="SSL",
      status=NOT_NEEDED, default_text="TLS",
      note="ignored, as in Gunicorn: berth negotiates TLS 1.2 or 1.3 and never lower; use "
           "the ssl_context hook to change the context."),
    S("cert_reqs", ("--cert-reqs",), cert_reqs, 0,
      "Client certificates: 0 not asked for, 1 optional (verified when sent), 2 required. "
      "A verified certificate reaches the app as environ['berth.peercert'] (the "
      "getpeercert() dict) and SSL_CLIENT_CERT (PEM).", "INT", section="SSL",
      default_text="0 (none)"),
    S("ca_certs", ("--ca-certs",), optional_text, None,
      "CA certificates (PEM) that client certificates are verified against.", "FILE",
      section="SSL"),
    S("suppress_ragged_eofs", ("--suppress-ragged-eofs",), boolean, True,
      "A client that closes without a TLS close_notify is taken as closed.", None,
      "store_true", section="SSL", status=NOT_NEEDED,
      note="berth always takes a ragged EOF as the client's close (it reads through memory "
           "BIOs: nothing is raised to the app either way)."),
    S("do_handshake_on_connect", ("--do-handshake-on-connect",), boolean, False,
      "Do the TLS handshake when the connection is accepted.", None, "store_true",
      section="SSL", status=NOT_NEEDED,
      note="berth's loop does the handshake as soon as the client's first bytes arrive, "
           "without a thread, either way."),
    S("ciphers", ("--ciphers",), optional_text, None,
      "TLS cipher suites (OpenSSL's cipher list format) for TLS 1.2.", "CIPHERS",
      section="SSL"),
    # -- HTTP/2 -----------------------------------------------------------------------------
    S("http_protocols", ("--http-protocols",), refuse_unless(
        lambda v: v is None or str(v).strip().lower() in ("h1", "http/1.1"),
        "berth speaks HTTP/1.x only: use --http-protocols h1 (or drop it); terminate HTTP/2 "
        "at the load balancer"), "h1",
      "HTTP versions to offer (h1, h2).", "STRING", section="HTTP/2", status=REFUSED,
      note="h1 only; anything else exits 2."),
    S("http2_cleartext", ("--http2-cleartext",), refuse_unless(
        is_off, "berth speaks HTTP/1.x only: drop --http2-cleartext"), "off",
      "Accept HTTP/2 over cleartext (h2c).", "STRING", section="HTTP/2", status=REFUSED,
      note="off only; anything else exits 2."),
    S("http2_max_concurrent_streams", ("--http2-max-concurrent-streams",), positive_int, 100,
      "HTTP/2 streams per connection.", "INT", section="HTTP/2", status=NOT_NEEDED,
      note="berth does not speak HTTP/2."),
    S("http2_initial_window_size", ("--http2-initial-window-size",), positive_int, 65535,
      "HTTP/2 initial flow-control window.", "INT", section="HTTP/2", status=NOT_NEEDED,
      note="berth does not speak HTTP/2."),
    S("http2_max_frame_size", ("--http2-max-frame-size",), positive_int, 16384,
      "HTTP/2 maximum frame size.", "INT", section="HTTP/2", status=NOT_NEEDED,
      note="berth does not speak HTTP/2."),
    S("http2_max_header_list_size", ("--http2-max-header-list-size",), positive_int, 65536,
      "HTTP/2 maximum header list size.", "INT", section="HTTP/2", status=NOT_NEEDED,
      note="berth does not speak HTTP/2."),
    # -- ASGI and parser choice -------------------------------------------------------------
    S("asgi_loop", ("--asgi-loop",), asgi_loop, "auto",
      "-k asgi: the event loop: auto (uvloop when it is installed), asyncio or uvloop.",
      "STRING", section="Worker Processes"),
    S("asgi_lifespan", ("--asgi-lifespan",), asgi_lifespan, "auto",
      "-k asgi: the lifespan protocol: auto (run it; an app that raises on it has none), on "
      "(required: a failure stops berth) or off.", "STRING", section="Worker Processes"),
    S("asgi_disconnect_grace_period", ("--asgi-disconnect-grace-period",), non_negative_int,
      3, "-k asgi: seconds an app gets, after its client went away (it receives "
         "http.disconnect), before its task is cancelled; 0 cancels at once.", "INT",
      section="Worker Processes"),
    S("loop_block_warn", ("--loop-block-warn",), non_negative_float, 0.2,
      "-k asgi: a callback that holds the event loop this many seconds is logged with the "
      "stack of the code that blocks it, and counted (berth_loop_blocked_total); 0 turns "
      "it off.", "SECONDS", section="Worker Processes", status=BERTH_ONLY),
    S("websocket_max_message_size", ("--websocket-max-message-size",), non_negative_int,
      16777216, "-k asgi: the largest WebSocket message taken, in bytes; a larger one closes "
      "the connection with 1009 (0: no limit).", "INT", section="Worker Processes"),
    S("ws_ping_interval", ("--ws-ping-interval",), non_negative_float, 20.0,
      "-k asgi: seconds a WebSocket may be silent before berth pings it (0: never; "
      "Uvicorn's name and default).", "SECONDS", section="Worker Processes",
      status=BERTH_ONLY),
    S("ws_ping_timeout", ("--ws-ping-timeout",), non_negative_float, 20.0,
      "-k asgi: seconds to wait for the pong before closing with 1011 (Uvicorn's name and "
      "default).", "SECONDS", section="Worker Processes", status=BERTH_ONLY),
    S("http_parser", ("--http-parser",), text, "auto",
      "HTTP parser implementation.", "STRING", section="Worker Processes",
      status=NOT_NEEDED, note="berth always parses with httptools (llhttp)."),
    # -- dirty arbiters ---------------------------------------------------------------------
    S("dirty_apps", ("--dirty-app",), refuse_unless(
        is_falsy, "dirty apps (a separate worker pool for long tasks) are not supported; run "
                "them in their own process"), None,
      "Apps for Gunicorn's dirty worker pool, repeatable.", "STRING", "append",
      section="Dirty Arbiters", status=REFUSED, note="not supported; exits 2 when set."),
    S("dirty_workers", ("--dirty-workers",), non_negative_int, 0,
      "Dirty worker processes.", "INT", section="Dirty Arbiters", status=NOT_NEEDED,
      note="no dirty worker pool."),
    S("dirty_timeout", ("--dirty-timeout",), non_negative_int, 300,
      "Dirty task timeout.", "INT", section="Dirty Arbiters", status=NOT_NEEDED,
      note="no dirty worker pool."),
    S("dirty_threads", ("--dirty-threads",), positive_int, 1,
      "Threads per dirty worker.", "INT", section="Dirty Arbiters", status=NOT_NEEDED,
      note="no dirty worker pool."),
    S("dirty_graceful_timeout", ("--dirty-graceful-timeout",), non_negative_int, 30,
      "Dirty worker shutdown timeout.", "INT", section="Dirty Arbiters", status=NOT_NEEDED,
      note="no dirty worker pool."),
    # -- control socket ---------------------------------------------------------------------
    S("control_socket", ("--control-socket",), refuse_unless(is_no_control_socket, _CONTROL),
      None, "Unix socket of Gunicorn's control interface (gunicornc).", "PATH",
      section="Control", status=REFUSED,
      note="accepted when it names Gunicorn's default path; any other path exits 2: berth "
           "has no control socket (gunicornc) and is controlled with signals.",
      default_text="$XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl"),
    S("control_socket_mode", ("--control-socket-mode",), refuse_unless(
        lambda v: octal_mask(v) == 0o600, _CONTROL), 0o600,
      "Permissions of the control socket.", "INT", section="Control", status=REFUSED,
      note="accepted at Gunicorn's default 0o600; anything else exits 2 (no control socket).",
      default_text="0o600"),
    S("control_socket_disable", ("--no-control-socket",), boolean, False,
      "Do not open the control socket.", None, "store_true", section="Control",
      status=NOT_NEEDED, note="berth has no control socket: none is opened either way."),
)

# Gunicorn's server hooks (config file only): the arguments Gunicorn passes each one, and when
# berth calls it. This is the one declaration of their arity: `hooks.validate_hook` checks a
# config file's function against it, and the help and docs show it. pre_exec is accepted but
# never called; ssl_context is TLS; the dirty-arbiter hooks belong to a pool berth does not have.
HOOK_ARGS: dict[str, tuple[str, ...]] = {
    "on_starting": ("server",),
    "on_reload": ("server",),
    "when_ready": ("server",),
    "pre_fork": ("server", "worker"),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_int": ("worker",),
    "worker_abort": ("worker",),
    "pre_exec": ("server",),
    "pre_request": ("worker", "req"),
    "post_request": ("worker", "req", "environ", "resp"),
    "child_exit": ("server", "worker"),
    "worker_exit": ("server", "worker"),
    "nworkers_changed": ("server", "new_value", "old_value"),
    "on_exit": ("server",),
    "ssl_context": ("config", "default_ssl_context_factory"),
}
_HOOK_WHEN = {
    "on_starting": "in the master before it binds",
    "on_reload": "in the master on SIGHUP",
    "when_ready": "in the master once the listeners are bound",
    "pre_fork": "in the master before a worker is forked",
    "post_fork": "in a new worker",
    "post_worker_init": "in a worker once the app is loaded",
    "worker_int": "in a worker on SIGINT or SIGQUIT",
    "worker_abort": "in a worker on SIGABRT (its loop went silent)",
    "pre_exec": "before a new master is exec'd (SIGUSR2)",
    "pre_request": "in a worker before the app handles a request",
    "post_request": "in a worker after a response",
    "child_exit": "in the master after a worker exited",
    "worker_exit": "in a worker as it exits",
    "nworkers_changed": "in the master when the worker count is set: at start before "
                        "on_starting (old_value None), on SIGTTIN/SIGTTOU, and on each SIGHUP "
                        "before on_reload (as Gunicorn: even when the count stays the same)",
    "on_exit": "in the master just before berth exits",
    "ssl_context": "in the master and each worker to build the TLS context (it returns an "
                   "ssl.SSLContext; default_ssl_context_factory() makes berth's)",
}
_DIRTY_HOOKS = ("on_dirty_starting", "dirty_post_fork", "dirty_worker_init",
                "dirty_worker_exit")


def _hook_settings() -> tuple[Setting, ...]:
    out = []
    for name, args in HOOK_ARGS.items():
        help_text = f"Called {_HOOK_WHEN[name]}: {name}({', '.join(args)})."
        if name == "pre_exec":
            out.append(S(name, (), hook(name), None, help_text, section="Server Hooks",
                         status=NOT_NEEDED, env=False,
                         note="never called: berth has no SIGUSR2 re-exec."))
        else:
            out.append(S(name, (), hook(name), None, help_text, section="Server Hooks",
                         env=False))
    for name in _DIRTY_HOOKS:
        out.append(S(name, (), anything, None, f"Gunicorn dirty-arbiter hook {name}.",
                     section="Server Hooks", status=NOT_NEEDED, env=False,
                     note="never called: no dirty worker pool."))
    return tuple(out)


SETTINGS = SETTINGS + _hook_settings()
BY_NAME = {s.name: s for s in SETTINGS}
HOOK_NAMES = tuple(s.name for s in SETTINGS if s.is_hook)
