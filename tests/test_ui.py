"""The web UI: how it is served and shipped, and the pages in a real browser.

Browser tests drive Debian's headless Chromium through chromium-driver with
selenium, against dev agents started for this module (one without ACLs, one with
``default_policy = deny``). ``make test`` installs chromium and chromium-driver;
without them the browser tests skip with a loud message. Screenshots of every
page go to ``$PROCONSUL_UI_ARTIFACTS`` (default: a pytest temp dir); the path is
printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import AgentProc, eventually, start_dev_agent

ROOT = Path(__file__).resolve().parent.parent
UI_DIR = ROOT / "api" / "webui"
MGMT = "6a0d1e3b-8f5c-4d2a-9b7e-0c1f2e3d4a5b"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
RED = "rgb(200, 30, 30)"  # --critical in style.css


# ----------------------------------------------------------------- serving and shipping (no browser)


@pytest.mark.anyio
async def test_root_redirects_to_the_ui_and_files_are_served(api):
    r = await api.get("/")
    assert r.status_code == 301 and r.headers["location"] == "/ui/"
    r = await api.get("/ui")
    assert r.status_code == 301 and r.headers["location"] == "/ui/"
    r = await api.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in r.text
    r = await api.get("/ui/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")  # ES modules need it
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert (await api.get("/ui/style.css")).headers["content-type"].startswith("text/css")
    r = await api.get("/ui/nothing-here.js")
    assert r.status_code == 404
    assert (await api.get("/ui/../pyproject.toml")).status_code == 404


@pytest.mark.anyio
async def test_ui_routes_stay_out_of_the_schema_and_the_route_table(api):
    from proconsul.api.app import build_app, route_table

    paths = (await api.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]
    assert not [p for p, _ in route_table(build_app(api.agent)) if p.startswith("/ui") or p == "/"]


class _AgentWithoutUI:
    """The in-process dev agent as an agent started without -ui would be."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent
        self.config = replace(agent.config, ui=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)


@pytest.mark.anyio
async def test_without_the_ui_root_answers_plain_text_and_ui_is_404(api):
    from proconsul.api.app import build_app

    app = build_app(_AgentWithoutUI(api.agent))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        r = await client.get("/")
        assert r.status_code == 200 and "UI disabled" in r.text and "ui_config.enabled" in r.text
        assert (await client.get("/ui/")).status_code == 404
        assert (await client.get("/ui/app.js")).status_code == 404


def test_ui_is_on_in_dev_and_with_the_flag_or_ui_config(tmp_path):
    from proconsul.agent import config
    from proconsul.agent.config import ConfigError

    def ui(flags: dict[str, Any], file: dict[str, Any] | None = None) -> bool:
        files = []
        if file is not None:
            (tmp_path / "ui.json").write_text(json.dumps(file))
            files = [str(tmp_path / "ui.json")]
        return config.build({"data_dir": str(tmp_path), **flags}, files, []).ui

    assert ui({"dev": True}) and not ui({})
    assert ui({"ui": True}) and ui({}, {"ui_config": {"enabled": True}}) and ui({}, {"ui": True})
    assert not ui({"dev": True}, {"ui_config": {"enabled": False}})
    with pytest.raises(ConfigError, match="ui_config.enabled: expected true or false"):
        ui({}, {"ui_config": {"enabled": "maybe"}})


def test_every_ui_file_is_package_data_and_every_import_resolves():
    from proconsul.api.ui import ui_files

    files = ui_files()
    on_disk = {p.name for p in UI_DIR.iterdir() if p.is_file()}
    assert set(files) == on_disk, "a file in api/webui/ has a type the UI does not serve"
    for name, (body, _) in files.items():
        if name.endswith(".js"):
            for line in body.decode().splitlines():
                if line.startswith("import ") and " from " in line:
                    target = line.rsplit(" from ", 1)[1].strip(' ";').removeprefix("./")
                    assert target in files, f"{name} imports {target}, which is not shipped"


