"""docs/settings.md, generated from `settings.SETTINGS`.

`python -m berth.settingsdoc > docs/settings.md` writes it. A test checks that the committed
file matches the table, so the reference never drifts.
"""

from __future__ import annotations

from berth.settings import (
    BERTH_ONLY,
    HOOK_ARGS,
    IMPLEMENTED,
    NOT_NEEDED,
    REFUSED,
    SETTINGS,
    STATUS_TEXT,
    Setting,
)

INTRO = """\
# Settings

<!-- Generated from berth/settings.py by `python -m berth.settingsdoc > docs/settings.md`;
     do not edit by hand (tests/test_config.py checks that it matches). -->

Every setting is declared once, in `berth/settings.py`; the command line, `--help`, the
environment variables, config files, `--print-config`, `berth doctor` and this page come from
that declaration. Names are Gunicorn's, so a Gunicorn command line or config file runs unchanged.

## Where settings come from

Lowest precedence first; each source replaces the value of the one before:

1. **the default** below. `WEB_CONCURRENCY`, when set, is the default for `workers` (as with
   Gunicorn);
2. **a config file**: `-c FILE` (a Python file), `-c python:MODULE`, or, without `-c`,
   `./berth.conf.py` or else `./gunicorn.conf.py` when one is in the current directory (if both
   are, `berth.conf.py` is loaded and that is logged). Its top-level names that are settings
   become values (`workers = 4`, `bind = ["0.0.0.0:8000"]`, `accesslog = "-"`), functions named
   after a [server hook](#server-hooks) become hooks; other names (imports, helpers) are
   ignored, except a lower-case near-miss of a setting the file does not set (`wokers = 4`),
   or its flag spelled as a name (`preload = True` for `preload_app`), which stops berth
   (Gunicorn ignores both: the setting silently keeps its default); names with a capital
   letter (`TIMEOUT = 5`) are constants, ignored as in Gunicorn. A name set to `None` keeps
   its default (but `accesslog = None`, Gunicorn's default, turns the access log off, as in
   Gunicorn);
3. **`GUNICORN_CMD_ARGS`**, then **`BERTH_CMD_ARGS`**: flags, as on the command line;
4. **`BERTH_<SETTING>`** variables: the setting's name in capitals (`BERTH_WORKERS=4`,
   `BERTH_PRELOAD_APP=true`). Repeatable settings take several values separated by spaces
   (`BERTH_RAW_ENV="A=1 B=2"`), `BERTH_BIND` also by commas;
5. **the command line**.

`--print-config` prints every value with its source (`default`, `file PATH`, `env VAR`, `cli`,
or `auto` when berth computed it at start); `berth doctor` prints it too, with warnings and their
fixes. A wrong value names the setting, the value and what is accepted, and exits 2; so does a
config file that cannot be run. `--check-config` loads the app and exits 0 when it loads, 1 when
it does not, 2 when the configuration is wrong.

**Auto sizing.** `workers` and `threads` default to `auto`: workers = the CPUs the container may
use (its CPU quota, capped by the CPUs it may run on) rounded to the nearest whole number, at
least 2; threads = 4 per worker (1 with `-k sync`). The decision and its inputs are logged in one
line at start, e.g. `workers=2 threads=4 (auto, at least 2 workers: cpu quota 0.5 from cgroup v2
cpu.max; memory 512 MiB; 64 host CPUs ignored)`. A configured count above 2 x usable CPUs + 1
(the host-sized `cpu_count() * 2 + 1` of a copied config) is logged as a warning naming the auto
value.
"""


