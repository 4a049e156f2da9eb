"""Configuration: one declaration per setting; sources and precedence; config files; Gunicorn's
flags; --print-config and --check-config; the generated settings reference.

Most tests call `berth.cli.parse_config` in-process with an explicit environment and directory;
the ones at the bottom run `python -m berth` and check what a person sees.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, free_port, http_get
from proto_helpers import served_by, wait_for, wait_replaced
from test_cli import run_berth
from test_sizing import info as fake_info

from berth import settingsdoc
from berth.config import ConfigError, build_parser, load, parse_config, render_config
from berth.settings import BERTH_ONLY, BY_NAME, IMPLEMENTED, NOT_NEEDED, REFUSED, SETTINGS

BASE_ENV = {"BERTH_IN_CONTAINER": "0"}


def parse(argv, env=None, cwd=None, **kw):
    environ = dict(BASE_ENV)
    environ.update(env or {})
    return parse_config(list(argv), environ=environ, cwd=str(cwd) if cwd else "/nonexistent",
                        **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# --- the declaration ------------------------------------------------------------------------

def test_every_setting_has_a_name_help_section_and_status():
    names = set()
    for s in SETTINGS:
        assert s.name not in names, f"{s.name} declared twice"
        names.add(s.name)
        assert s.help and s.section and s.status
        if s.status in (NOT_NEEDED, REFUSED):
            assert s.note, f"{s.name}: a setting berth does not implement says why"


def test_flags_are_unique():
    seen: dict[str, str] = {}
    for s in SETTINGS:
        for flag in s.flags:
            assert flag not in seen, f"{flag} used by {seen[flag]} and {s.name}"
            seen[flag] = s.name


def test_every_gunicorn_setting_is_declared():
    gunicorn_config = pytest.importorskip("gunicorn.config")
    missing = [s.name for s in gunicorn_config.KNOWN_SETTINGS if s.name not in BY_NAME]
    assert not missing, f"Gunicorn settings berth does not declare: {missing}"
    for s in gunicorn_config.KNOWN_SETTINGS:
        for flag in s.cli or ():
            assert flag in BY_NAME[s.name].flags, f"{s.name}: Gunicorn's flag {flag} missing"


def test_a_setting_in_the_gunicorn_table_is_one_of_gunicorns():
    gunicorn_config = pytest.importorskip("gunicorn.config")
    known = {s.name for s in gunicorn_config.KNOWN_SETTINGS}
    extra = [s.name for s in SETTINGS if s.gunicorn and s.name not in known]
    assert not extra, f"marked as Gunicorn's, but Gunicorn has no such setting: {extra}"


def test_committed_settings_doc_matches_the_table():
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == settingsdoc.render(), (
        "docs/settings.md is stale: run `python -m berth.settingsdoc > docs/settings.md`")


def test_settings_doc_lists_every_gunicorn_setting_with_its_status():
    doc = settingsdoc.render()
    table = doc[doc.index("## Every Gunicorn setting"):]
    for s in SETTINGS:
        if s.gunicorn:
            assert f"| `{s.name}` |" in table, s.name


def test_help_shows_implemented_flags_and_names_the_others():
    text = build_parser().format_help()
    assert "--workers" in text and "--threads" in text and "--config" in text
    assert "--reuse-port" in text and "--certfile" in text  # in the epilog's lists
    assert "berth doctor" in text


# --- sources and precedence ------------------------------------------------------------------

def test_defaults_are_recorded_as_default():
    cfg = parse(["app:app"])
    assert cfg.workers == "auto" and cfg.threads == "auto"
    assert cfg.source("workers") == "default"
    assert cfg.source("wsgi_app") == "cli"
    assert cfg.source("bind") == "auto" and cfg.bind == ["127.0.0.1:8000"]


def test_precedence_file_cmd_args_env_cli(tmp_path):
    write(tmp_path / "gunicorn.conf.py", """\
        workers = 3
        threads = 3
        backlog = 300
        timeout = 33
        keepalive = 3
        max_requests = 7
    """)
    env = {"GUNICORN_CMD_ARGS": "--threads 5 --backlog 500 --timeout 55 --keep-alive 5",
           "BERTH_CMD_ARGS": "--backlog 600 --timeout 66 --keep-alive 6",
           "BERTH_TIMEOUT": "77", "BERTH_KEEPALIVE": "7"}
    cfg = parse(["--keep-alive", "8", "app:app"], env=env, cwd=tmp_path)
    assert (cfg.workers, cfg.source("workers")) == (3, "file gunicorn.conf.py")
    assert (cfg.threads, cfg.source("threads")) == (5, "env GUNICORN_CMD_ARGS")
    assert (cfg.backlog, cfg.source("backlog")) == (600, "env BERTH_CMD_ARGS")
    assert (cfg.timeout, cfg.source("timeout")) == (77.0, "env BERTH_TIMEOUT")
    assert (cfg.keepalive, cfg.source("keepalive")) == (8.0, "cli")
    assert (cfg.max_requests, cfg.source("max_requests")) == (7, "file gunicorn.conf.py")


def test_web_concurrency_is_the_default_for_workers_and_a_file_or_cli_wins(tmp_path):
    assert parse(["app:app"], env={"WEB_CONCURRENCY": "5"}).workers == 5
    assert parse(["app:app"], env={"WEB_CONCURRENCY": "5"}).source("workers") == \
        "env WEB_CONCURRENCY"
    write(tmp_path / "gunicorn.conf.py", "workers = 3\n")
    assert parse(["app:app"], env={"WEB_CONCURRENCY": "5"}, cwd=tmp_path).workers == 3
    assert parse(["-w", "2", "app:app"], env={"WEB_CONCURRENCY": "5"}).workers == 2


def test_bad_web_concurrency_names_it():
    with pytest.raises(ConfigError, match=r"WEB_CONCURRENCY \(workers\): invalid value 'lots'"):
        parse(["app:app"], env={"WEB_CONCURRENCY": "lots"})


def test_berth_env_variables_cover_bools_lists_and_sizes():
    cfg = parse(["app:app"], env={"BERTH_PRELOAD_APP": "true",
                                  "BERTH_BIND": "127.0.0.1:9001, unix:/tmp/x.sock",
                                  "BERTH_RAW_ENV": "A=1 'B=two words'",
                                  "BERTH_BODY_BUFFER_SIZE": "64k", "BERTH_WORKERS": "auto"})
    assert cfg.preload_app is True
    assert cfg.bind == ["127.0.0.1:9001", "unix:/tmp/x.sock"]
    assert cfg.raw_env == ["A=1", "B=two words"]
    assert cfg.body_buffer_size == 64 * 1024
    assert cfg.source("preload_app") == "env BERTH_PRELOAD_APP"


def test_empty_env_variable_counts_as_unset():
    assert parse(["app:app"], env={"BERTH_WORKERS": ""}).source("workers") == "default"


def test_bad_env_value_names_the_variable_the_value_and_what_is_accepted():
    with pytest.raises(ConfigError) as exc:
        parse(["app:app"], env={"BERTH_THREADS": "many"})
    assert str(exc.value) == ("BERTH_THREADS (threads): invalid value 'many'; expected a whole "
                              "number >= 1, or auto")


def test_cmd_args_errors_name_the_variable():
    with pytest.raises(ConfigError, match="^GUNICORN_CMD_ARGS: unrecognized arguments: --nope"):
        parse(["app:app"], env={"GUNICORN_CMD_ARGS": "--nope"})
    with pytest.raises(ConfigError, match=r"^BERTH_CMD_ARGS: --workers \(workers\): invalid"):
        parse(["app:app"], env={"BERTH_CMD_ARGS": "--workers=zero"})


def test_app_may_come_from_the_config_file_or_env(tmp_path):
    write(tmp_path / "gunicorn.conf.py", 'wsgi_app = "proto_app:app"\n')
    assert parse([], cwd=tmp_path).app_uri == "proto_app:app"
    assert parse([], env={"BERTH_WSGI_APP": "x:y"}).app_uri == "x:y"
    assert parse(["a:b"], env={"BERTH_WSGI_APP": "x:y"}).app_uri == "a:b"


def test_missing_app_is_a_config_error():
    with pytest.raises(ConfigError, match="no app given"):
        parse([])
    assert parse([], require_app=False).app_uri == ""


# --- config files --------------------------------------------------------------------------

def test_config_file_settings_and_bind_as_string_or_list(tmp_path):
    write(tmp_path / "one.py", 'bind = "127.0.0.1:9002"\naccesslog = "-"\npreload_app = True\n')
    write(tmp_path / "two.py", 'bind = ["127.0.0.1:9003", "127.0.0.1:9004"]\n')
    cfg = parse(["-c", "one.py", "app:app"], cwd=tmp_path)
    assert cfg.bind == ["127.0.0.1:9002"] and cfg.preload_app is True
    assert cfg.source("bind") == "file one.py" and cfg.source("config") == "cli"
    assert parse(["-c", "two.py", "app:app"], cwd=tmp_path).bind == \
        ["127.0.0.1:9003", "127.0.0.1:9004"]


def test_config_file_helpers_imports_and_none_are_ignored(tmp_path):
    write(tmp_path / "gunicorn.conf.py", """\
        import multiprocessing
        import os
        port = os.environ.get("APP_PORT", "9005")
        bind = f"127.0.0.1:{port}"
        timeout = os.environ.get("NO_SUCH_VARIABLE")   # None: keep the default
        accesslog = os.environ.get("NO_SUCH_VARIABLE")   # but None is Gunicorn's "off" here
        _private = 1
        def helper():
            return 2
        class Thing:
            pass
        threads = helper()
    """)
    cfg = parse(["app:app"], cwd=tmp_path)
    assert cfg.bind == ["127.0.0.1:9005"]
    assert cfg.threads == 2
    assert cfg.timeout == 30 and cfg.source("timeout") == "default"
    # Gunicorn's accesslog None (its default) is no access log, where berth's default is
    # stdout: an explicit None keeps Gunicorn's meaning (it kept stdout before)
    assert cfg.accesslog == "none" and cfg.source("accesslog") != "default"


def test_berth_conf_is_preferred_over_gunicorn_conf_and_that_is_noted(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 3\n")
    write(tmp_path / "berth.conf.py", "workers = 4\n")
    cfg = parse(["app:app"], cwd=tmp_path)
    assert cfg.workers == 4 and cfg.source("workers") == "file berth.conf.py"
    assert cfg.source("config") == "auto"
    notes = [line for _, line in cfg.notices]
    assert any("berth.conf.py" in n and "gunicorn.conf.py is ignored" in n for n in notes)


def test_explicit_config_disables_auto_loading(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 3\n")
    write(tmp_path / "other.py", "threads = 2\n")
    cfg = parse(["-c", "other.py", "app:app"], cwd=tmp_path)
    assert cfg.workers == "auto" and cfg.threads == 2


def test_config_from_env_and_cmd_args(tmp_path):
    write(tmp_path / "a.py", "workers = 5\n")
    write(tmp_path / "b.py", "workers = 6\n")
    assert parse(["app:app"], env={"BERTH_CONFIG": "a.py"}, cwd=tmp_path).workers == 5
    assert parse(["app:app"], env={"GUNICORN_CMD_ARGS": "-c b.py"}, cwd=tmp_path).workers == 6
    assert parse(["-c", "b.py", "app:app"], env={"BERTH_CONFIG": "a.py"},
                 cwd=tmp_path).workers == 6


def test_python_module_config(tmp_path, monkeypatch):
    write(tmp_path / "berth_test_settings_mod.py", "workers = 7\ntimeout = 12\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse(["-c", "python:berth_test_settings_mod", "app:app"])
    assert (cfg.workers, cfg.timeout) == (7, 12.0)
    assert cfg.source("workers") == "file python:berth_test_settings_mod"


@pytest.mark.parametrize(("body", "pattern"), [
    ("workers = = 2\n", r"^bad\.py: line 1: syntax error"),
    ("x = 1\nraise RuntimeError('boom')\n", r"^bad\.py: line 2: RuntimeError: boom$"),
    ("import no_such_module_for_berth\n", r"^bad\.py: line 1: ModuleNotFoundError: "),
    ("wokers = 4\n", r"^bad\.py: unknown setting 'wokers' \(did you mean 'workers'\?\)$"),
    ("def post_frok(server, worker):\n    pass\n",
     r"^bad\.py: unknown setting 'post_frok' \(did you mean 'post_fork'\?\)$"),
    # a flag's name where the setting's is another: Gunicorn ignores it, and the setting
    # keeps its default in silence
    ("preload = True\n", r"^bad\.py: unknown setting 'preload' \(did you mean 'preload_app'\?\)$"),
    ("access_logfile = '-'\n",
     r"^bad\.py: unknown setting 'access_logfile' \(did you mean 'accesslog'\?\)$"),
    ("workers = 'many'\n", r"^bad\.py: workers: invalid value 'many'; expected a whole"),
    ("timeout = -1\n", r"^bad\.py: timeout: invalid value -1; expected a number"),
    ("workers = 4 * 0.75 + 0.2\n",  # (was cut to 3 in silence; Gunicorn refuses any float)
     r"^bad\.py: workers: invalid value 3\.2; expected a whole number >= 1, or auto$"),
    ("bind = 8000\n", r"^bad\.py: bind: invalid value 8000; expected a string or a list of "
                      r"strings \(ADDRESS, e\.g\. 127\.0\.0\.1:8000\)$"),
    ("post_fork = 3\n", r"^bad\.py: post_fork: invalid value 3; expected a function taking 2"),
    ("def post_fork(server):\n    pass\n",
     r"^bad\.py: post_fork: invalid value <function post_fork.*>; expected a function taking "
     r"2 arguments \(server, worker\)$"),
    ("import sys\nsys.exit(3)\n", r"^bad\.py: called exit\(3\)$"),
    # a string setting given a list, a bool or an object: refused, as Gunicorn refuses it
    # ("Not a string"), not taken as its repr ("['src'" and " 'lib']" on sys.path)
    ("pythonpath = ['src', 'lib']\n",
     r"^bad\.py: pythonpath: invalid value \['src', 'lib'\]; expected a string$"),
    ("chdir = True\n", r"^bad\.py: chdir: invalid value True; expected a string$"),
    ("import sys\nerrorlog = sys.stderr\n", r"^bad\.py: errorlog: invalid value <.*>; "
                                            r"expected a string$"),
    ("bind = [['127.0.0.1:8000']]\n", r"^bad\.py: bind: invalid value \[\['127\.0\.0\.1:8000'\]\]"
                                       r"; expected a string$"),
])
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, body, pattern):
    write(tmp_path / "bad.py", body)
    with pytest.raises(ConfigError) as exc:
        parse(["-c", "bad.py", "app:app"], cwd=tmp_path)
    assert "\n" not in str(exc.value)
    assert re.search(pattern, str(exc.value)), str(exc.value)


def test_constants_and_everyday_names_in_a_config_file_are_ignored_as_in_gunicorn(tmp_path):
    # Gunicorn's settings are lower-case, and it ignores every other name: a constant that
    # differs from a setting only in case is not a typo of it (nor is a flag's everyday name)
    write(tmp_path / "c.py", 'import os\n'
                             'LOG_LEVEL = os.environ.get("BERTH_TEST_NO_SUCH", "INFO")\n'
                             'TIMEOUT = 5\n'
                             'WORKERS = os.environ.get("BERTH_TEST_NO_SUCH")\n'
                             'if WORKERS:\n'
                             '    workers = int(WORKERS)\n'
                             'Workers = 9\n'
                             'env = "production"\n'
                             'name = "shop"\n'
                             'log_file = "/var/log/shop.log"\n'
                             'keepalive = 7\n')
    cfg = parse(["-c", "c.py", "app:app"], cwd=tmp_path)
    assert cfg.keepalive == 7.0
    assert cfg.timeout == BY_NAME["timeout"].default and not cfg.is_set("workers")
    assert not cfg.is_set("loglevel") and not cfg.is_set("raw_env")


def test_a_list_setting_takes_any_iterable_of_strings(tmp_path):
    # (as Gunicorn does: a set, a generator)
    write(tmp_path / "c.py", 'bind = {"127.0.0.1:19210"}\n'
                             'raw_env = (f"K{i}=v" for i in range(2))\n')
    cfg = parse(["-c", "c.py", "app:app"], cwd=tmp_path)
    assert cfg.bind == ["127.0.0.1:19210"] and cfg.raw_env == ["K0=v", "K1=v"]


@pytest.mark.parametrize("argv, name, value", [
    (["--limit-request-line", "16384"], "limit_request_line", 8190),
    (["--limit-request-fields", "40000"], "limit_request_fields", 32768),
])
def test_a_request_limit_above_gunicorns_maximum_is_lowered_to_it_with_a_warning(
        argv, name, value):
    """Gunicorn's parser lowers --limit-request-line to 8190 and --limit-request-fields to
    32768 (what its docs give as the range): a copied `--limit-request-line 16384` must not
    let longer request lines reach the app under berth than under Gunicorn."""
    cfg = parse([*argv, "app:app"])
    assert getattr(cfg, name) == value
    assert any(level == "warning" and argv[0] in line and f"maximum, {value}" in line
               for level, line in cfg.notices), cfg.notices
    at_cap = parse([argv[0], str(value), "app:app"])
    assert getattr(at_cap, name) == value and not any(argv[0] in line
                                                       for _, line in at_cap.notices)


def test_a_string_setting_takes_a_path_object_or_a_number_as_its_text(tmp_path):
    write(tmp_path / "c.py", 'import pathlib\nchdir = pathlib.Path("/srv") / "app"\n'
                             'pythonpath = pathlib.Path("src")\nproc_name = 5\n')
    cfg = parse(["-c", "c.py", "app:app"], cwd=tmp_path)
    assert (cfg.chdir, cfg.pythonpath, cfg.proc_name) == ("/srv/app", "src", "5")


def test_a_helper_close_to_a_setting_the_file_also_sets_is_not_a_typo(tmp_path):
    write(tmp_path / "c.py", 'log_level = "debug"\nloglevel = log_level\n')
    assert parse(["-c", "c.py", "app:app"], cwd=tmp_path).loglevel == "debug"


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'nope.py' does not exist"):
        parse(["-c", "nope.py", "app:app"])


# --- hooks in config files -----------------------------------------------------------------

def test_hooks_are_loaded_from_the_file(tmp_path):
    write(tmp_path / "h.py", """\
        def on_starting(server): pass
        def post_fork(server, worker): pass
        def pre_request(worker, req): pass
        def post_request(worker, req): return "two-arg"
        def nworkers_changed(server, new_value, old_value): pass
        when_ready = "os.path.exists"   # an import path is accepted, like Gunicorn
    """)
    cfg = parse(["-c", "h.py", "app:app"], cwd=tmp_path)
    assert callable(cfg.on_starting) and callable(cfg.post_fork)
    assert cfg.post_request(None, None, {}, None) == "two-arg"  # wrapped to 4 arguments
    assert cfg.worker_exit is None
    assert cfg.source("post_fork") == "file h.py"


def test_hook_with_default_or_star_args_is_accepted(tmp_path):
    write(tmp_path / "h.py", """\
        def post_fork(server, worker, extra=None): pass
        def worker_exit(*args): pass
    """)
    cfg = parse(["-c", "h.py", "app:app"], cwd=tmp_path)
    assert cfg.post_fork and cfg.worker_exit


# --- Gunicorn's flags ----------------------------------------------------------------------

GUNICORN_DOCKERFILE_FLAGS = [
    "--workers=2", "--threads=4", "--worker-class=gthread", "--log-file=-",
    "--worker-tmp-dir", "/dev/shm", "--timeout", "60", "--graceful-timeout", "5",
    "--keep-alive", "5", "--max-requests", "1000", "--max-requests-jitter", "50",
    "--access-logfile", "-", "--error-logfile", "-", "--log-level", "debug",
    "--access-logformat", "%(h)s %(r)s %(s)s", "--limit-request-line", "8190",
    "--limit-request-fields", "50", "--limit-request-field_size", "4096", "--backlog", "64",
    "--preload", "--chdir", "/", "--pythonpath", "/srv", "-e", "A=B", "--forwarded-allow-ips",
    "*", "--proxy-protocol", "off", "--reuse-port", "--umask", "0o22", "--capture-output",
    "--statsd-host", "localhost:8125", "--name", "web", "--no-sendfile",
    "--worker-connections", "100", "--disable-redirect-access-to-syslog",
    "--logger-class", "gunicorn.glogging.Logger", "--log-config", "/etc/log.ini",
]


def test_a_typical_gunicorn_command_line_parses():
    cfg = parse([*GUNICORN_DOCKERFILE_FLAGS, "app:app"])
    assert (cfg.workers, cfg.threads, cfg.worker_class) == (2, 4, "gthread")
    assert cfg.errorlog == "-" and cfg.timeout == 60.0 and cfg.preload_app is True
    assert cfg.umask == 0o22 and cfg.limit_request_field_size == 4096
    assert cfg.reuse_port is True and cfg.sendfile is False
    warnings = [line for level, line in cfg.notices if level == "warning"]
    infos = [line for level, line in cfg.notices if level == "info"]
    assert cfg.forwarded_allow_ips == "*" and cfg.proxy_protocol == "off"
    assert cfg.logconfig == "/etc/log.ini" and cfg.disable_redirect_access_to_syslog
    for name in ("reuse_port", "umask", "sendfile", "proc_name", "logconfig",
                 "disable_redirect_access_to_syslog"):  # implemented: no line
        assert not any(line.startswith(f"{name} (") for line in warnings + infos), name
    assert any(line.startswith("worker_tmp_dir (--worker-tmp-dir, from cli) is not needed")
               for line in infos)
    # Gunicorn's own default spelled out changes nothing and is not reported
    assert not any(line.startswith("logger_class") for line in warnings)


def test_threads_do_not_apply_to_the_asgi_worker():
    cfg = parse(["-k", "asgi", "--threads", "4", "app:app"])
    assert cfg.threads == 1
    assert ("info", "threads (cli) does not apply to -k asgi (one event loop per worker): 1") \
        in cfg.notices


@pytest.mark.parametrize(("name", "kind", "notice"), [
    ("asgi", "asgi", False), ("gunicorn.workers.gasgi.ASGIWorker", "asgi", False),
    ("uvicorn.workers.UvicornWorker", "asgi", True), ("uvicorn_worker.UvicornWorker", "asgi", True),
])
def test_asgi_worker_classes_and_uvicorns(name, kind, notice):
    cfg = parse(["-k", name, "app:app"])
    assert cfg.worker_class == kind
    lines = [line for level, line in cfg.notices if level == "info" and line.startswith("-k ")]
    assert lines == ([f"-k {name} (cli): served by berth's ASGI worker (-k asgi), with "
                      f"Uvicorn's proxy headers: from a peer in --forwarded-allow-ips, "
                      f"X-Forwarded-Proto sets the scheme and X-Forwarded-For the client "
                      f"(--forwarded-remote-addr on, taking the address Uvicorn takes); "
                      f"header names with '_' reach the app, as Uvicorn passes them"]
                     if notice else [])
    assert cfg.decisions.underscore_names == ("uvicorn" if notice else "gunicorn")
    # as Uvicorn reads them by default under Gunicorn (its proxy_headers is on)
    assert cfg.forwarded_remote_addr is notice
    assert cfg.source("forwarded_remote_addr") == ("auto" if notice else "default")
    rules = ("uvicorn", "uvicorn") if notice else ("gunicorn", "berth")
    assert (cfg.decisions.scheme_rule, cfg.decisions.client_rule) == rules


def test_under_uvicorns_worker_class_a_setting_given_keeps_berths_meaning(tmp_path):
    write(tmp_path / "gunicorn.conf.py", """\
        worker_class = "uvicorn.workers.UvicornH11Worker"
        secure_scheme_headers = {"X-SCHEME": "https"}
        forwarded_remote_addr = False
        """)
    cfg = parse(["app:app"], cwd=tmp_path)
    assert not cfg.forwarded_remote_addr
    assert (cfg.decisions.scheme_rule, cfg.decisions.client_rule) == ("gunicorn", "berth")
    assert cfg.decisions.underscore_names == "uvicorn"
    assert ("info", "-k uvicorn.workers.UvicornH11Worker (file gunicorn.conf.py): served by "
                    "berth's ASGI worker (-k asgi), with Uvicorn's proxy headers: from a peer in "
                    "--forwarded-allow-ips, secure_scheme_headers (file gunicorn.conf.py) set "
                    "the scheme and the client stays the peer (gunicorn.conf.py: "
                    "forwarded_remote_addr is off); header names with '_' reach the app, as "
                    "Uvicorn passes them") in cfg.notices
    cfg = parse(["--header-map", "drop", "app:app"], cwd=tmp_path)
    assert cfg.decisions.underscore_names == "gunicorn"
    assert ("header names with '_' as header_map (cli) says" in
            next(line for _, line in cfg.notices if line.startswith("-k ")))
    cfg = parse(["--forwarded-remote-addr", "app:app"], cwd=tmp_path)
    assert cfg.forwarded_remote_addr and cfg.decisions.client_rule == "berth"
    # the class given last decides: -k asgi is Gunicorn's own worker, with Gunicorn's rules
    cfg = parse(["-k", "asgi", "app:app"], cwd=tmp_path)
    assert cfg.uvicorn_worker == "" and not any("Uvicorn" in line for _, line in cfg.notices)


@pytest.mark.parametrize("name", ["sync", "egg:gunicorn#sync", "gunicorn.workers.sync.SyncWorker"])
def test_sync_worker_class_aliases(name):
    assert parse(["-k", name, "app:app"]).worker_class == "sync"


@pytest.mark.parametrize("name", ["gthread", "gunicorn.workers.gthread.ThreadWorker"])
def test_gthread_worker_class_aliases(name):
    assert parse(["-k", name, "app:app"]).worker_class == "gthread"


REFUSALS = [
    (["-k", "gevent"], "--worker-class (worker_class) = 'gevent': berth runs WSGI apps"),
    (["-k", "tornado"], "'tornado'"),
    (["-k", "eventlet"], "eventlet"),
    (["--daemon"], "berth stays in the foreground"),
    (["--paste", "dev.ini"], "PasteDeploy"),
    (["--protocol", "uwsgi"], "HTTP only"),
    (["--http-protocols", "h2,h1"], "HTTP/1.x only"),
    (["--user", "berth-no-such-user"], "run the container as that user"),
    (["--group", "berth-no-such-group"], "with that group"),
    (["--dirty-app", "x:y"], "dirty apps"),
    (["--spew"], "--spew (spew) = True: tracing every line"),
    (["--strip-header-spaces"], "request-smuggling vector"),
    (["--permit-obsolete-folding"], "request-smuggling vector"),
    (["--logger-class", "myapp.MyLogger"], "custom logger class is not supported"),
    (["--logger-class", "myapp.MyLogger"], "logconfig_dict"),
    (["--control-socket", "/run/app.ctl"], "berth has no control socket (gunicornc)"),
    (["--control-socket-mode", "0660"], "no control socket"),
    (["--header-map", "keep"], "expected drop, refuse or dangerous"),
]


@pytest.mark.parametrize(("args", "message"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_settings_that_would_change_security_or_meaning_are_refused(args, message):
    with pytest.raises(ConfigError) as exc:
        parse(["app:app", *args])
    assert message in str(exc.value)


def test_refused_settings_at_a_value_that_changes_nothing_are_accepted(tmp_path):
    import grp
    import os
    import pwd

    write(tmp_path / "copied.py", f"""\
        proxy_protocol = "off"
        suppress_ragged_eofs = True
        do_handshake_on_connect = False
        certfile = None
        daemon = False
        http_protocols = "h1"
        spew = False
        strip_header_spaces = False
        permit_obsolete_folding = False
        logger_class = "gunicorn.glogging.Logger"
        control_socket_mode = 0o600
        user = {pwd.getpwuid(os.geteuid()).pw_name!r}
        group = {grp.getgrgid(os.getegid()).gr_name!r}
    """)
    parse(["-c", "copied.py", "app:app"], cwd=tmp_path)


def test_the_method_settings_are_read():
    cfg = parse(["app:app", "--permit-unconventional-http-method", "--casefold-http-method"])
    assert cfg.permit_unconventional_http_method and cfg.casefold_http_method
    cfg = parse(["app:app"])
    assert not cfg.permit_unconventional_http_method and not cfg.casefold_http_method


def test_gunicorns_default_control_socket_path_is_accepted():
    from berth.converters import gunicorn_control_socket

    parse(["--control-socket", gunicorn_control_socket(), "app:app"])


@pytest.mark.parametrize("value", ["simple", "gunicorn.instrument.statsd.Statsd"])
def test_gunicorns_own_logger_classes_are_accepted(value):
    # Gunicorn's Config.logger_class takes "simple" as its default and switches the default
    # to its StatsD logger when statsd_host is set: a config that spells either out runs
    # Gunicorn's logging, which berth does; refusing them refused a working Gunicorn config
    parse(["app:app", "--logger-class", value])
    parse(["app:app", "--logger-class", value, "--statsd-host", "127.0.0.1:8125"])


def test_a_custom_class_object_in_a_config_file_is_refused_not_ignored(tmp_path):
    # Gunicorn takes a class object for logger_class and worker_class; berth skipped every
    # class in a config file, so these ran berth's own logger and gthread worker, silently
    for name, base, module, words in (
            ("logger_class", "Logger", "gunicorn.glogging", "custom logger class is not supported"),
            ("worker_class", "SyncWorker", "gunicorn.workers.sync", "MySyncWorker")):
        write(tmp_path / f"{name}.py", f"""\
            from {module} import {base}
            class My{base}({base}):
                pass
            {name} = My{base}
        """)
        with pytest.raises(ConfigError, match=words):
            parse(["-c", f"{name}.py", "app:app"], cwd=tmp_path)


def test_gunicorns_worker_class_objects_are_taken(tmp_path):
    pytest.importorskip("gunicorn.workers.sync")
    write(tmp_path / "g.py", """\
        from gunicorn.workers.sync import SyncWorker
        worker_class = SyncWorker
        class Helper:  # (a class under another name is still not a setting)
            pass
    """)
    cfg = parse(["-c", "g.py", "app:app"], cwd=tmp_path)
    assert cfg.worker_class == "sync"


def test_gunicorns_logger_class_object_is_accepted(tmp_path):
    pytest.importorskip("gunicorn.glogging")
    write(tmp_path / "g.py", "from gunicorn.glogging import Logger\nlogger_class = Logger\n")
    parse(["-c", "g.py", "app:app"], cwd=tmp_path)


def test_a_custom_logger_class_object_is_refused_not_ignored(tmp_path):
    """A config file's `logger_class = MyLogger` (a Logger subclass that filters health
    checks, a common recipe) is refused as the string form is, not skipped as a helper."""
    pytest.importorskip("gunicorn.glogging")
    write(tmp_path / "g.py", "from gunicorn import glogging\n"
                             "class QuietLogger(glogging.Logger):\n    pass\n"
                             "logger_class = QuietLogger\n")
    with pytest.raises(ConfigError, match=r"^g\.py: logger_class = <class "
                                          r"'__config__\.QuietLogger'>: a custom logger"):
        parse(["-c", "g.py", "app:app"], cwd=tmp_path)


@pytest.mark.parametrize("body, kind, uvicorn", [
    ("from uvicorn.workers import UvicornWorker\nworker_class = UvicornWorker\n", "asgi",
     "uvicorn.workers.UvicornWorker"),
    ("from gunicorn.workers.sync import SyncWorker\nworker_class = SyncWorker\n", "sync", ""),
    ("from gunicorn.workers.gthread import ThreadWorker\nworker_class = ThreadWorker\n",
     "gthread", ""),
])
def test_a_worker_class_given_as_a_class_object_is_read_as_its_path(tmp_path, body, kind,
                                                                     uvicorn):
    """Gunicorn takes a class object for worker_class (`from uvicorn.workers import
    UvicornWorker; worker_class = UvicornWorker`); berth skipped it as a helper and served
    the ASGI app with its WSGI worker: every request a 500."""
    pytest.importorskip(body.split()[1])
    write(tmp_path / "g.py", body)
    cfg = parse(["-c", "g.py", "app:app"], cwd=tmp_path)
    assert (cfg.worker_class, cfg.uvicorn_worker) == (kind, uvicorn)
    assert cfg.source("worker_class") == "file g.py"


def test_a_worker_class_object_berth_does_not_have_is_refused(tmp_path):
    write(tmp_path / "g.py", "class EventletWorker:\n    pass\nworker_class = EventletWorker\n")
    with pytest.raises(ConfigError, match=r"^g\.py: worker_class = <class "
                                          r"'__config__\.EventletWorker'>: .*not "
                                          r"'__config__\.EventletWorker'"):
        parse(["-c", "g.py", "app:app"], cwd=tmp_path)


@pytest.mark.parametrize(("env", "argv", "expected", "source"), [
    ({}, [], True, "default"),
    ({"SENDFILE": "0"}, [], False, "env SENDFILE"),
    ({"SENDFILE": "no"}, [], False, "env SENDFILE"),
    ({"SENDFILE": "yes"}, [], True, "env SENDFILE"),
    ({"SENDFILE": "1"}, ["--no-sendfile"], False, "cli"),
    ({"SENDFILE": "0", "BERTH_SENDFILE": "true"}, [], True, "env BERTH_SENDFILE"),
])
def test_sendfile_follows_gunicorns_sendfile_variable_when_not_set(env, argv, expected, source):
    cfg = parse([*argv, "app:app"], env=env)
    assert (cfg.sendfile, cfg.source("sendfile")) == (expected, source)


def test_gunicorns_logging_settings_are_taken_without_a_warning(tmp_path):
    write(tmp_path / "g.py", """\
        worker_connections = 10
        logconfig_dict = {"version": 1}
        syslog = True
        syslog_facility = "local7"
        proc_name = "web"
    """)
    cfg = parse(["-c", "g.py", "app:app"], cwd=tmp_path)
    assert cfg.logconfig_dict == {"version": 1} and cfg.syslog
    assert cfg.syslog_facility == "local7"
    assert not [line for level, line in cfg.notices if level == "warning"]


def test_every_setting_is_implemented_not_needed_or_refused():
    """Item 9: a Gunicorn setting berth accepts does what it does in Gunicorn; none is
    accepted and ignored (the last ones, logging's, are implemented)."""
    assert {s.status for s in SETTINGS} <= {IMPLEMENTED, BERTH_ONLY, NOT_NEEDED, REFUSED}


def test_ssl_context_hook_must_take_two_arguments(tmp_path):
    write(tmp_path / "t.py", "def ssl_context(conf, default):\n    return default()\n")
    assert parse(["-c", "t.py", "app:app"], cwd=tmp_path).ssl_context is not None
    write(tmp_path / "u.py", "def ssl_context(conf):\n    return None\n")
    with pytest.raises(ConfigError, match="ssl_context"):
        parse(["-c", "u.py", "app:app"], cwd=tmp_path)


def test_pre_exec_hook_is_accepted_with_an_info_line(tmp_path):
    write(tmp_path / "t.py", "def pre_exec(server):\n    pass\n")
    cfg = parse(["-c", "t.py", "app:app"], cwd=tmp_path)
    assert any(level == "info" and line.startswith("pre_exec (from file t.py) is not needed")
               for level, line in cfg.notices)


# --- values decided at start ---------------------------------------------------------------

def test_auto_values_are_resolved_and_recorded_as_auto():
    cfg = load(["app:app"], environ=dict(BASE_ENV), cwd="/nonexistent",
                      info=fake_info(cpu_limit=0.5, cpus=64, memory=512 << 20))
    assert (cfg.workers, cfg.threads) == (2, 4)
    assert cfg.source("workers") == cfg.source("threads") == "auto"
    assert cfg.source("graceful_timeout") == "auto" and cfg.graceful_timeout == 8.0
    assert cfg.decisions.workers_auto is True
    assert cfg.decisions.sizing.startswith("workers=2 threads=4 (auto, at least 2 workers: "
                                        "cpu quota 0.5")


def test_host_sized_workers_warn_at_start():
    # cpu_count() * 2 + 1 of a copied config on an 8-CPU host, in a 1-CPU container
    cfg = load(["-w", "17", "app:app"], environ=dict(BASE_ENV), cwd="/nonexistent",
                      info=fake_info(cpu_limit=1.0, cpus=8))
    assert cfg.workers == 17 and cfg.decisions.workers_auto is False
    assert any("auto sizing would start 2" in line for line in cfg.decisions.sizing_warnings)


def test_print_config_render_is_python_with_sources(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 3\ndef post_fork(server, worker): pass\n")
    cfg = load(["--timeout", "9", "app:app"], environ=dict(BASE_ENV), cwd=str(tmp_path),
                      info=fake_info(cpus=2))
    text = render_config(cfg)
    lines = {ln.split(" = ")[0]: ln for ln in text.splitlines()}
    assert re.match(r"workers = 3 +# file gunicorn.conf.py$", lines["workers"])
    assert re.match(r"timeout = 9.0 +# cli$", lines["timeout"])
    assert re.match(r"threads = 4 +# auto: workers=3 threads=4 \(", lines["threads"])
    assert re.match(r"backlog = 2048 +# default$", lines["backlog"])
    assert "post_fork = <function post_fork>" in lines["post_fork"]
    assert re.match(r"reuse_port = False +# default$", lines["reuse_port"])


# --- end to end ----------------------------------------------------------------------------

def test_print_config_subprocess_shows_every_source(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "backlog = 99\n")
    res = run_berth(["--print-config", "--timeout", "9"], cwd=str(tmp_path),
                    env={"BERTH_KEEPALIVE": "4", "GUNICORN_CMD_ARGS": "--max-requests 5"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert re.search(r"^backlog = 99 +# file gunicorn.conf.py$", out, re.M)
    assert re.search(r"^timeout = 9.0 +# cli$", out, re.M)
    assert re.search(r"^keepalive = 4.0 +# env BERTH_KEEPALIVE$", out, re.M)
    assert re.search(r"^max_requests = 5 +# env GUNICORN_CMD_ARGS$", out, re.M)
    assert re.search(r"^workers = \d+ +# auto: workers=\d+ threads=\d+ \(", out, re.M)


def test_check_config_exit_codes(tmp_path):
    ok = run_berth(["--check-config", "proto_app:app"], cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stderr
    broken = run_berth(["--check-config", "broken_app:app"], cwd=str(tmp_path))
    assert broken.returncode == 1, broken.stderr
    assert "Traceback" in broken.stderr
    missing = run_berth(["--check-config", "no_such_module_xyz:app"], cwd=str(tmp_path))
    assert missing.returncode == 1
    wrong = run_berth(["--check-config", "--threads", "zero", "proto_app:app"],
                      cwd=str(tmp_path))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0 and "--threads" in wrong.stderr


def test_bad_config_file_exits_2_with_one_line(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = (\n")
    res = run_berth(["proto_app:app"], cwd=str(tmp_path))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "gunicorn.conf.py: line" in lines[0], res.stderr


@pytest.mark.parametrize("args", [["-k", "gevent"], ["--certfile", "missing-cert.pem"],
                                  ["--workers", "-3"], ["--strip-header-spaces"],
                                  ["--logger-class", "myapp.Logger"], ["--spew"]])
def test_refused_or_wrong_flag_exits_2_with_one_line(tmp_path, args):
    res = run_berth([*args, "proto_app:app"], cwd=str(tmp_path))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_start_logs_the_sizing_line_once_and_the_ignored_settings(berth, tmp_path):
    write(tmp_path / "gunicorn.conf.py",
          "worker_connections = 10\n")
    srv = berth(["--worker-tmp-dir", "/dev/shm", "proto_app:app"])
    assert http_get(srv.port, "/hello")[0] == 200
    err = srv.stderr()
    sizing = [ln for ln in err.splitlines() if re.search(r"\] workers=\d+ threads=\d+ \(", ln)]
    assert len(sizing) == 1, err
    assert "configuration file gunicorn.conf.py loaded (found in the current directory)" in err
    assert "[INFO] at most 10 connections per worker (worker_connections; open files limit" \
        in err
    assert "[INFO] worker_tmp_dir (--worker-tmp-dir, from cli) is not needed" in err


def test_sighup_rereads_the_config_file(berth, tmp_path):
    conf = write(tmp_path / "gunicorn.conf.py", "workers = 1\n")
    srv = berth(["--threads", "1", "proto_app:app"])
    conf.write_text("workers = 2\n")
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("starting 2 workers of generation 2", timeout=10)
    assert http_get(srv.port, "/hello")[0] == 200


def test_sighup_gives_the_new_workers_the_changed_raw_env(berth, tmp_path):
    # the new workers saw the launch's --env for ever. Gunicorn's reload puts the old --env's
    # keys back as they were at launch (or removes them), then sets the new ones.
    conf = write(tmp_path / "gunicorn.conf.py",
                 'raw_env = ["DROPIN_FOO=one", "DROPIN_KEPT=file", "DROPIN_GONE=x"]\n')
    srv = berth(["-w", "1", "--threads", "1", "proto_app:app"],
                env={"DROPIN_KEPT": "launch"})

    def osenv(key):
        return json.loads(http_get(srv.port, f"/osenv?key={key}")[2])[key]

    assert [osenv(k) for k in ("DROPIN_FOO", "DROPIN_KEPT", "DROPIN_GONE")] == [
        "one", "file", "x"]
    old = served_by(srv.port)
    conf.write_text('raw_env = ["DROPIN_FOO=two"]\n')
    srv.signal(signal.SIGHUP)
    assert wait_replaced(srv.port, old, timeout=10)
    assert [osenv(k) for k in ("DROPIN_FOO", "DROPIN_KEPT", "DROPIN_GONE")] == [
        "two", "launch", None]
    # a file that no longer reads is not applied: a worker started later keeps the --env too
    conf.write_text('raw_env = ["DROPIN_FOO=three"\n')
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("configuration not reloaded")
    srv.signal(signal.SIGTTIN)
    assert wait_for(lambda: len({served_by(srv.port) for _ in range(6)}) == 2, timeout=10)
    assert {osenv("DROPIN_FOO") for _ in range(6)} == {"two"}


def test_pidfile_is_written_and_removed(berth, tmp_path):
    pidfile = tmp_path / "berth.pid"
    srv = berth(["-w", "1", "--pid", str(pidfile), "proto_app:app"])
    assert pidfile.read_text().strip() == str(srv.pid)
    srv.stop()
    assert not pidfile.exists()


def test_pidfile_of_a_running_berth_is_neither_overwritten_nor_removed(berth, tmp_path):
    # a second berth given the same --pid (the same bind, by mistake) overwrote the file,
    # failed to bind, and removed it at exit: the running berth's pid file was gone (kill
    # -HUP $(cat berth.pid) failed). Gunicorn refuses to start: "Already running on PID".
    pidfile = tmp_path / "berth.pid"
    first = berth(["-w", "1", "--pid", str(pidfile), "proto_app:app"])
    second = berth(["-w", "1", "--pid", str(pidfile), "proto_app:app"], port=first.port,
                   wait_ready=False)
    assert second.wait(timeout=15) == 1
    assert f"already running on PID {first.pid}" in second.stderr(), second.stderr()
    assert pidfile.read_text().strip() == str(first.pid)
    # a stale file (its process gone) is taken over, as in Gunicorn
    first.stop()
    pidfile.write_text(f"{first.pid}\n")
    third = berth(["-w", "1", "--pid", str(pidfile), "proto_app:app"])
    assert pidfile.read_text().strip() == str(third.pid)
    # a file naming a live process that is not berth (a restarted container keeps its files,
    # and the pid is another program's now) is taken over too
    third.stop()
    other = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        fourth = berth(["-w", "1", "--pid", str(pidfile), "proto_app:app"])
        assert pidfile.read_text().strip() == str(fourth.pid)
    finally:
        other.kill()
        other.wait()


def test_an_asgi_app_under_a_uvicorn_worker_class_object_is_served(berth, tmp_path):
    """The FastAPI recipe's gunicorn.conf.py with the class itself, `worker_class =
    UvicornWorker`: served by berth's ASGI worker, not called as a WSGI app (a 500 each)."""
    pytest.importorskip("uvicorn.workers")
    write(tmp_path / "gunicorn.conf.py", "from uvicorn.workers import UvicornWorker\n"
                                         "worker_class = UvicornWorker\nworkers = 1\n")
    srv = berth(["asgi_app:app"])
    assert http_get(srv.port, "/hello")[0] == 200, srv.stderr()


def test_config_file_bind_used_when_no_bind_flag(berth, tmp_path):
    port = free_port()
    write(tmp_path / "gunicorn.conf.py", f'bind = "127.0.0.1:{port}"\nworkers = 1\n')
    srv = berth(["proto_app:app"], bind=False, port=port)
    assert http_get(port, "/hello")[0] == 200
    assert srv.proc.poll() is None


def test_python_module_config_is_found_in_the_launch_directory_and_reread(tmp_path):
    import sys

    mod = write(tmp_path / "berth_test_launch_dir_conf.py", "workers = 3\n")
    try:
        cfg = parse(["-c", "python:berth_test_launch_dir_conf", "app:app"], cwd=tmp_path)
        assert cfg.workers == 3
        mod.write_text("workers = 4\n# changed\n")
        import importlib

        importlib.invalidate_caches()
        assert parse(["-c", "python:berth_test_launch_dir_conf", "app:app"],
                     cwd=tmp_path).workers == 4
    finally:
        sys.modules.pop("berth_test_launch_dir_conf", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("argv, expected", [
    ([], "off"), (["--proxy-protocol", "--workers", "1"], "auto"),
    (["--proxy-protocol", "v1"], "v1"),
    (["--proxy-protocol", "v2"], "v2"), (["--proxy-protocol", "true"], "auto"),
    (["--proxy-protocol", "off"], "off"), (["--proxy-protocol", "0"], "off"),
])
def test_proxy_protocol_takes_gunicorns_modes(argv, expected):
    assert parse([*argv, "app:app"]).proxy_protocol == expected


def test_a_bad_proxy_protocol_mode_names_the_accepted_ones():
    with pytest.raises(ConfigError,
                       match=r"--proxy-protocol \(proxy_protocol\).*off, v1, v2 or auto"):
        parse(["--proxy-protocol", "v3", "app:app"])


@pytest.mark.parametrize("flag, name", [("--forwarded-allow-ips", "forwarded_allow_ips"),
                                        ("--proxy-allow-from", "proxy_allow_ips")])
@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "1.2.3"])
def test_a_bad_trust_list_entry_is_refused_naming_the_setting(flag, name, value):
    with pytest.raises(ConfigError, match=rf"{flag} \({name}\).*IP addresses, CIDR networks"):
        parse([flag, f"127.0.0.1,{value}", "app:app"])


def test_trust_lists_take_addresses_networks_and_star():
    cfg = parse(["--forwarded-allow-ips", "10.0.0.0/8, fd00::/8,192.0.2.1",
                 "--proxy-allow-from", "*", "app:app"])
    assert cfg.forwarded_allow_ips == "10.0.0.0/8, fd00::/8,192.0.2.1"
    assert cfg.proxy_allow_ips == "*"


@pytest.mark.parametrize("env, argv, expected, source", [
    ({}, [], "127.0.0.1,::1", "default"),
    ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, [], "10.0.0.0/8", "env FORWARDED_ALLOW_IPS"),
    ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, ["--forwarded-allow-ips", "*"], "*", "cli"),
])
def test_forwarded_allow_ips_follows_gunicorns_variable_when_not_set(env, argv, expected,
                                                                      source):
    cfg = parse([*argv, "app:app"], env=env)
    assert (cfg.forwarded_allow_ips, cfg.source("forwarded_allow_ips")) == (expected, source)


def test_a_bad_forwarded_allow_ips_variable_is_refused():
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        parse(["app:app"], env={"FORWARDED_ALLOW_IPS": "nope"})


def test_secure_scheme_headers_must_map_names_to_strings(tmp_path):
    write(tmp_path / "g.py", "secure_scheme_headers = {'X-FORWARDED-PROTO': 1}\n")
    with pytest.raises(ConfigError, match="secure_scheme_headers.*a dict of header names"):
        parse(["-c", "g.py", "app:app"], cwd=tmp_path)