def test_a_built_wheel_ships_the_ui(tmp_path):
    """A non-editable install serves the UI too: build a wheel from a copy of the tree and list it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("agent", "api", "dns", "server"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("proconsul-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in UI_DIR.iterdir():
        assert f"proconsul/api/webui/{p.name}" in names, p.name


# ----------------------------------------------------------------- in a browser


def _announce(request: pytest.FixtureRequest, text: str, **markup: bool) -> None:
    """A line on the terminal even while output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + text, **markup)


@pytest.fixture(scope="module")
def chromium(request: pytest.FixtureRequest) -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        msg = ("BROWSER TESTS SKIPPED: Debian's chromium and chromium-driver are not installed "
               "(`make test` installs them: apt-get install chromium chromium-driver)")
        _announce(request, "!" * len(msg) + "\n" + msg + "\n" + "!" * len(msg), red=True, bold=True)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="proconsul-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the background-networking flags Chromium's own connections are refused en masse here.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """The module's browser, its console log drained so a test sees only its own messages; a script
    error during the test (an uncaught exception, a module that fails to load) fails it."""
    chromium.get_log("browser")
    yield chromium
    errors = [e["message"] for e in chromium.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert errors == [], errors


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """save(driver, name): a screenshot in the artifacts dir, named in the order taken."""
    root = Path(os.environ.get("PROCONSUL_UI_ARTIFACTS") or tmp_path_factory.mktemp("ui-screenshots"))
    root.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []

    def save(driver: Any, name: str) -> Path:
        path = root / f"{len(taken) + 1:02d}-{name}.png"
        driver.save_screenshot(str(path))
        taken.append(path)
        return path

    yield save
    if taken:
        _announce(request, f"UI screenshots ({len(taken)}): {root}")


@pytest.fixture(scope="module")
def ui_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    agent = start_dev_agent(tmp_path_factory.mktemp("ui"), "uinode")
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
    agent = start_dev_agent(tmp_path_factory.mktemp("uiacl"), "aclnode", {"acl": acl})
    yield agent
    agent.stop()


def _open(driver: Any, agent: AgentProc, route: str) -> None:
    driver.get(f"{agent.url}/ui/#/{route}")


def _el(driver: Any, css: str, text: str = "", timeout: float = 10.0, then: Any = None) -> Any:
    """The first element matching ``css`` (and containing ``text``) once it is there; with ``then``,
    ``then(element)`` instead, tried again if a live list re-rendered the element meanwhile."""
    from selenium.webdriver.common.by import By

    def find() -> Any:
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            if text in el.text:
                return (then(el),) if then else el
        return None

    found = eventually(find, timeout, what=f"{css} containing {text!r}")
    return found[0] if then else found


def _text(driver: Any, css: str, text: str = "") -> str:
    return _el(driver, css, text, then=lambda el: el.text)


def _attr(driver: Any, css: str, name: str, text: str = "") -> str:
    return _el(driver, css, text, then=lambda el: el.get_attribute(name))


def _click(driver: Any, css: str, text: str = "") -> None:
    _el(driver, css, text, then=lambda el: el.click())


def _gone(driver: Any, css: str, timeout: float = 10.0) -> None:
    from selenium.webdriver.common.by import By

    eventually(lambda: not driver.find_elements(By.CSS_SELECTOR, css), timeout, what=f"{css} gone")


def _type(el: Any, text: str) -> None:
    el.clear()
    el.send_keys(text)


def _create_key(driver: Any, key: str, value: str) -> None:
    """Fill the KV folder page's create form and submit it."""
    _type(_el(driver, "#kv-new-key"), key)
    _type(_el(driver, "#kv-new-value"), value)
    _el(driver, '#kv-create button[type="submit"]').click()


def _login(driver: Any, secret: str) -> None:
    _type(_el(driver, "#login-token"), secret)
    _el(driver, '#login-form button[type="submit"]').click()