STRICTER = """\
## Where berth is stricter than Gunicorn, on purpose

- **A well-formed HTTP version other than 1.0 and 1.1 gets 505** (HTTP Version Not
  Supported), HTTP/1.2 to 1.9 included, which Gunicorn serves as it reads them (and answers
  other versions 400). `--permit-unconventional-http-version` serves them all (HTTP/0.9
  excepted: its client could not read an HTTP/1 response). A request line that is not
  `METHOD TARGET HTTP/d.d` is the client's error: 400, never 505.
- **HTTP/1.1 without exactly one Host gets 400**, as RFC 9112 §3.2 requires; Gunicorn serves a
  request without Host.
- **A Host that is not `host[:port]` gets 400** in any version (a space, `/`, `@`, a port that
  is not digits), as RFC 9110 §7.2 requires; Gunicorn serves it, and an app, a cache or a
  router keyed on the host then sees two hosts, a path or a user.
- **An absolute-form target's authority is the host the app sees** (`GET http://a/p` with
  `Host: b` reaches the app with `Host: a`, in the environ's `HTTP_HOST` and the ASGI
  headers), as RFC 9112 §3.2.2 requires (the server MUST ignore the Host field then; it is
  still required and checked); an authority with userinfo (`http://u@a/`) or no host gets
  400. Gunicorn gives the app the Host field: one request, two hosts.
- **Trailer fields are discarded**, never merged into the environ (RFC 9110 §6.5.1): they
  arrive after the app has its environ, and a field sent after the body must not change what
  the head said (a late Host or Expect). Gunicorn keeps them on its request object and answers
  400 to a few names (Host, Authorization...).
- **An app's 1xx status gets 500**, the app's error (logged): a 1xx is interim, never the
  response (RFC 9110 §15.2), and sent as one the client would wait for the final response and
  take the next one for it; berth sends `100 Continue` itself. A status outside 100-599
  (`600 Big`, `099 X`) is no HTTP status (RFC 9110 §15) and gets 500 too. Gunicorn sends
  either as the response (its gthread worker keeps the connection after a 1xx, so the client
  takes the next response for the final one).
- **The access log escapes more**: besides `"` (as Gunicorn), `\\` as `\\\\` and every byte
  outside printable ASCII as `\\xHH` (Apache's style), so a client cannot forge fields or lines.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(setting: Setting) -> str:
    if setting.default_text:
        return setting.default_text
    if setting.default is None:
        return ""
    if setting.action in ("store_true", "store_false") or isinstance(setting.default, bool):
        return "on" if setting.default else "off"
    return f"`{setting.default!r}`" if isinstance(setting.default, str) else \
        f"`{setting.default}`"


def _flags(setting: Setting, metavar: bool = True) -> str:
    """`-w`, `--workers INT|auto`: the argument shown once, after the last flag."""
    if not setting.flags:
        return "config file only"
    arg = ""
    if metavar and setting.metavar and setting.action not in ("store_true", "store_false"):
        arg = f" [{setting.metavar}]" if setting.action == "optional" else f" {setting.metavar}"
    *first, last = setting.flags
    return ", ".join([*(f"`{f}`" for f in first), f"`{last}{arg}`"])


def _sections(settings: list[Setting]) -> dict[str, list[Setting]]:
    out: dict[str, list[Setting]] = {}
    for s in settings:
        out.setdefault(s.section, []).append(s)
    return out


def render() -> str:
    parts = [INTRO]
    parts.append("## berth's settings\n")
    parts.append("The settings berth implements (and its own, marked *berth only*). "
                 "Environment variable: `BERTH_<NAME>`.\n")
    usable = [s for s in SETTINGS if s.status in (IMPLEMENTED, BERTH_ONLY) and not s.is_hook]
    for section, items in _sections(usable).items():
        parts.append(f"### {section}\n")
        parts.append("| setting | flags | default | meaning |")
        parts.append("|---|---|---|---|")
        for s in items:
            meaning = s.help
            if s.status == BERTH_ONLY:
                meaning = f"*berth only.* {meaning}"
            elif s.note:
                meaning = f"{meaning} {s.note}"
            parts.append(f"| `{s.name}` | {_cell(_flags(s))} | {_cell(_default(s))} | "
                         f"{_cell(meaning)} |")
        parts.append("")

    parts.append("## Server hooks\n")
    parts.append(
        "Functions in a config file, called as Gunicorn calls them, with objects carrying the "
        "attributes Gunicorn's examples use: `server.log`, `server.cfg`, `server.pid`, "
        "`worker.pid`, `worker.log`, `worker.age`, `worker.cfg`, `req.method`, `req.path`, "
        "`req.query`, `req.uri`, `req.version`, `req.headers` (a list of (NAME, value) "
        "tuples with upper-case names), `resp.status`, `resp.status_code`, `resp.headers`. "
        "A hook may also be given as a `module.function` string. A hook with the wrong "
        "number of arguments stops berth at start (exit 2); an exception raised by a hook "
        "is logged with its traceback and berth carries on, except in three, which fail "
        "what they guard, as in Gunicorn: `pre_request` its request (500, the app not "
        "called), `post_fork` and `post_worker_init` their worker (it exits before serving; "
        "5 such deaths in a row stop berth, where Gunicorn stops at the first). Gunicorn "
        "also stops when `on_starting`, `when_ready`, `pre_fork`, `child_exit`, `on_reload` "
        "or `nworkers_changed` raises; berth serves on.\n")
    parts.append("| hook | arguments | when |")
    parts.append("|---|---|---|")
    for s in SETTINGS:
        if s.is_hook and s.status == IMPLEMENTED:
            parts.append(f"| `{s.name}` | {len(HOOK_ARGS[s.name])} | {_cell(s.help)} |")
    parts.append("")

    parts.append(STRICTER)
    parts.append("## Every Gunicorn setting in berth\n")
    parts.append(
        "Every setting of Gunicorn (its settings list as of Gunicorn 23, plus those added up "
        "to 27) and what berth does with it: *implemented* (it does what it does in "
        "Gunicorn); *accepted, not needed* (berth gives the same result without it: an info "
        "line when it is set); *refused* (ignoring it "
        "would change security or meaning: berth accepts only a value that changes nothing, "
        "otherwise it prints one line and exits 2).\n")
    counts = {st: sum(1 for s in SETTINGS if s.status == st)
              for st in (IMPLEMENTED, NOT_NEEDED, REFUSED)}
    parts.append(", ".join(f"{STATUS_TEXT[st]}: {n}" for st, n in counts.items()) + ".\n")
    gunicorn = [s for s in SETTINGS if s.gunicorn]
    for section, items in _sections(gunicorn).items():
        parts.append(f"### {section}\n")
        parts.append("| Gunicorn setting | flags | in berth | note |")
        parts.append("|---|---|---|---|")
        for s in items:
            parts.append(f"| `{s.name}` | {_cell(_flags(s, False))} | {STATUS_TEXT[s.status]} | "
                         f"{_cell(s.note)} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