def _script_errors(driver: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """Console errors other than the failed requests a test expects (the browser logs every non-2xx)."""
    out = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        msg = entry["message"]
        if entry.get("source") == "network" and any(a in msg for a in allowed):
            continue
        out.append(msg)
    return out


def _put(agent: AgentProc, path: str, body: Any = None, token: str = "", **params: Any) -> httpx.Response:
    headers = {"X-Consul-Token": token} if token else {}
    content = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    r = agent.http.put(path, content=content, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r


def _kv(agent: AgentProc, key: str) -> str | None:
    r = agent.http.get(f"/v1/kv/{key}", params={"raw": ""})
    return r.text if r.status_code == 200 else None


def test_every_page_loads_and_shows_the_catalog(browser, ui_agent, shots):
    a = ui_agent
    _put(a, "/v1/agent/service/register", {"Name": "db", "Port": 5432, "Tags": ["primary"], "Check": {"TTL": "300s", "Status": "passing"}})
    _put(a, "/v1/agent/service/register", {
        "Name": "web", "Port": 8080, "Tags": ["v1"], "Check": {"TTL": "300s", "Status": "passing", "Notes": "app heartbeat"},
        "Connect": {"SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}}}})
    _put(a, "/v1/agent/check/warn/service:db", note="replication lag 12s")
    _put(a, "/v1/kv/app/config", {"port": 8080, "hosts": ["a", "b"], "tls": {"enabled": True}})
    _put(a, "/v1/connect/intentions/exact", {"Action": "allow"}, source="web", destination="db")

    _open(browser, a, "services")
    _el(browser, '#services-table tr[data-service="web"]', "1 instance")
    assert "primary" in _text(browser, '#services-table tr[data-service="db"][data-health="warning"]', "warning")
    assert not browser.find_elements("css selector", 'tr[data-service="web-sidecar-proxy"]'), "sidecars belong to their service"
    assert "in mesh" in _el(browser, 'tr[data-service="web"]').text
    assert not [x for x in browser.find_elements("css selector", ".acl-only") if x.is_displayed()], "ACL pages only with ACLs on"
    shots(browser, "services")
    # Live: a service registered elsewhere shows up without a reload.
    browser.execute_script("window.sameDocument = true")
    _put(a, "/v1/catalog/register", {"Node": "extnode", "Address": "127.0.0.2", "Service": {"Service": "late", "Port": 9000}})
    _el(browser, '#services-table tr[data-service="late"]', "1 instance")
    assert browser.execute_script("return window.sameDocument") is True
    _type(_el(browser, "#service-search"), "prim")  # a tag matches too
    _gone(browser, 'tr[data-service="web"]')
    _el(browser, 'tr[data-service="db"]')
    _el(browser, "#service-search").clear()
    from selenium.webdriver.support.ui import Select

    Select(_el(browser, "#service-health")).select_by_value("warning")
    _gone(browser, 'tr[data-service="web"]')
    _el(browser, 'tr[data-service="db"]')

    _open(browser, a, "services/web")
    instance = _text(browser, '#instances-table tr[data-instance="web"]', "127.0.0.1:8080")
    assert "uinode" in instance and "app heartbeat" in instance and "Agent alive and reachable" in instance
    assert "db on 127.0.0.1:9191" in _text(browser, '#sidecars-table tr[data-proxy="web-sidecar-proxy"]')
    assert "allow" in _text(browser, "#service-intentions", "db")
    shots(browser, "service-web")

    _open(browser, a, "services/db")
    _el(browser, '#instances-table li.check[data-status="warning"]', "replication lag 12s")
    _el(browser, "#sidecars", "not in the mesh")

    _open(browser, a, "nodes")
    _el(browser, '#nodes-table tr[data-node="uinode"]', "alive")
    node = _text(browser, '#nodes-table tr[data-node="uinode"]', "web-sidecar-proxy")  # its services arrive after its row
    assert "web-sidecar-proxy" in node and "127.0.0.1" in node
    assert "late" in _text(browser, '#nodes-table tr[data-node="extnode"]', "127.0.0.2")  # no agent: liveness unknown
    browser.execute_script("window.sameDocument = true")
    _put(a, "/v1/catalog/register", {"Node": "extnode", "Address": "127.0.0.2", "Service": {"Service": "later", "Port": 9001}})
    _el(browser, '#nodes-table tr[data-node="extnode"]', "later")
    assert browser.execute_script("return window.sameDocument") is True
    shots(browser, "nodes")
    _click(browser, '#nodes-table tr[data-node="uinode"] a')
    _el(browser, "#node-services", "web")
    _el(browser, "#node-checks", "Serf Health Status")
    _el(browser, "h1", "alive")
    shots(browser, "node")

    _open(browser, a, "kv/")
    _click(browser, '#kv-table tr[data-key="app/"] a')
    _click(browser, '#kv-table tr[data-key="app/config"] a')
    # The key's value loads after the page: wait for its JSON view before asking which view is chosen.
    assert '"hosts": [' in _el(browser, "#kv-preview", '"port": 8080').text
    assert _el(browser, 'input[name="kv-format"][value="json"]').is_selected(), "a JSON value opens in the JSON view"
    _el(browser, 'input[name="kv-format"][value="yaml"]').click()
    assert "hosts:\n  - a\n  - b" in _el(browser, "#kv-preview", "port: 8080").text
    assert "tls:\n  enabled: true" in _el(browser, "#kv-preview").text
    shots(browser, "kv-key-yaml")

    _open(browser, a, "intentions")
    assert "allow" in _text(browser, '#intentions-table tr[data-intention="web->db"]', "9")
    shots(browser, "intentions")
    assert _script_errors(browser, ("/v1/acl/token/self",)) == []


def test_kv_create_edit_with_cas_and_delete(browser, ui_agent, shots):
    a = ui_agent
    _open(browser, a, "kv/")
    _create_key(browser, "ui/created", "first")
    _el(browser, "#kv-create-result", "Created ui/created")
    assert _kv(a, "ui/created") == "first"
    _el(browser, '#kv-table tr[data-key="ui/"]')  # the list followed the write

    # Creating it again is refused (cas=0), and the typed text stays.
    _create_key(browser, "ui/created", "second")
    _el(browser, "#kv-create-result .error", "already exists")
    assert _el(browser, "#kv-new-value").get_attribute("value") == "second"
    assert _kv(a, "ui/created") == "first"

    _open(browser, a, "kv/ui/created")
    area = _el(browser, "#kv-value")
    eventually(lambda: area.get_attribute("value") == "first")
    area.send_keys(" edited by me")
    _put(a, "/v1/kv/ui/created", "changed elsewhere")  # someone else writes meanwhile
    _el(browser, "#kv-status", "Changed elsewhere")
    _el(browser, "#kv-save").click()
    conflict = _el(browser, "#kv-conflict", "Not saved")
    assert "changed elsewhere" in conflict.text
    assert area.get_attribute("value") == "first edited by me", "a failed save keeps what was typed"
    assert _kv(a, "ui/created") == "changed elsewhere"
    shots(browser, "kv-cas-conflict")
    _el(browser, "#kv-overwrite").click()
    _el(browser, "#kv-save-result", "Saved.")
    assert _kv(a, "ui/created") == "first edited by me"

    # In the JSON view an invalid value is not saved, and says why.
    _el(browser, 'input[name="kv-format"][value="json"]').click()
    _el(browser, "#kv-format-error", "Not valid JSON")
    _el(browser, "#kv-save").click()
    _el(browser, "#kv-save-result .error", "not valid JSON")
    assert _kv(a, "ui/created") == "first edited by me"

    _el(browser, "#kv-delete").click()
    _el(browser, "#kv-delete-confirm").click()
    eventually(lambda: browser.current_url.endswith("#/kv/ui/"))
    assert _kv(a, "ui/created") is None

    _put(a, "/v1/kv/ui/blob", b"\x89PNG\r\n\x1a\n\xff\xfe")
    _open(browser, a, "kv/ui/blob")
    _el(browser, "#kv-binary", "binary, not UTF-8 text")


def test_deny_intention_flips_the_check_and_errors_show_by_the_form(browser, ui_agent, shots):
    a = ui_agent
    _open(browser, a, "intentions")
    _type(_el(browser, "#check-source"), "front")
    _type(_el(browser, "#check-destination"), "back")
    _el(browser, '#check-form button[type="submit"]').click()
    assert _attr(browser, "#check-result [data-allowed]", "data-allowed", "Allowed") == "true"  # dev: default allow

    _type(_el(browser, "#ixn-source"), "front")
    _type(_el(browser, "#ixn-destination"), "back")
    _el(browser, 'input[name="ixn-kind"][value="deny"]').click()
    _type(_el(browser, "#ixn-description"), "no direct calls")
    _el(browser, "#ixn-save").click()
    row = _text(browser, '#intentions-table tr[data-intention="front->back"]', "deny")
    assert "no direct calls" in row and "9" in row
    # The check box asks again when the list changes: no click needed.
    assert _attr(browser, "#check-result [data-allowed]", "data-allowed", "Denied") == "false"
    assert a.http.get("/v1/connect/intentions/check", params={"source": "front", "destination": "back"}).json() == {"Allowed": False}
    shots(browser, "intention-denied")

    # A second one for the same pair is refused in the form.
    _type(_el(browser, "#ixn-source"), "front")
    _type(_el(browser, "#ixn-destination"), "back")
    _el(browser, "#ixn-save").click()
    _el(browser, "#intention-error .error", "already exists")

    # L7 permissions on a destination whose protocol is tcp: the server refuses, the form keeps everything.
    _type(_el(browser, "#ixn-source"), "front")
    _type(_el(browser, "#ixn-destination"), "tcpsvc")
    _el(browser, 'input[name="ixn-kind"][value="l7"]').click()
    from selenium.webdriver.support.ui import Select

    perm = _el(browser, "#ixn-permissions .perm")
    Select(perm.find_element("css selector", ".perm-path-kind")).select_by_value("PathPrefix")
    _type(perm.find_element("css selector", ".perm-path"), "/api/")
    _type(perm.find_element("css selector", ".perm-methods"), "get, post")
    _el(browser, "#ixn-save").click()
    err = _el(browser, "#intention-error .error", "Not saved")
    assert "incompatible with L7 intentions" in err.text, err.text
    assert _el(browser, "#ixn-destination").get_attribute("value") == "tcpsvc"
    assert perm.find_element("css selector", ".perm-path").get_attribute("value") == "/api/"
    shots(browser, "intention-invalid")

    # Once the destination speaks http, the same form saves.
    _put(a, "/v1/config", {"Kind": "service-defaults", "Name": "tcpsvc", "Protocol": "http"})
    _el(browser, "#ixn-save").click()
    assert "allow GET,POST /api/*" in _text(browser, '#intentions-table tr[data-intention="front->tcpsvc"]', "L7: 1 permission")
    perms = a.http.get("/v1/connect/intentions/exact", params={"source": "front", "destination": "tcpsvc"}).json()["Permissions"]
    assert perms == [{"Action": "allow", "HTTP": {"PathPrefix": "/api/", "Methods": ["GET", "POST"]}}]

    def delete(row: Any) -> None:
        row.find_element("css selector", "button.danger-outline").click()
        row.find_element("css selector", "button.danger").click()

    _el(browser, '#intentions-table tr[data-intention="front->back"]', then=delete)
    _gone(browser, '#intentions-table tr[data-intention="front->back"]')
    _el(browser, "#check-result [data-allowed]", "Allowed")


def test_a_failing_ttl_check_turns_red_within_2s(browser, ui_agent, shots):
    a = ui_agent
    _put(a, "/v1/agent/service/register", {"Name": "ttlsvc", "Port": 7000, "Check": {"CheckID": "ttlsvc-ttl", "TTL": "3s", "Status": "passing"}})
    _open(browser, a, "services")
    row_css = '#services-table tr[data-service="ttlsvc"]'
    _el(browser, row_css, "passing")

    def api_critical() -> bool:
        return any(c["Status"] == "critical" for c in a.http.get("/v1/health/checks/ttlsvc").json())

    def ui_red() -> bool:
        return bool(browser.execute_script(
            "const r = document.querySelector(arguments[0]);"
            "const b = r && r.querySelector('.badge.status-critical');"
            "return !!r && r.dataset.health === 'critical' && !!b && getComputedStyle(b).color === arguments[1];",
            row_css, RED))

    changed = shown = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and shown is None:
        now = time.monotonic()
        if changed is None and api_critical():
            changed = now
        if ui_red():
            shown = time.monotonic()
        time.sleep(0.02)
    assert changed is not None, "the TTL check never went critical"
    assert shown is not None, "the service never turned red"
    print(f"check critical in the API -> red in the UI: {shown - changed:.3f} s")
    assert shown - changed < 2.0
    shots(browser, "ttl-critical")

    _open(browser, a, "services/ttlsvc")
    color = _el(browser, '#instances-table li.check[data-check="ttlsvc-ttl"][data-status="critical"] .badge',
                then=lambda badge: browser.execute_script("return getComputedStyle(arguments[0]).color", badge))
    assert color == RED


def test_acl_login_permission_denied_and_pages_after_login(browser, acl_agent, shots):
    a = acl_agent
    expected = ("/v1/acl/", "/v1/kv/")  # 403s the test provokes on purpose
    _open(browser, a, "services")
    _el(browser, "#banner", "not logged in")
    _el(browser, "#login-form")
    _open(browser, a, "acl/tokens")
    _el(browser, ".error", "Permission denied")
    assert "Log in" in _el(browser, ".error").text
    shots(browser, "acl-denied")

    _open(browser, a, "kv/")
    _create_key(browser, "team/settings", "typed before login")
    _el(browser, "#kv-create-result .error", "Permission denied")
    assert _el(browser, "#kv-new-value").get_attribute("value") == "typed before login"

    _login(browser, "not-a-real-token")
    _el(browser, "#login-error", "Token refused: Supplied token does not exist")
    assert browser.execute_script("return localStorage.getItem('proconsul.token')") is None

    _login(browser, MGMT)
    _el(browser, "#logged-in", "Initial Management Token")
    assert browser.execute_script("return localStorage.getItem('proconsul.token')") == MGMT
    _gone(browser, "#banner .notice")

    _open(browser, a, "acl/tokens")
    _el(browser, '#tokens-table tr[data-token="00000000-0000-0000-0000-000000000002"]', "Anonymous Token")
    shots(browser, "acl-tokens")
    _open(browser, a, "acl/policies")
    _el(browser, '#policies-table tr[data-policy="global-management"]')
    _type(_el(browser, "#policy-name"), "team-writer")
    _type(_el(browser, "#policy-rules"), 'key_prefix "x/" { policy = "sideways" }')
    _el(browser, '#policy-form button[type="submit"]').click()
    _el(browser, "#policy-result .error", "Not saved")
    assert "sideways" in _el(browser, "#policy-rules").get_attribute("value")
    _type(_el(browser, "#policy-rules"), 'key_prefix "team/" { policy = "write" }')
    _el(browser, '#policy-form button[type="submit"]').click()
    _el(browser, "#policy-result", "Created team-writer")
    _el(browser, '#policies-table tr[data-policy="team-writer"]')
    shots(browser, "acl-policies")

    _open(browser, a, "services")
    _el(browser, '#services-table tr[data-service="consul"]')
    _open(browser, a, "kv/")
    _create_key(browser, "team/settings", "after login")
    _el(browser, "#kv-create-result", "Created team/settings")
    shots(browser, "acl-kv-after-login")

    _el(browser, "#logout").click()
    _el(browser, "#login-form")
    assert browser.execute_script("return localStorage.getItem('proconsul.token')") is None
    assert _script_errors(browser, expected) == []
